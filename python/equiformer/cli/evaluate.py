"""``equiformer-eval CKPT DATA``: errors of a trained checkpoint on a data set.

Prints energy (total and per atom), force-component and stress MAE / RMSE as a table;
``--json`` writes them to a file, ``--plots DIR`` writes parity plots (PNG).

An exported file instead of a checkpoint is evaluated through the ASE calculator (the
reference engine). A committee file reports the committee mean as above, each member's
errors, and the calibration of the force deviation: for every atom sigma_F against the
actual error |F_mean - F_ref|, their Pearson and Spearman correlation, and a log-log
scatter plot with ``--plots``.
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


def _read_frames(data_paths: List[str], index: str, fmt: Optional[str]):
    """The structures of every data file, and where each came from."""
    from equiformer.data.dataset import read_structures

    frames, sources = [], []
    for path in data_paths:
        fr = read_structures(path, index, fmt)
        frames.extend(fr)
        sources.extend(f"{path}, frame {i}" for i in range(len(fr)))
    return frames, sources


def _choose_keys(frames, data_paths: List[str], explicit: Dict[str, Optional[str]],
                 defaults: Dict[str, str]) -> Dict[str, Optional[str]]:
    """The reference key of energy, forces and stress: an explicit key is required; a default
    one is used when every frame has it. Stress only for fully periodic data."""
    chosen = {}
    for kind, per_atom in (("energy", False), ("forces", True), ("stress", False)):
        if explicit[kind] is not None:
            chosen[kind] = explicit[kind]
        else:
            chosen[kind] = defaults[kind] if _targets_available(frames, defaults[kind], per_atom) else None
    if chosen["stress"] is not None and not all(a.pbc.all() for a in frames):
        if explicit["stress"] is not None:
            raise ValueError("stress needs fully periodic structures; the data contains non-periodic ones")
        chosen["stress"] = None
    if not any(chosen.values()):
        raise ValueError(f"no reference energies, forces or stress found in {', '.join(data_paths)}; "
                         "name them with --energy-key / --forces-key / --stress-key")
    return chosen


def evaluate(ckpt_path: str, data_paths: List[str], energy_key: Optional[str] = None, forces_key: Optional[str] = None,
             stress_key: Optional[str] = None, index: str = ":", fmt: Optional[str] = None, batch_size: int = 8,
             device: str = "cpu", keep_values: bool = False, progress: bool = False):
    """Metrics dict and the Metrics object (with parity values if ``keep_values``)."""
    import torch

    from equiformer.data.dataset import GraphDataset, GraphLoader
    from equiformer.device import resolve_device
    from equiformer.train.checkpoint import load_checkpoint, model_from_checkpoint
    from equiformer.train.trainer import evaluate_dataset

    dev = resolve_device(device, "--device", "--device {}")  # before reading anything
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, device=dev)
    dtype = getattr(torch, ckpt.get("dtype", "float64"))
    data_cfg = ((ckpt.get("metadata") or {}).get("config") or {}).get("data") or {}
    frames, sources = _read_frames(data_paths, index, fmt)
    chosen = _choose_keys(frames, data_paths, {"energy": energy_key, "forces": forces_key, "stress": stress_key},
                          {kind: data_cfg.get(f"{kind}_key", kind) for kind in ("energy", "forces", "stress")})
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


def is_exported_model(path: str) -> bool:
    """An exported model file (TorchScript with our metadata, or a .pt2 package), not a checkpoint."""
    import zipfile

    from equiformer.export.contract import is_compiled_package

    if not zipfile.is_zipfile(path):
        return False
    if is_compiled_package(path):
        return True
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/extra/format") for name in zf.namelist())


def evaluate_exported(model_path: str, data_paths: List[str], energy_key: Optional[str] = None,
                      forces_key: Optional[str] = None, stress_key: Optional[str] = None, index: str = ":",
                      fmt: Optional[str] = None, device: str = "cpu", keep_values: bool = False,
                      progress: bool = False):
    """As `evaluate` for an exported file, in the model's units (those of its training data).
    A committee adds ``members`` (each member's metrics) and ``calibration`` to the summary;
    its parity data gets ``calibration``: (sigma_F, |F_mean - F_ref|) per atom."""
    import numpy as np
    import torch

    from equiformer.calculator import EquiformerCalculator
    from equiformer.data import keys
    from equiformer.data.atoms import read_targets
    from equiformer.train.loss import Metrics

    calc = EquiformerCalculator(model=model_path, device=device)
    info = calc.info
    frames, sources = _read_frames(data_paths, index, fmt)
    chosen = _choose_keys(frames, data_paths, {"energy": energy_key, "forces": forces_key, "stress": stress_key},
                          {kind: kind for kind in ("energy", "forces", "stress")})
    # the calculator speaks eV and Angstrom; the reference data are in the model's units
    e_unit = 1.0 / calc.to_ev
    f_unit = e_unit / calc.to_model_length
    s_unit = e_unit / calc.to_model_length ** 3
    committee = info.committee_size > 1
    mean = Metrics()
    members = [Metrics() for _ in range(info.committee_size if committee else 0)]
    sigma, error = [], []
    it = zip(frames, sources)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(frames), desc="evaluate", leave=False, dynamic_ncols=True)
    for atoms, where in it:
        ref = read_targets(atoms, chosen["energy"], chosen["forces"], chosen["stress"], where)
        ref[keys.NUM_ATOMS] = torch.tensor([len(atoms)])
        calc.calculate(atoms, ["energy", "forces"] + (["stress"] if chosen["stress"] else []))
        r = calc.results

        def pred(energy, forces, stress):  # eV, eV/Angstrom, eV/Angstrom^3 [3, 3] or None
            out = {keys.ENERGY: torch.tensor([energy * e_unit]), keys.FORCES: torch.from_numpy(forces * f_unit)}
            if stress is not None:
                out[keys.STRESS] = torch.from_numpy(stress * s_unit).unsqueeze(0)
            return out

        stressed = chosen["stress"] is not None
        mean.update(pred(r["energy"], r["forces"], _voigt_to_3x3(r["stress"]) if stressed else None), ref,
                    keep_values=keep_values)
        for k, metrics in enumerate(members):
            stress = -r["member_virials"][k] / atoms.get_volume() if stressed else None
            metrics.update(pred(r["member_energies"][k], r["member_forces"][k], stress), ref)
        if committee and keys.FORCES in ref:
            sigma.append(r["forces_std"] * f_unit)
            error.append(np.linalg.norm(r["forces"] * f_unit - ref[keys.FORCES].numpy(), axis=1))
    summary = mean.summary()
    summary["num_structures"] = len(frames)
    summary["num_atoms"] = int(sum(len(a) for a in frames))
    summary["energy_unit"], summary["length_unit"] = info.energy_unit, info.length_unit
    summary["keys"] = dict(chosen)
    summary["committee_size"] = info.committee_size
    if committee:
        summary["members"] = [m.summary() for m in members]
        if sigma:
            sigma_all, error_all = np.concatenate(sigma), np.concatenate(error)
            summary["calibration"] = calibration(sigma_all, error_all)
            mean.values["calibration"] = [sigma_all.tolist(), error_all.tolist()]
    return summary, mean


def _voigt_to_3x3(v):
    import numpy as np

    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def calibration(sigma, error) -> Dict[str, float]:
    """How well the force deviation sigma_F predicts the actual force error, over atoms:
    Pearson and Spearman (rank) correlation, and both means."""
    import numpy as np

    def ranks(x):  # average ranks of ties, as Spearman's definition needs
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(inverse, weights=r) / counts)[inverse]

    def pearson(a, b):
        if len(a) < 2 or a.std() == 0.0 or b.std() == 0.0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    return {"pearson": pearson(sigma, error), "spearman": pearson(ranks(sigma), ranks(error)),
            "num_atoms": int(len(sigma)), "mean_sigma_f": float(sigma.mean()),
            "mean_force_error": float(error.mean())}


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
    if "members" in summary:
        head += f", committee of {summary['committee_size']} (the mean)"
        lines += ["", "each member:"] + _member_table(summary)
    if "calibration" in summary:
        c = summary["calibration"]
        lines += ["", f"calibration over {c['num_atoms']} atoms: force deviation sigma_F "
                      f"(mean {c['mean_sigma_f']:.4g}) vs actual error |F_mean - F_ref| "
                      f"(mean {c['mean_force_error']:.4g}) {e}/{l}: "
                      f"Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f}"]
    return head + "\n" + "\n".join(lines)


def _member_table(summary: Dict[str, object]) -> List[str]:
    """One row per member: the MAE of each quantity."""
    e, l = summary["energy_unit"], summary["length_unit"]
    fields = [f for f in ("energy", "energy_per_atom", "forces", "stress") if f"{f}_mae" in summary["members"][0]]
    rows = [["member"] + [f"{f} MAE ({UNITS[f].format(E=e, L=l)})" for f in fields]]
    rows += [[str(k)] + [f"{m[f'{f}_mae']:.6g}" for f in fields] for k, m in enumerate(summary["members"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]


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
        if field == "calibration":
            written.append(_calibration_plot(plt, ref, pred, summary, directory))
            continue
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


def _calibration_plot(plt, sigma, error, summary, directory: str) -> str:
    """Force deviation vs actual force error per atom, log-log."""
    import numpy as np

    unit = UNITS["forces"].format(E=summary["energy_unit"], L=summary["length_unit"])
    keep = (sigma > 0) & (error > 0)  # a log axis has no zero
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(sigma[keep], error[keep], s=6, alpha=0.6)
    if keep.any():
        lo = float(min(sigma[keep].min(), error[keep].min()))
        hi = float(max(sigma[keep].max(), error[keep].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"force deviation sigma_F ({unit})")
    ax.set_ylabel(f"force error |F_mean - F_ref| ({unit})")
    c = summary["calibration"]
    ax.set_title(f"committee of {summary['committee_size']}: Pearson {c['pearson']:.2f}, "
                 f"Spearman {c['spearman']:.2f}", fontsize=9)
    fig.tight_layout()
    path = os.path.join(directory, "calibration_forces.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="equiformer-eval",
                                     description="Energy, force and stress errors of a checkpoint on ASE-readable data.")
    parser.add_argument("checkpoint", help="checkpoint written by equiformer-train (best.pt / last.pt), or an "
                                           "exported model file (a committee file adds member errors and "
                                           "calibration)")
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
        if os.path.isfile(args.checkpoint) and is_exported_model(args.checkpoint):
            summary, metrics = evaluate_exported(args.checkpoint, args.data, args.energy_key, args.forces_key,
                                                 args.stress_key, args.index, args.format, args.device,
                                                 keep_values=bool(args.plots), progress=not args.no_progress)
        else:
            summary, metrics = evaluate(args.checkpoint, args.data, args.energy_key, args.forces_key,
                                        args.stress_key, args.index, args.format, args.batch_size, args.device,
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
