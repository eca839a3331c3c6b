"""Time per MD step of `pair_style equiformer` on 1 and 2 MPI ranks, per mode, and the
overhead of the one-rank LAMMPS step over a bare call of the exported model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lammps_scaling.py [--cells 10] [--preset small] [--rounds 3]

Prints, for a rattled fcc copper crystal (a = 3.61 A, cells^3 x 4 atoms) and a freshly
initialised Equiformer of the given preset exported in float32:
  * the bare model: median time of `module(species, edge_index, edge_vectors, n)` (forward
    with forces and virial) on the periodic graph of the same structure, 1 libtorch thread;
  * LAMMPS (NVE, `neigh_modify every 1 delay 0 check yes`, no output during the run): the
    time per MD step from the `Loop time` of a timed run after a warm-up run, for each
    (ranks, mode) pair, OMP_NUM_THREADS=1 per rank;
  * the speed-up t(1 rank, map) / t(2 ranks, mode) and the ratio t(1 rank, map) / t(bare).
With --rounds R the LAMMPS runs repeat R times in rotating order (so that the machine's
drift reaches every configuration alike): the figures are medians over the rounds, and the
speed-ups also come per round (min-max) from runs made side by side.
The model is untrained (random weights): speed only, the dynamics are meaningless but
stable over a few steps. Needs the built plugin (scripts/build_cpp.sh) and the venv's lmp.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
LMP = os.path.join(VENV_BIN, "lmp")
MPIRUN = os.path.join(VENV_BIN, "mpirun")


def export(preset: str, cutoff: float, dtype: str, path: str) -> None:
    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model

    torch.manual_seed(0)
    model = build_model({"preset": preset, "species": ["Cu"], "cutoff": cutoff},
                        dtype=torch.float64 if dtype == "float64" else torch.float32)
    export_model(model, path, dtype)


def structure(cells: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((cells, cells, cells))
    atoms.rattle(0.05, seed=0)
    return atoms


def write_data(path: str, atoms, title: str = "copper (lammps_scaling.py)") -> None:
    """A LAMMPS data file (atom_style atomic, one type: Cu) of an orthogonal periodic cell."""
    cell = atoms.cell.array.tolist()  # plain floats: repr() of a numpy float is np.float64(...)
    lines = [title, "", f"{len(atoms)} atoms", "1 atom types",
             f"0 {cell[0][0]!r} xlo xhi", f"0 {cell[1][1]!r} ylo yhi", f"0 {cell[2][2]!r} zlo zhi",
             "", "Masses", "", "1 63.546", "", "Atoms # atomic", ""]
    lines += [f"{i + 1} 1 {x!r} {y!r} {z!r}" for i, (x, y, z) in enumerate(atoms.positions.tolist())]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# the LAMMPS input's opening: the copper data file, then a pair style line and its pair_coeff
MD_HEADER = "units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
# after pair_coeff: neighbour list rebuilt every step, NVE at 300 K
MD_SETUP = ("neighbor 1.0 bin\nneigh_modify every 1 delay 0 check yes\n"
            "velocity all create 300 4928459 mom yes rot no\nfix nve all nve\ntimestep 0.001\n")


def run_lammps(workdir: str, name: str, script: str, nprocs: int, threads: int = 1, env=None) -> list:
    """Run the LAMMPS input ``script`` (written to ``workdir``/``name``) on ``nprocs`` ranks,
    ``threads`` each, with ``env`` added to the environment; returns the (seconds, steps) of
    every run's `Loop time` line."""
    inp = os.path.join(workdir, name)
    with open(inp, "w") as f:
        f.write(script)
    cmd = [LMP, "-in", inp, "-log", "none"]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {}))
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)
    return [(float(t), int(n)) for t, n in loops]


def add_copper_options(p: argparse.ArgumentParser, cells: int, steps: int) -> None:
    """The options of every LAMMPS copper benchmark: system size, model cutoff and dtype, steps."""
    p.add_argument("--cells", type=int, default=cells,
                   help=f"fcc cells per side (4 atoms each; default {cells}: {4 * cells ** 3} atoms)")
    p.add_argument("--cutoff", type=float, default=4.5, help="model cutoff in Angstrom (default 4.5)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--warmup", type=int, default=2, help="MD steps before timing (default 2)")
    p.add_argument("--steps", type=int, default=steps, help=f"timed MD steps (default {steps})")
    p.add_argument("--nprocs", type=int, default=2, help="ranks of the parallel runs (default 2)")


