"""Time per MD step of `pair_style equiformer` on 1 and 2 MPI ranks, per mode, and the
overhead of the one-rank LAMMPS step over a bare call of the exported model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lammps_scaling.py [--cells 10] [--preset small]

Prints, for a rattled fcc copper crystal (a = 3.61 A, cells^3 x 4 atoms) and a freshly
initialised Equiformer of the given preset exported in float32:
  * the bare model: median time of `module(species, edge_index, edge_vectors, n)` (forward
    with forces and virial) on the periodic graph of the same structure, 1 libtorch thread;
  * LAMMPS (NVE, `neigh_modify every 1 delay 0 check yes`, no output during the run): the
    time per MD step from the `Loop time` of a timed run after a warm-up run, for each
    (ranks, mode) pair, OMP_NUM_THREADS=1 per rank;
  * the speed-up t(1 rank, map) / t(2 ranks, mode) and the ratio t(1 rank, map) / t(bare).
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


def write_data(path: str, atoms) -> None:
    cell = atoms.cell.array.tolist()
    lines = ["copper (lammps_scaling.py)", "", f"{len(atoms)} atoms", "1 atom types",
             f"0 {cell[0][0]!r} xlo xhi", f"0 {cell[1][1]!r} ylo yhi", f"0 {cell[2][2]!r} zlo zhi",
             "", "Masses", "", "1 63.546", "", "Atoms # atomic", ""]
    lines += [f"{i + 1} 1 {x!r} {y!r} {z!r}" for i, (x, y, z) in enumerate(atoms.positions.tolist())]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def bare_call(model_path: str, atoms, cutoff: float, dtype: str, repeats: int) -> tuple:
    from equiformer.data.neighbors import neighbor_list

    torch.set_num_threads(1)
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


def lammps_step(workdir: str, model: str, nprocs: int, mode: str, warmup: int, steps: int) -> float:
    script = (
        "units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
        f"pair_style equiformer mode {mode}\npair_coeff * * {model} Cu\n"
        "neighbor 1.0 bin\nneigh_modify every 1 delay 0 check yes\n"
        "velocity all create 300 4928459 mom yes rot no\nfix nve all nve\ntimestep 0.001\n"
        f"thermo {max(warmup, steps)}\nrun {warmup}\nrun {steps}\n"
    )
    inp = os.path.join(workdir, f"in.{nprocs}.{mode}")
    with open(inp, "w") as f:
        f.write(script)
    cmd = [LMP, "-in", inp, "-log", "none"]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)
    seconds, nsteps = float(loops[-1][0]), int(loops[-1][1])
    return seconds / nsteps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=8, help="fcc cells per side (4 atoms each; default 8: 2048 atoms)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--cutoff", type=float, default=4.5, help="model cutoff in Angstrom (default 4.5)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--warmup", type=int, default=2, help="MD steps before timing (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed MD steps (default 3)")
    p.add_argument("--ghost-steps", type=int, default=1,
                   help="warm-up and timed steps in mode ghost (default 1 each: its deep shell is slow)")
    p.add_argument("--repeats", type=int, default=5, help="timed bare model calls (default 5)")
    p.add_argument("--modes", default="map,layer",
                   help="modes to time (default map,layer; add ghost for the deep-shell mode: at 2048 atoms "
                        "with the tiny preset it takes ~90 s per step and ~12 GB on one rank)")
    p.add_argument("--nprocs", type=int, default=2, help="ranks of the parallel runs (default 2)")
    args = p.parse_args(argv)

    if not os.access(LMP, os.X_OK):
        print(f"ERROR: {LMP} not found; run scripts/setup.sh", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lammps-scaling-") as work:
        model = os.path.join(work, "model.pt")
        export(args.preset, args.cutoff, args.dtype, model)
        atoms = structure(args.cells)
        write_data(os.path.join(work, "data.lmp"), atoms)
        print(f"system: fcc Cu a=3.61 A, {args.cells}^3 cells = {len(atoms)} atoms; model: preset {args.preset}, "
              f"cutoff {args.cutoff} A, {args.dtype}, untrained; OMP_NUM_THREADS=1 per rank; "
              f"{os.cpu_count()} cores on this machine, load average {os.getloadavg()[0]:.1f}", flush=True)
        bare, nedges = bare_call(model, atoms, args.cutoff, args.dtype, args.repeats)
        print(f"bare exported-model call (forward + forces + virial, {nedges} edges): {bare * 1e3:9.1f} ms",
              flush=True)
        results = {}
        modes = [m for m in args.modes.split(",") if m]
        configs = [(1, "map")] + [(n, m) for m in modes if m != "map" for n in (1, args.nprocs)]
        for nprocs, mode in configs:
            warm, steps = (args.ghost_steps, args.ghost_steps) if mode == "ghost" else (args.warmup, args.steps)
            try:
                t = lammps_step(work, model, nprocs, mode, warm, steps)
            except RuntimeError as e:  # e.g. mode ghost killed for memory
                print(f"LAMMPS {nprocs} rank(s), mode {mode:5s}: FAILED ({str(e).splitlines()[-1][:200]})")
                continue
            results[(nprocs, mode)] = t
            print(f"LAMMPS {nprocs} rank(s), mode {mode:5s}: {t * 1e3:9.1f} ms/step", flush=True)
        t1 = results[(1, "map")]
        print(f"ratio LAMMPS 1-rank step (map) / bare model call: {t1 / bare:.3f}  (target <= 1.10)")
        for (nprocs, mode), t in results.items():
            if nprocs > 1 and (1, mode) in results:
                print(f"speed-up {nprocs} ranks, mode {mode:5s}: {t1 / t:.2f}x vs 1 rank map (target >= 1.8x), "
                      f"{results[(1, mode)] / t:.2f}x vs 1 rank {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
