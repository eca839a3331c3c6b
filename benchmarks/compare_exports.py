"""Two exported models on the same structure, called alternately in one process: a speed
ratio that machine drift (other jobs, clock changes) affects equally on both sides.

    .venv/bin/python benchmarks/compare_exports.py BEFORE.pt AFTER.pt [--system cluster|bulk]
        [--atoms 500] [--rounds 10] [--threads 2] [--route default|one-pass|chunked]

Typical uses: the same model exported by two versions of the package (check out the older one
elsewhere and export with `PYTHONPATH=/that/checkout/python`), to show that a change keeps the
speed; the TorchScript file against the compiled .pt2 package of the same model (either
format works for either argument). Prints each round, then the median wall and CPU time per call of each file and their
ratio, and the largest force difference between the two (the same weights give the same
forces to rounding). With --route both files take the same route whatever their thresholds (one pass
over the graph, or the chunked memory schedule). Structures as in model_eval.py: a rattled fcc copper cluster (open) or
periodic crystal with about --atoms atoms, cutoff from the first model's metadata.
"""

import argparse
import statistics
import time

import ase.build
import torch

from equiformer.data.neighbors import neighbor_list
from equiformer.export.contract import load_engine_model
from equiformer.model_info import ModelInfo


def structure(system: str, atoms: int):
    cells = int(round((atoms / 4) ** (1 / 3)))
    crystal = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (cells, cells, cells)
    crystal.rattle(0.05, seed=0)
    crystal.pbc = system == "bulk"
    return crystal


def force_route(model, route: str) -> None:
    """Send every graph through one pass or the chunked schedule (`chunked_edges`: the
    TorchScript file chunks graphs above it unless it is -1; a package, when it has layer
    entries, chunks graphs above it, -1 included)."""
    if route == "chunked":
        model.chunked_edges = 0
    elif route == "one-pass":
        model.chunked_edges = -1 if isinstance(model, torch.jit.ScriptModule) else 2 ** 62


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--system", default="cluster", choices=["cluster", "bulk"])
    p.add_argument("--atoms", type=int, default=500)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--route", default="default", choices=["default", "one-pass", "chunked"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    info = ModelInfo.read(args.before)
    if "Cu" not in info.species_symbols:
        raise SystemExit(f"{args.before}: this benchmark uses copper; the model knows {info.species_symbols}")
    atoms = structure(args.system, args.atoms)
    pos = atoms.get_positions()
    cell, pbc = (atoms.cell.array, atoms.pbc) if args.system == "bulk" else (None, None)
    edge_index, shifts, _ = neighbor_list(pos, info.cutoff, cell, pbc)
    vectors = torch.tensor(pos[edge_index[0]] - pos[edge_index[1]] + shifts, dtype=info.torch_dtype)
    index = torch.from_numpy(edge_index)
    n = len(atoms)
    species = torch.full((n,), info.species_symbols.index("Cu"), dtype=torch.long)
    models = {"before": load_engine_model(args.before), "after": load_engine_model(args.after)}
    for model in models.values():
        force_route(model, args.route)

    forces = {}
    for name, model in models.items():
        for _ in range(2):  # TorchScript optimises on the first calls
            forces[name] = model(species, index, vectors, n)["forces"]
    print(f"{args.system}, {n} atoms, {index.shape[1]} edges, {args.threads} threads; "
          f"max |F_after - F_before| = {float((forces['after'] - forces['before']).abs().max()):.3g}")
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            t, c = time.perf_counter(), time.process_time()
            models[name](species, index, vectors, n)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        print(f"round {r}: before {wall['before'][-1] * 1e3:.0f} ms, after {wall['after'][-1] * 1e3:.0f} ms")
    for label, times in (("wall", wall), ("cpu", cpu)):
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        print(f"median {label} time per call: before {b * 1e3:.0f} ms, after {a * 1e3:.0f} ms, after/before {a / b:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
