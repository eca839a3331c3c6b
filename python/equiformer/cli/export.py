"""equiformer-export: a checkpoint -> the model file every engine loads (TorchScript .pt, or a
compiled AOTInductor .pt2 package); several checkpoints, or a committee run's folder -> one
committee file (docs/committees.md)."""

import argparse
import os
import sys

from ..device import resolve_device
from ..export.contract import check_writable
from ..export.torchscript import export_model, load_any


def check_outputs(inputs, outputs, overwrite: bool) -> None:
    """Refuse to write over an input, an output twice, or an existing file without ``overwrite``."""
    seen = {}
    real_inputs = {os.path.realpath(p): p for p in inputs if p}
    for flag, path in outputs:
        if not path:
            continue
        real = os.path.realpath(path)
        if real in real_inputs:
            raise ValueError(f"{flag} {path} is the input file {real_inputs[real]}: writing it would destroy the "
                             "input; choose another output path")
        if real in seen:
            raise ValueError(f"{flag} and {seen[real]} name the same file {path}; choose two paths")
        seen[real] = flag
        if os.path.lexists(path) and not overwrite:
            raise ValueError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another path")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="equiformer-export",
        description="Write a checkpoint as an engine model (TorchScript .pt or compiled .pt2, with metadata; "
                    "docs/model-format.md).",
    )
    p.add_argument("checkpoint", nargs="+",
                   help="checkpoint written by equiformer-train (or an official one with --official-recipe); "
                        "several checkpoints, or the folder of a committee run (member-*/best.pt), make a committee "
                        "file (docs/committees.md)")
    p.add_argument("output", help="model file to write: model.pt (TorchScript) or model.pt2 (compiled package)")
    p.add_argument("--format", choices=["torchscript", "aoti"],
                   help="torchscript (a .pt file, runs anywhere with the same torch major version) or aoti (an "
                        "AOTInductor package, compiled for this machine's CPU and torch version); default: from "
                        "the extension (.pt2: aoti)")
    p.add_argument("--dtype", default="float64", help="float32 (fast) or float64 (reference); default float64")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:K or auto: where the export is traced and checked; a .pt file runs on any "
                        "device afterwards, a .pt2 package only on the device kind it was compiled for (docs/gpu.md); "
                        "default cpu")
    p.add_argument("--chunked-above", "--layerwise-above", type=int, metavar="EDGES", dest="chunked_above",
                   help="graphs with more edges are evaluated by chunks of centre atoms, layers recomputed: "
                        "memory that grows with the atoms only, for about one extra forward pass of the attention "
                        "(0: always, -1: never); default: where one pass would keep more than 2 GiB "
                        "(--layerwise-above: its former name). A .pt2 package takes this route through its "
                        "compiled layer entries, which LAMMPS mode layer also uses; -1 leaves them out (a faster "
                        "compile, no mode layer)")
    p.add_argument("--official-recipe", metavar="RECIPE.json",
                   help="the checkpoint is an official Equiformer MD17 {'state_dict'}; the recipe gives model_name, "
                        "irreps_in, radius, num_basis, task_mean, task_std, energy_unit, length_unit")
    p.add_argument("--write-checkpoint", metavar="CKPT.pt",
                   help="with --official-recipe: also write the converted model as this package's checkpoint "
                        "(for fine-tuning with equiformer-train)")
    p.add_argument("--min-distance", type=float, metavar="ANGSTROM",
                   help="engines warn once per run when two atoms come closer than this (the model has no "
                        "repulsion built in); default 0.5")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse)")
    args = p.parse_args(argv)
    if args.write_checkpoint and not args.official_recipe:
        p.error("--write-checkpoint converts official checkpoints: give --official-recipe too")
    if len(args.checkpoint) > 1 or os.path.isdir(args.checkpoint[0]):
        return export_committee_cli(args)
    args.checkpoint = args.checkpoint[0]
    try:
        check_outputs([args.checkpoint, args.official_recipe],
                      [("output", args.output), ("--write-checkpoint", args.write_checkpoint)], args.overwrite)
        check_writable(args.output)  # before the work, not after it
        device = str(resolve_device(args.device, "--device", "--device {}"))
        model = load_any(args.checkpoint, args.official_recipe)
        if args.write_checkpoint:
            from ..train.checkpoint import build_checkpoint, save_checkpoint

            normalization = {"atom_ref": model.atom_ref.tolist(), "scale": float(model.energy_scale),
                             "offset": float(model.energy_offset)}
            save_checkpoint(build_checkpoint(model, model.state_dict(), normalization,
                                             metadata={"source": f"official checkpoint {args.checkpoint}"}),
                            args.write_checkpoint)
        meta = export_model(model, args.output, dtype=args.dtype, device=device,
                            chunked_edges=args.chunked_above, min_distance=args.min_distance, fmt=args.format)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"equiformer-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: species {meta['species_symbols']}, cutoff {meta['cutoff']} {meta['length_unit']}, "
          f"{meta['num_layers']} layers, {meta['dtype']}, energies in {meta['energy_unit']}")
    return 0


def export_committee_cli(args) -> int:
    """Several checkpoints (or a committee run's folder) -> one committee file."""
    from ..committee import export_committee, member_checkpoints

    try:
        if args.write_checkpoint:
            raise ValueError("--write-checkpoint converts one official checkpoint; convert the members one at a "
                             "time, then export the converted checkpoints together")
        if args.output.endswith(".pt2") or args.format == "aoti":
            raise ValueError("a committee as a compiled .pt2 package is not available yet: export a TorchScript .pt")
        if len(args.checkpoint) == 1:
            paths = member_checkpoints(args.checkpoint[0])
        else:
            paths = args.checkpoint
            folders = [path for path in paths if os.path.isdir(path)]
            if folders:
                raise ValueError(f"{folders[0]} is a folder: give either one committee run folder or checkpoint files")
        check_outputs(paths + [args.official_recipe], [("output", args.output)], args.overwrite)
        check_writable(args.output)  # before the work, not after it
        device = str(resolve_device(args.device, "--device", "--device {}"))
        members = []
        for k, path in enumerate(paths):
            try:
                members.append(load_any(path, args.official_recipe))
            except (ValueError, OSError, RuntimeError) as exc:
                raise type(exc)(f"committee member {k} ({path}): {exc}") from None
        meta = export_committee(members, args.output, dtype=args.dtype, device=device,
                                chunked_edges=args.chunked_above, min_distance=args.min_distance, names=paths)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"equiformer-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: committee of {meta['committee_size']} members, species {meta['species_symbols']}, "
          f"cutoff {meta['cutoff']} {meta['length_unit']}, {meta['num_layers']} layers, {meta['dtype']}, "
          f"energies in {meta['energy_unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
