"""``equiformer-eval CKPT DATA``: errors of a trained checkpoint on a data set.

Prints energy (total and per atom), force-component and stress MAE / RMSE as a table;
``--json`` writes them to a file, ``--plots DIR`` writes parity plots (PNG).
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

UNITS = {
    "energy": "{E}",
    "energy_per_atom": "{E}/atom",
    "forces": "{E}/{L}",
    "stress": "{E}/{L}^3",
}


def _targets_available(frames, key: str, per_atom: bool) -> bool:
    from equiformer.data.atoms import _lookup

    return all(_lookup(a, key, per_atom) is not None for a in frames)


def evaluate(ckpt_path: str, data_paths: List[str], energy_key: Optional[str] = None, forces_key: Optional[str] = None,
             stress_key: Optional[str] = None, index: str = ":", fmt: Optional[str] = None, batch_size: int = 8,
             device: str = "cpu", keep_values: bool = False, progress: bool = False):
    """Metrics dict and the Metrics object (with parity values if ``keep_values``)."""
    import torch

    from equiformer.data.dataset import GraphDataset, GraphLoader, read_structures
    from equiformer.device import resolve_device
    from equiformer.train.checkpoint import load_checkpoint, model_from_checkpoint
    from equiformer.train.trainer import evaluate_dataset

    dev = resolve_device(device, "--device", "--device {}")  # before reading anything
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, device=dev)
    dtype = getattr(torch, ckpt.get("dtype", "float64"))
    data_cfg = ((ckpt.get("metadata") or {}).get("config") or {}).get("data") or {}
    frames, sources = [], []
    for path in data_paths:
        fr = read_structures(path, index, fmt)
        frames.extend(fr)
        sources.extend(f"{path}, frame {i}" for i in range(len(fr)))
    # explicit keys are required; default keys (from the training config) are used when present
    chosen = {}
    for kind, explicit, per_atom in (("energy", energy_key, False), ("forces", forces_key, True), ("stress", stress_key, False)):
        if explicit is not None:
            chosen[kind] = explicit
        else:
            default = data_cfg.get(f"{kind}_key", kind)
            chosen[kind] = default if _targets_available(frames, default, per_atom) else None
    if chosen["stress"] is not None and not all(a.pbc.all() for a in frames):
        if stress_key is not None:
            raise ValueError("stress needs fully periodic structures; the data contains non-periodic ones")
        chosen["stress"] = None
    if not any(chosen.values()):
        raise ValueError(f"no reference energies, forces or stress found in {', '.join(data_paths)}; "
                         "name them with --energy-key / --forces-key / --stress-key")
    dataset = GraphDataset.from_atoms(frames, model.species_symbols, model.cutoff, dtype,
                                      energy_key=chosen["energy"], forces_key=chosen["forces"],
                                      stress_key=chosen["stress"], sources=sources)
    loader = GraphLoader(dataset, batch_size)
    metrics = evaluate_dataset(model, loader, None, dev, dtype, compute_forces=True,
                               compute_stress=chosen["stress"] is not None, keep_values=keep_values,
                               progress=progress, desc="evaluate")
    summary = metrics.summary()
    summary["num_structures"] = len(dataset)
    summary["num_atoms"] = int(dataset.num_atoms().sum())
    summary["energy_unit"] = ckpt.get("energy_unit", "eV")
    summary["length_unit"] = ckpt.get("length_unit", "Angstrom")
    summary["keys"] = {k: v for k, v in chosen.items()}
    return summary, metrics


def format_table(summary: Dict[str, object]) -> str:
    e, l = summary["energy_unit"], summary["length_unit"]
    rows = [("quantity", "unit", "MAE", "RMSE")]
    for field in ("energy", "energy_per_atom", "forces", "stress"):
        if f"{field}_mae" in summary:
            unit = UNITS[field].format(E=e, L=l)
            rows.append((field, unit, f"{summary[f'{field}_mae']:.6g}", f"{summary[f'{field}_rmse']:.6g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"{summary['num_structures']} structures, {summary['num_atoms']} atoms"
    return head + "\n" + "\n".join(lines)


def write_plots(metrics, summary, directory: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(directory, exist_ok=True)
    written = []
    e, l = summary["energy_unit"], summary["length_unit"]
    for field, (ref, pred) in metrics.values.items():
        ref, pred = np.asarray(ref), np.asarray(pred)
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
        ax.scatter(ref, pred, s=6, alpha=0.6)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        unit = UNITS[field].format(E=e, L=l)
        ax.set_xlabel(f"reference {field} ({unit})")
        ax.set_ylabel(f"predicted {field} ({unit})")
        ax.set_title(f"MAE {summary[f'{field}_mae']:.3g}, RMSE {summary[f'{field}_rmse']:.3g} {unit}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(directory, f"parity_{field}.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="equiformer-eval",
                                     description="Energy, force and stress errors of a checkpoint on ASE-readable data.")
    parser.add_argument("checkpoint", help="checkpoint written by equiformer-train (best.pt / last.pt)")
    parser.add_argument("data", nargs="+", help="data file(s), e.g. extxyz")
    parser.add_argument("--energy-key", help="energy name (default: the training config's, if present in the data)")
    parser.add_argument("--forces-key", help="forces name (default: the training config's, if present)")
    parser.add_argument("--stress-key", help="stress name (default: the training config's, if present)")
    parser.add_argument("--index", default=":", help="ASE frame selection (default ':')")
    parser.add_argument("--format", default=None, help="ASE file format (default: from the file name)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--json", metavar="OUT.json", help="write the metrics as JSON")
    parser.add_argument("--plots", metavar="DIR", help="write parity plots (PNG) into DIR")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from equiformer.train.checkpoint import CheckpointError

    try:
        summary, metrics = evaluate(args.checkpoint, args.data, args.energy_key, args.forces_key, args.stress_key,
                                    args.index, args.format, args.batch_size, args.device,
                                    keep_values=bool(args.plots), progress=not args.no_progress)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"equiformer-eval: {exc}", file=sys.stderr)
        return 1
    print(format_table(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
        print(f"metrics written to {args.json}")
    if args.plots:
        for path in write_plots(metrics, summary, args.plots):
            print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
