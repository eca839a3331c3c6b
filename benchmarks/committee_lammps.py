"""Cost of the committee deviation output in LAMMPS: a step with `deviation every 10` against a
plain step of the same committee file (issue 16; target: within 10%).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/committee_lammps.py [--members 4] [--cells 5]

A committee of freshly initialised `tiny`-preset members (float32, untrained: speed only) is
exported into one file (`equiformer.committee.export_committee`) and run on a rattled fcc copper
crystal (cells^3 x 4 atoms; 5: 500 atoms) on 1 rank (mode map) and on 2 ranks (mode ghost,
what mode auto picks for a committee there). Each configuration is one LAMMPS process that
alternates the two variants on the same model and trajectory, re-issuing only `pair_style`:

    warm-up run | plain | deviation every 10 | plain | deviation every 10 | ...

and the time per step is each timed run's `Loop time` / steps; the script prints every
timed run, the best of each variant and the ratio deviation / plain. With `deviation` the pair
style computes the deviations at every step (the reverse communication of the members' forces
in ghost mode, the reductions) and writes one line every 10 steps.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from lammps_scaling import LMP, MPIRUN, structure, write_data  # noqa: E402


def export(members: int, cutoff: float, dtype: str, path: str) -> None:
    from equiformer.committee import export_committee
    from equiformer.model import build_model

    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(build_model({"preset": "tiny", "species": ["Cu"], "cutoff": cutoff}))
    export_committee(models, path, dtype)


def alternate(workdir: str, model: str, nprocs: int, mode: str, warmup: int, steps: int, repeats: int):
    """Times per step [(variant, seconds)] of one LAMMPS process alternating the variants."""
    plain = f"pair_style equiformer mode {mode}\n"
    devi = f"pair_style equiformer mode {mode} deviation every 10 file devi.out append yes\n"
    script = (
        "units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
        + plain + f"pair_coeff * * {model} Cu\n"
        "neighbor 1.0 bin\nneigh_modify every 1 delay 0 check yes\n"
        "velocity all create 300 4928459 mom yes rot no\nfix nve all nve\ntimestep 0.001\n"
        f"thermo {steps}\nrun {warmup}\n"
        + "".join(f"{plain}run {steps}\n{devi}run {steps}\n" for _ in range(repeats))
    )
    inp = os.path.join(workdir, f"in.{nprocs}.{mode}")
    with open(inp, "w") as f:
        f.write(script)
    cmd = [LMP, "-in", inp, "-log", "none"]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)[1:]  # after the warm-up
    return [("plain" if k % 2 == 0 else "deviation", float(t) / int(n)) for k, (t, n) in enumerate(loops)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4, help="committee size (default 4)")
    p.add_argument("--cells", type=int, default=5, help="fcc cells per side (4 atoms each; default 5: 500 atoms)")
    p.add_argument("--cutoff", type=float, default=4.5, help="model cutoff in Angstrom (default 4.5)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--warmup", type=int, default=2, help="MD steps before timing (default 2)")
    p.add_argument("--steps", type=int, default=10, help="MD steps per timed run (default 10)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each variant (default 2)")
    p.add_argument("--nprocs", type=int, default=2, help="ranks of the parallel (ghost mode) runs (default 2)")
    args = p.parse_args(argv)

    if not os.access(LMP, os.X_OK):
        print(f"ERROR: {LMP} not found; run scripts/setup.sh", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="committee-lammps-") as work:
        model = os.path.join(work, "committee.pt")
        export(args.members, args.cutoff, args.dtype, model)
        atoms = structure(args.cells)
        write_data(os.path.join(work, "data.lmp"), atoms)
        print(f"system: fcc Cu a=3.61 A, {args.cells}^3 cells = {len(atoms)} atoms; committee of {args.members} "
              f"tiny-preset members, cutoff {args.cutoff} A, {args.dtype}, untrained; OMP_NUM_THREADS=1 per rank; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        for nprocs, mode in ((1, "map"), (args.nprocs, "ghost")):
            times = alternate(work, model, nprocs, mode, args.warmup, args.steps, args.repeats)
            for variant, t in times:
                print(f"  {nprocs} rank(s), mode {mode:5s}, {variant:9s}: {t * 1e3:9.1f} ms/step", flush=True)
            best = {v: min(t for w, t in times if w == v) for v in ("plain", "deviation")}
            print(f"{nprocs} rank(s), mode {mode}: plain {best['plain'] * 1e3:.1f} ms/step, deviation every 10 "
                  f"{best['deviation'] * 1e3:.1f} ms/step (best of {args.repeats}), ratio "
                  f"{best['deviation'] / best['plain']:.3f} (target <= 1.10)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
