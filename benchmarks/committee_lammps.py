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
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from lammps_scaling import (MD_HEADER, MD_SETUP, add_copper_options, copper_workdir,  # noqa: E402
                            run_lammps)


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
        MD_HEADER + plain + f"pair_coeff * * {model} Cu\n" + MD_SETUP + f"thermo {steps}\nrun {warmup}\n"
        + "".join(f"{plain}run {steps}\n{devi}run {steps}\n" for _ in range(repeats))
    )
    loops = run_lammps(workdir, f"in.{nprocs}.{mode}", script, nprocs)[1:]  # after the warm-up
    return [("plain" if k % 2 == 0 else "deviation", t / n) for k, (t, n) in enumerate(loops)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4, help="committee size (default 4)")
    add_copper_options(p, cells=5, steps=10)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each variant (default 2)")
    args = p.parse_args(argv)
    with copper_workdir("committee-lammps-", args, "committee.pt",
                        lambda path: export(args.members, args.cutoff, args.dtype, path),
                        f"committee of {args.members} tiny-preset members") as (work, model, _):
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
