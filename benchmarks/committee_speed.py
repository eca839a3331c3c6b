"""A committee file against its members, in one process: time per call (energy + forces) of
one member's file, of the committee file, and of the K member files called one after another.

    .venv/bin/python benchmarks/committee_speed.py [--presets tiny md17-l2] [--members 4]
        [--system cluster|bulk] [--atoms 500] [--rounds 7] [--threads 2] [--work build/committee-bench]

Members: the preset (the paper's L2 settings are `md17-l2`), copper, cutoff 5 A, random
weights of different seeds (speed does not depend on training), float32, exported with
`export_model` / `export_committee`, single pass (no chunked route: the same route on every
side). Structure as benchmarks/compare_exports.py: a rattled fcc copper cluster (open) or
crystal of about --atoms atoms. TorchScript's legacy executor, as the C++ runtime runs the
files (`contract.configure_torchscript`). The three are called in turn, in rotating order,
so machine drift affects each alike; medians of --rounds rounds. Also prints how long one
member spends on the edge features (forward + backward, eager): the part a committee shares.
"""

import argparse
import os
import statistics
import time

import torch

from equiformer.committee import export_committee
from equiformer.data.neighbors import neighbor_list
from equiformer.export.contract import configure_torchscript, load_engine_model
from equiformer.export.torchscript import export_model
from equiformer.model import build_model

from compare_exports import structure


def members_of(preset: str, k: int):
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model({"preset": preset, "species": ["Cu"], "cutoff": 5.0}).eval())
    return models


def feature_time(model, vectors: torch.Tensor, repeats: int = 3) -> float:
    """Seconds for one member's edge features and their backward to the edge vectors."""
    from equiformer.nn.features import differentiable

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        vec = vectors.clone().requires_grad_(True)
        feats = [f for f in differentiable(model.edge_features(vec)) if f.requires_grad]
        torch.autograd.grad(feats, [vec], [torch.ones_like(f) for f in feats])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_preset(preset: str, args, atoms) -> None:
    work = os.path.join(args.work, preset)
    os.makedirs(work, exist_ok=True)
    models = members_of(preset, args.members)
    t = time.perf_counter()
    singles = []
    for k, m in enumerate(models):
        path = os.path.join(work, f"member-{k}.pt")
        export_model(m, path, "float32", chunked_edges=-1)
        singles.append(load_engine_model(path))
    committee_path = os.path.join(work, "committee.pt")
    export_committee(models, committee_path, "float32", chunked_edges=-1)
    committee = load_engine_model(committee_path)
    print(f"[{preset}] exported {args.members} members and the committee in {time.perf_counter() - t:.0f} s")

    pos = atoms.get_positions()
    cell, pbc = (atoms.cell.array, atoms.pbc) if atoms.pbc.all() else (None, None)
    edge_index, shifts, _ = neighbor_list(pos, 5.0, cell, pbc)
    vectors = torch.tensor(pos[edge_index[0]] - pos[edge_index[1]] + shifts, dtype=torch.float32)
    index = torch.from_numpy(edge_index)
    n = len(atoms)
    species = torch.zeros(n, dtype=torch.long)

    calls = {
        "one member": lambda: singles[0](species, index, vectors, n),
        "committee": lambda: committee(species, index, vectors, n),
        f"{args.members} separate": lambda: [s(species, index, vectors, n) for s in singles],
    }
    for call in calls.values():
        for _ in range(2):  # TorchScript optimises on the first calls
            call()
    out = committee(species, index, vectors, n)
    err = float((out["member_forces"][1] - singles[1](species, index, vectors, n)["forces"]).abs().max())
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    one, com, sep = med["one member"], med["committee"], med[f"{args.members} separate"]
    eager = models[0].float()
    feats = feature_time(eager, vectors)
    print(f"[{preset}] {args.system}, {n} atoms, {index.shape[1]} edges, float32, {args.threads} threads; "
          f"committee member 1 vs its own file: max |dF| = {err:.2g}")
    print(f"[{preset}] median ms per call: one member {one * 1e3:.0f}, committee of {args.members} {com * 1e3:.0f}, "
          f"{args.members} separate calls {sep * 1e3:.0f}")
    print(f"[{preset}] committee / one member = {com / one:.2f}x, {args.members} separate / one member = "
          f"{sep / one:.2f}x, committee / separate = {com / sep:.2f}")
    print(f"[{preset}] one member's edge features (forward + backward, eager): {feats * 1e3:.0f} ms "
          f"= {feats / one:.0%} of its call")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "md17-l2"])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--system", default="cluster", choices=["cluster", "bulk"])
    p.add_argument("--atoms", type=int, default=500)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="build/committee-bench", help="folder for the exported files")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configure_torchscript()
    atoms = structure(args.system, args.atoms)
    for preset in args.presets:
        run_preset(preset, args, atoms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
