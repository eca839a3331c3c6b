"""The compiled .pt2 package against the TorchScript file and eager PyTorch, in the same run.

    .venv/bin/python benchmarks/aoti_speed.py [--presets md17-l2 md17-l3] [--dtypes float32 float64]
        [--threads 2 1] [--systems molecule cluster500 cu4000] [--repeats 5] [--work build/aoti-bench]

For each preset (an untrained Equiformer, seed 0, cutoff 5 A, species H C O Cu) and dtype it
exports both files (printing the compile time and the package size; a package already in
--work is reused and its compile time read from there), then times one energy+forces+virial
call (median of --repeats after two warm-up calls) of each engine on each system and thread
count, every measurement in a fresh process (its peak resident memory, VmHWM, is printed too):
  eager        the model's own forward pass (EquiformerEngineModel, not scripted)
  torchscript  the exported .pt as the C++ runtime runs it (legacy executor)
  aoti         the compiled .pt2 (Python loader: the same compiled code the C++ runtime runs)
--host-memory both also runs the two exported files with glibc's allocator defaults
(EQUIFORMER_KEEP_FREED_MEMORY=0; equiformer/host_memory.py): what keeping freed memory for the
next call buys. Eager always runs with the defaults (training does not open engine models).
Systems: molecule (aspirin, 21 atoms, open), cluster500 (a rattled fcc copper cluster of 500
atoms, open), cu4000 (periodic fcc copper, 10x10x10 cells, 4,000 atoms).

It also prints how close a call comes to the hardware: the forward FLOPs of the eager model on
the system (torch.utils.flop_counter; the backward is counted as twice the forward, the usual
estimate for matmul-dominated graphs, so a call is 3x the forward), divided by the call time,
against this machine's dense float32 (and float64) matmul throughput measured in the same run
(2048 x 2048 torch.mm, same thread count).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIES = ["H", "C", "O", "Cu"]
ENGINES = ("eager", "torchscript", "aoti")


def system_graph(name: str, cutoff: float):
    import ase.build
    import ase.io

    from equiformer.data.neighbors import neighbor_list

    if name == "molecule":
        atoms = ase.io.read(os.path.join(ROOT, "data", "aspirin_xtb_test.xyz"), index=0)
    elif name == "cluster500":
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (5, 5, 5)
        atoms = atoms[:500]
        atoms.rattle(0.05, seed=0)
        atoms.pbc = False
    elif name == "cu4000":
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (10, 10, 10)
        atoms.rattle(0.05, seed=0)
    else:
        raise ValueError(f"unknown system {name}")
    pos = atoms.get_positions()
    pbc = atoms.get_pbc()
    edge_index, shifts, _ = neighbor_list(pos, cutoff, atoms.cell.array if pbc.any() else None, pbc)
    species = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    vectors = pos[edge_index[0]] - pos[edge_index[1]] + shifts
    return species, torch.from_numpy(edge_index), torch.from_numpy(vectors)


def build(preset: str, dtype: torch.dtype):
    from equiformer.model import build_model

    torch.manual_seed(0)
    model = build_model({"preset": preset, "species": SPECIES, "cutoff": 5.0}, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def peak_memory_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def child(args) -> int:
    """One engine on one system: prints a JSON line {seconds, peak_gb, edges}."""
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    species, index, vectors = system_graph(args.system, 5.0)
    vectors = vectors.to(dtype)
    if args.engine == "eager":
        from equiformer.export.torchscript import EquiformerEngineModel

        engine = EquiformerEngineModel(build(args.preset, dtype))
    else:
        from equiformer.export.contract import load_engine_model

        engine = load_engine_model(args.file)
    n = int(species.shape[0])
    for _ in range(2):
        engine(species, index, vectors, n)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        engine(species, index, vectors, n)
        times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": statistics.median(times), "peak_gb": peak_memory_gb(), "edges": int(index.shape[1])}))
    return 0


def measure(engine: str, preset: str, dtype: str, system: str, threads: int, repeats: int, path: str,
            keep_freed_memory: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--presets", preset, "--dtypes", dtype,
           "--systems", system, "--threads", str(threads), "--repeats", str(repeats), "--file", path]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), EQUIFORMER_KEEP_FREED_MEMORY="1" if keep_freed_memory else "0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode == -9:
        return {"error": "killed (out of memory)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def forward_flops(preset: str, dtype: torch.dtype, system: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model = build(preset, dtype)
    species, index, vectors = system_graph(system, 5.0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.atom_energies(species, index, vectors.to(dtype))
    return counter.get_total_flops()


def matmul_gflops(dtype: torch.dtype, threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def export_both(preset: str, dtype: str, work: str) -> dict:
    from equiformer.export.torchscript import export_model

    os.makedirs(work, exist_ok=True)
    out = {"pt": os.path.join(work, f"{preset}-{dtype}.pt"), "pt2": os.path.join(work, f"{preset}-{dtype}.pt2")}
    timing = os.path.join(work, f"{preset}-{dtype}.compile.json")
    model = build(preset, getattr(torch, dtype))
    if not os.path.isfile(out["pt"]):
        export_model(model, out["pt"], dtype)
    if os.path.isfile(out["pt2"]) and os.path.isfile(timing):
        out["compile_s"] = json.load(open(timing))["seconds"]
        out["cached"] = True
    else:
        t = time.perf_counter()
        export_model(model, out["pt2"], dtype)
        out["compile_s"] = time.perf_counter() - t
        json.dump({"seconds": out["compile_s"]}, open(timing, "w"))
        out["cached"] = False
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["md17-l2"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    p.add_argument("--systems", nargs="+", default=["molecule", "cluster500", "cu4000"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", default=os.path.join(ROOT, "build", "aoti-bench"))
    p.add_argument("--host-memory", choices=["keep", "both"], default="keep",
                   help="both: the exported files with glibc's allocator defaults too (module docstring)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.preset, args.dtype, args.system, args.threads = (args.presets[0], args.dtypes[0], args.systems[0],
                                                              args.threads[0])
        return child(args)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(ROOT, "build", "inductor-cache"))
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    for threads in args.threads:
        print(f"dense matmul (2048^2, {threads} thread(s)): float32 {matmul_gflops(torch.float32, threads):.1f} "
              f"GFLOP/s, float64 {matmul_gflops(torch.float64, threads):.1f} GFLOP/s", flush=True)
    for preset in args.presets:
        for dtype in args.dtypes:
            files = export_both(preset, dtype, args.work)
            print(f"\n{preset} {dtype}: .pt2 compile {files['compile_s']:.0f} s"
                  f"{' (earlier run)' if files['cached'] else ''}, package {os.path.getsize(files['pt2']) / 1e6:.1f} MB, "
                  f"TorchScript file {os.path.getsize(files['pt']) / 1e6:.1f} MB", flush=True)
            print(f"{'system':>10} {'thr':>3} {'edges':>7} {'eager ms':>10} {'TS ms':>10} {'pt2 ms':>10} "
                  f"{'TS/pt2':>7} {'eager/pt2':>9} {'pt2 GB':>7} {'TS GB':>6} {'pt2 GFLOP/s':>11}", flush=True)
            for system in args.systems:
                flops = None
                for threads in args.threads:
                    r = {e: measure(e, preset, dtype, system, threads, args.repeats,
                                    files["pt2"] if e == "aoti" else files["pt"]) for e in ENGINES}
                    if any("error" in r[e] for e in ("torchscript", "aoti")):
                        print(f"{system:>10} {threads:>3} failed: " +
                              "; ".join(f"{e}: {v['error']}" for e, v in r.items() if "error" in v), flush=True)
                        continue
                    if "error" in r["eager"]:  # one pass over a large graph can outgrow the machine
                        print(f"{system:>10} {threads:>3} eager: {r['eager']['error']}", flush=True)
                        r["eager"] = {"seconds": float("nan")}
                    elif flops is None:
                        flops = 3 * forward_flops(preset, getattr(torch, dtype), system)
                    ms = {e: v["seconds"] * 1e3 for e, v in r.items()}
                    gflops = flops / r["aoti"]["seconds"] / 1e9 if flops else float("nan")
                    print(f"{system:>10} {threads:>3} {r['aoti']['edges']:>7} {ms['eager']:>10.1f} "
                          f"{ms['torchscript']:>10.1f} {ms['aoti']:>10.1f} {ms['torchscript'] / ms['aoti']:>7.2f} "
                          f"{ms['eager'] / ms['aoti']:>9.2f} {r['aoti']['peak_gb']:>7.2f} "
                          f"{r['torchscript']['peak_gb']:>6.2f} {gflops:>11.1f}",
                          flush=True)
                    if args.host_memory == "both":
                        d = {e: measure(e, preset, dtype, system, threads, args.repeats,
                                        files["pt2"] if e == "aoti" else files["pt"], keep_freed_memory=False)
                             for e in ("torchscript", "aoti")}
                        if any("error" in v for v in d.values()):
                            print(f"{'':>10} {threads:>3} glibc defaults failed: " +
                                  "; ".join(f"{e}: {v['error']}" for e, v in d.items() if "error" in v), flush=True)
                            continue
                        dm = {e: v["seconds"] * 1e3 for e, v in d.items()}
                        print(f"{'':>10} {threads:>3} glibc defaults: TS {dm['torchscript']:.1f} ms, pt2 "
                              f"{dm['aoti']:.1f} ms (TS/pt2 {dm['torchscript'] / dm['aoti']:.2f}); keeping freed "
                              f"memory: TS {dm['torchscript'] / ms['torchscript']:.2f}x, pt2 "
                              f"{dm['aoti'] / ms['aoti']:.2f}x faster", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
