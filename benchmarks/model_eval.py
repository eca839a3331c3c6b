"""Model evaluation benchmark: energy + forces time, atom-steps per second and peak memory
versus system size, for the eager model and the exported TorchScript file, float32/float64,
1 or 2 threads, at the paper's L2/L3 settings and the small preset.

Every configuration runs in a fresh subprocess so that its peak memory (max RSS) is its own.
Ratios between rows of one run are what count; absolute times move from run to run.

    python benchmarks/model_eval.py --presets small md17-l2 --sizes 32 108 256 500 \
        --dtypes float32 --threads 1 2 --modes eager exported [--official PATH_TO_OFFICIAL_CHECKOUT]

With --official, the same structures also run through the official Equiformer code (a checkout
of github.com/atomicarchitects/equiformer; its compiled dependencies are replaced by the pure-torch
stand-ins in benchmarks/official_standins/), at the matching preset (md17-l2/md17-l3), with
forces computed as the official code does (create_graph=True).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# glibc: serve every allocation from the heap and keep freed memory for reuse; large tensors
# otherwise come from fresh mmaps whose page faults cost up to half the time of big graphs
MALLOC_REUSE = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

WORKER = r'''
import json, os, resource, sys, time
import numpy as np
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
import ase.build
from equiformer.data.neighbors import neighbor_list

def structure(kind, n):
    if kind == "molecule":  # aspirin, 21 atoms (the first test frame shipped in data/)
        from ase.io import read
        return read(os.path.join(cfg["repo"], "data", "aspirin_xtb_test.xyz"), index=0), False
    # copper: a cluster of n atoms cut from fcc (the issue's 500-atom cluster) or a periodic cell
    reps = int(round((n / 4) ** (1 / 3)))
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (reps, reps, reps)
    atoms.rattle(0.05, seed=0)
    if kind == "cluster":
        atoms.pbc = False
        return atoms, False
    return atoms, True

atoms, periodic = structure(cfg["system"], cfg["size"])
cutoff = cfg["cutoff"]
pos = atoms.get_positions()
ei, sh, _ = neighbor_list(pos, cutoff, atoms.get_cell().array if periodic else None, atoms.pbc if periodic else None)
dtype = getattr(torch, cfg["dtype"])
species_symbols = sorted(set(atoms.get_chemical_symbols()))
species = torch.tensor([species_symbols.index(s) for s in atoms.get_chemical_symbols()])
vec = torch.tensor(pos[ei[0]] - pos[ei[1]] + sh, dtype=dtype)
edge_index = torch.from_numpy(ei)
n = len(atoms)

route = "official"
if cfg["mode"] == "official":
    sys.path.insert(0, cfg["standins"])
    import official_runner
    call = official_runner.make(cfg["official"], cfg["preset"], cutoff, atoms, dtype)
else:
    from equiformer.model import build_model
    from equiformer.export.torchscript import (SINGLE_PASS_MEMORY, EquiformerEngineModel, export_model,
                                               graph_bytes_per_edge)
    torch.manual_seed(0)
    model = build_model({"preset": cfg["preset"], "species": species_symbols, "cutoff": cutoff}, dtype=dtype).eval()
    model.use_edge_frames(cfg["mode"] != "reference")
    if cfg["mode"] == "export":  # a separate process, so that the timed one's peak memory is its own
        export_model(model, os.path.join(cfg["tmp"], "model.pt"), cfg["dtype"], chunked_edges=cfg["chunked"])
        sys.exit(0)
    if cfg["mode"] == "exported":
        from equiformer.export.contract import load_engine_model
        engine = load_engine_model(os.path.join(cfg["tmp"], "model.pt"))
    else:  # eager (and the eager reference SO(3) path) with the exported model's route choice
        for p in model.parameters():
            p.requires_grad_(False)
        chunked = cfg["chunked"]
        if chunked is None:
            chunked = int(SINGLE_PASS_MEMORY / graph_bytes_per_edge(model, dtype, "cpu"))
        engine = EquiformerEngineModel(model, chunked)
    route = "chunked" if 0 <= engine.chunked_edges < ei.shape[1] else "one pass"
    def call():
        out = engine(species, edge_index, vec, n)
        return out["forces"]

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
t_end = time.perf_counter() + cfg["seconds"]
for _ in range(cfg["warmup"]):  # warm-up (TorchScript profiling and optimisation runs)
    call()
while len(times) < cfg["min_repeats"] or (time.perf_counter() < t_end and len(times) < 50):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"atoms": n, "edges": int(ei.shape[1]), "time_s": float(np.median(times)), "route": route,
                  "peak_rss_gb": peak / 1e6, "extra_rss_gb": (peak - base) / 1e6, "repeats": len(times)}))
'''


def run(cfg, timeout):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(cfg, tmp=tmp)
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
        if cfg["malloc_reuse"]:
            env["GLIBC_TUNABLES"] = MALLOC_REUSE
        try:
            if cfg["mode"] == "exported":
                subprocess.run([sys.executable, "-c", WORKER, json.dumps(dict(cfg, mode="export"))], check=True,
                               capture_output=True, timeout=timeout, env=env)
            proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.CalledProcessError as exc:
            return {"error": f"export failed: {exc.stderr.decode().strip().splitlines()[-1][:120]}"}
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout} s"}
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small", "md17-l2"])
    p.add_argument("--systems", nargs="+", default=["bulk"], choices=["bulk", "cluster", "molecule"])
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 108, 256, 500])
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--modes", nargs="+", default=["eager", "exported"], choices=["eager", "exported", "reference"],
                   help="reference: the eager model on the SO(3) tensor-product path (no edge frames)")
    p.add_argument("--official", metavar="CHECKOUT", help="also run the official code from this checkout")
    p.add_argument("--official-max-atoms", type=int,
                   help="run the official code only up to this size (its memory: 18.5 GB for 500 atoms at L2)")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=10.0, help="time budget per configuration (after warm-up)")
    p.add_argument("--min-repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed calls first (TorchScript optimises the exported model during the first)")
    p.add_argument("--malloc-reuse", action="store_true",
                   help=f"set GLIBC_TUNABLES={MALLOC_REUSE} for every code alike (faster on big graphs, but freed "
                        "memory is not returned: higher peak memory)")
    p.add_argument("--chunked-above", "--layerwise-above", type=int, metavar="EDGES", dest="chunked_above",
                   help="route threshold of our model (as equiformer-export; default: its memory-based choice)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", help="write all rows to this file")
    args = p.parse_args(argv)
    print("command:", " ".join([os.path.basename(sys.executable), "benchmarks/model_eval.py"] + (argv or sys.argv[1:])))
    rows = []
    header = "| preset | system | atoms | edges | dtype | threads | mode | route | ms/call | atom-steps/s | peak RSS GB | time / eager |"
    print(header)
    print("|" + "---|" * 12)
    for preset in args.presets:
        for system in args.systems:
            sizes = [21] if system == "molecule" else args.sizes
            for size in sizes:
                for dtype in args.dtypes:
                    for threads in args.threads:
                        modes = list(args.modes)
                        if args.official and preset in ("md17-l2", "md17-l3") and (
                                args.official_max_atoms is None or size <= args.official_max_atoms):
                            modes.append("official")
                        eager_time = None
                        for mode in modes:
                            cfg = {"preset": preset, "system": system, "size": size, "dtype": dtype, "threads": threads,
                                   "mode": mode, "cutoff": args.cutoff, "seconds": args.seconds,
                                   "min_repeats": args.min_repeats, "official": args.official, "warmup": args.warmup,
                                   "malloc_reuse": args.malloc_reuse, "chunked": args.chunked_above, "repo": os.path.dirname(HERE),
                                   "standins": os.path.join(HERE, "official_standins")}
                            r = run(cfg, args.timeout)
                            row = dict(cfg, **r)
                            rows.append(row)
                            if "error" in r:
                                print(f"| {preset} | {system} | {size} | | {dtype} | {threads} | {mode} | | {r['error']} | | | |")
                                continue
                            if mode == "eager":
                                eager_time = r["time_s"]
                            ratio = f"{r['time_s'] / eager_time:.2f}" if eager_time else ""
                            print(f"| {preset} | {system} | {r['atoms']} | {r['edges']} | {dtype} | {threads} | {mode} | {r['route']} | "
                                  f"{1000 * r['time_s']:.1f} | {r['atoms'] / r['time_s']:.0f} | {r['peak_rss_gb']:.2f} | {ratio} |",
                                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