@contextmanager
def copper_workdir(prefix: str, args, model_name: str, export_to, what: str):
    """A temporary folder holding data.lmp (the rattled crystal of ``args.cells``) and the
    model that ``export_to(path)`` writes as ``model_name``; prints the system line. Yields
    (folder, model path, atoms). Exits when the venv's LAMMPS is missing."""
    if not os.access(LMP, os.X_OK):
        raise SystemExit(f"ERROR: {LMP} not found; run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        model = os.path.join(work, model_name)
        export_to(model)
        atoms = structure(args.cells)
        write_data(os.path.join(work, "data.lmp"), atoms)
        print(f"system: fcc Cu a=3.61 A, {args.cells}^3 cells = {len(atoms)} atoms; {what}, cutoff {args.cutoff} A, "
              f"{args.dtype}, untrained; OMP_NUM_THREADS={getattr(args, 'threads', 1)} per rank; "
              f"{os.cpu_count()} cores on this machine, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        yield work, model, atoms


def bare_call(model_path: str, atoms, cutoff: float, dtype: str, repeats: int, threads: int = 1) -> tuple:
    from equiformer.data.neighbors import neighbor_list

    torch.set_num_threads(threads)
    from equiformer.export.contract import load_engine_model

    module = load_engine_model(model_path)  # the C++ runtime's TorchScript settings
    pos = atoms.get_positions()
    edge_index, shifts, _ = neighbor_list(pos, cutoff, atoms.cell.array, atoms.get_pbc())
    vec = torch.tensor(pos[edge_index[0]] - pos[edge_index[1]] + shifts,
                       dtype=torch.float64 if dtype == "float64" else torch.float32)
    species = torch.zeros(len(atoms), dtype=torch.int64)
    index = torch.from_numpy(np.ascontiguousarray(edge_index))
    n = len(atoms)
    for _ in range(3):  # TorchScript's profiling executor optimises on the first calls
        module(species, index, vec, n)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        module(species, index, vec, n)
        times.append(time.perf_counter() - t)
    return statistics.median(times), int(index.shape[1])


def lammps_step(workdir: str, model: str, nprocs: int, mode: str, warmup: int, steps: int, threads: int = 1,
                env=None) -> float:
    script = (MD_HEADER + f"pair_style equiformer mode {mode}\npair_coeff * * {model} Cu\n" + MD_SETUP
              + f"thermo {max(warmup, steps, 1)}\nrun {warmup}\nrun {steps}\n")
    seconds, nsteps = run_lammps(workdir, f"in.{nprocs}.{mode}", script, nprocs, threads, env)[-1]
    return seconds / nsteps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_copper_options(p, cells=8, steps=3)
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--ghost-steps", type=int, default=1,
                   help="warm-up and timed steps in mode ghost (default 1 each: its deep shell is slow)")
    p.add_argument("--repeats", type=int, default=5, help="timed bare model calls (default 5)")
    p.add_argument("--modes", default="map,layer",
                   help="modes to time (default map,layer; add ghost for the deep-shell mode: at 2048 atoms "
                        "with the tiny preset it takes ~90 s per step and ~12 GB on one rank)")
    p.add_argument("--rounds", type=int, default=3,
                   help="repeats of every LAMMPS run, in rotating order; medians are reported (default 3)")
    args = p.parse_args(argv)
    with copper_workdir("lammps-scaling-", args, "model.pt",
                        lambda path: export(args.preset, args.cutoff, args.dtype, path),
                        f"model: preset {args.preset}") as (work, model, atoms):
        bare, nedges = bare_call(model, atoms, args.cutoff, args.dtype, args.repeats)
        print(f"bare exported-model call (forward + forces + virial, {nedges} edges): {bare * 1e3:9.1f} ms",
              flush=True)
        modes = [m for m in args.modes.split(",") if m]
        configs = [(1, "map")] + [(n, m) for m in modes if m != "map" for n in (1, args.nprocs)]
        runs = {c: {} for c in configs}  # config -> {round: seconds per step}
        for r in range(max(1, args.rounds)):
            k = r % len(configs)
            for nprocs, mode in configs[k:] + configs[:k]:
                warm, steps = (args.ghost_steps, args.ghost_steps) if mode == "ghost" else (args.warmup, args.steps)
                try:
                    t = lammps_step(work, model, nprocs, mode, warm, steps)
                except RuntimeError as e:  # e.g. mode ghost killed for memory
                    print(f"round {r + 1}: LAMMPS {nprocs} rank(s), mode {mode:5s}: FAILED "
                          f"({str(e).splitlines()[-1][:200]})")
                    continue
                runs[(nprocs, mode)][r] = t
                print(f"round {r + 1}: LAMMPS {nprocs} rank(s), mode {mode:5s}: {t * 1e3:9.1f} ms/step", flush=True)
        results = {c: statistics.median(v.values()) for c, v in runs.items() if v}
        for (nprocs, mode), t in results.items():
            print(f"median of {len(runs[(nprocs, mode)])}: LAMMPS {nprocs} rank(s), mode {mode:5s}: "
                  f"{t * 1e3:9.1f} ms/step")
        if (1, "map") not in results:
            print("ERROR: no one-rank map run finished", file=sys.stderr)
            return 1
        t1 = results[(1, "map")]
        print(f"ratio LAMMPS 1-rank step (map) / bare model call: {t1 / bare:.3f}  (target <= 1.10)")
        for (nprocs, mode), t in results.items():
            if nprocs > 1 and (1, mode) in results:
                # one ratio per round: the two runs of a round were made minutes apart at most
                one, par = runs[(1, "map")], runs[(nprocs, mode)]
                per_round = [one[r] / par[r] for r in one if r in par] or [t1 / t]
                print(f"speed-up {nprocs} ranks, mode {mode:5s}: {t1 / t:.2f}x vs 1 rank map (target >= 1.8x; "
                      f"per round {min(per_round):.2f}-{max(per_round):.2f}x), {results[(1, mode)] / t:.2f}x "
                      f"vs 1 rank {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
