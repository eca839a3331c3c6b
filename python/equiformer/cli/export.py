"""equiformer-export: a checkpoint -> the TorchScript model file every engine loads."""

import argparse
import sys

from ..export.torchscript import export_model, load_any


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="equiformer-export",
        description="Write a checkpoint as an engine model (TorchScript + metadata, docs/model-format.md).",
    )
    p.add_argument("checkpoint", help="checkpoint written by equiformer-train (or an official one with --official-recipe)")
    p.add_argument("output", help="model file to write, e.g. model.pt")
    p.add_argument("--dtype", default="float64", help="float32 (fast) or float64 (reference); default float64")
    p.add_argument("--device", default="cpu", help="cpu or cuda (engines may move the model); default cpu")
    p.add_argument("--layerwise-above", type=int, metavar="EDGES",
                   help="graphs with more edges are evaluated by chunks of centre atoms, layers recomputed: "
                        "memory that grows with the atoms only, for about one extra forward pass of the attention "
                        "(0: always, -1: never); default: where one pass would keep more than 2 GiB")
    p.add_argument("--official-recipe", metavar="RECIPE.json",
                   help="the checkpoint is an official Equiformer MD17 {'state_dict'}; the recipe gives model_name, "
                        "irreps_in, radius, num_basis, task_mean, task_std, energy_unit, length_unit")
    p.add_argument("--write-checkpoint", metavar="CKPT.pt",
                   help="with --official-recipe: also write the converted model as this package's checkpoint "
                        "(for fine-tuning with equiformer-train)")
    args = p.parse_args(argv)
    if args.write_checkpoint and not args.official_recipe:
        p.error("--write-checkpoint converts official checkpoints: give --official-recipe too")
    try:
        model = load_any(args.checkpoint, args.official_recipe)
        if args.write_checkpoint:
            from ..train.checkpoint import build_checkpoint, save_checkpoint

            normalization = {"atom_ref": model.atom_ref.tolist(), "scale": float(model.energy_scale),
                             "offset": float(model.energy_offset)}
            save_checkpoint(build_checkpoint(model, model.state_dict(), normalization,
                                             metadata={"source": f"official checkpoint {args.checkpoint}"}),
                            args.write_checkpoint)
        meta = export_model(model, args.output, dtype=args.dtype, device=args.device,
                            layerwise_edges=args.layerwise_above)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"equiformer-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: species {meta['species_symbols']}, cutoff {meta['cutoff']} {meta['length_unit']}, "
          f"{meta['num_layers']} layers, {meta['dtype']}, energies in {meta['energy_unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
