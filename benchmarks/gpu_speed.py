"""GPU speed of the paper's L2 model (docs/benchmarks.md, "GPU"), all figures from one run:

    python benchmarks/gpu_speed.py [--device cuda] [--official CHECKOUT] [--json F] [--markdown F]
    python benchmarks/gpu_speed.py --device cpu --quick          # dry run of every route

For an untrained Equiformer at the paper's MD17 L2 settings (preset md17-l2, seed 0, cutoff
5 A, float32) on periodic fcc copper (a = 3.61 A, rattled by 0.05 A) it measures:

  matmul    the device's dense float32 matrix-product throughput (8192^3 torch.mm, TF32 off, as
            the model runs; the TF32 figure is printed for reference), the yardstick of the
            achieved fraction below
  bare      one energy + forces + virial call (median of --repeats after --warmup calls, CUDA
            synchronised) of the eager model (EquiformerEngineModel, frozen weights) and of the
            exported TorchScript file (as the C++ runtime runs it), at 500, 4,000 and 32,000
            atoms, then doubling the cell until the GPU runs out of memory ("largest that fits";
            doubling also stops at --max-call-s or when the time budget is spent: the row says
            which): time, atom-steps/s, peak GPU memory (torch.cuda.max_memory_allocated), the
            model's FLOPs (torch.utils.flop_counter on the forward, x3 for forward + backward)
            per second and their fraction of the measured matmul throughput; with --pt2 PACKAGE
            also the compiled .pt2 package of the same model (engine "pt2", issue 14), whose
            compile time and size come from --compile-pt2's record beside it
  lammps    the time per MD step of `pair_style equiformer device cuda mode map` (NVE, 1 rank)
            against the bare call of the same exported file on the same structure (target <= 1.10)
  openmm    the time per step of the native OpenMM EquiformerForce on the CUDA platform (and of
            openmm-torch's TorchForce when openmmtorch is importable) against the bare call
            (target <= 1.10)
  tf32      the accuracy cost of TF32 (docs/gpu.md): the shipped float32 models (Cu on a 500-atom
            cell, aspirin on a test frame) with torch.backends.cuda.matmul.allow_tf32 on against
            off: energy difference per atom, force difference (max / RMS), speed-up (CUDA only)
  official  the official Equiformer code (a checkout's nets/, pure-torch stand-ins for its
            compiled dependencies, benchmarks/official_standins) on the same positions, on the
            same device; it has no periodic boundaries, so its graph is the open cluster's
--compile-pt2 PACKAGE compiles that .pt2 for --device and --dtype and exits (gpu_check.sh runs
it in the background during the build, so the benchmark only times it).
--routes picks among them. Writes a JSON file (all rows, the environment) and markdown rows for
docs/benchmarks.md. The weights are random: timings only.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from lammps_scaling import MD_HEADER, MD_SETUP, write_data  # noqa: E402  (shared by the copper LAMMPS benchmarks)

PRESET, SPECIES, CUTOFF = "md17-l2", ["Cu"], 5.0
ROUTES = ("matmul", "bare", "tf32", "lammps", "openmm", "official")
T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:6.0f}s]", *args, flush=True)


class Budget:
    def __init__(self, seconds):
        self.end = T0 + seconds

    def left(self):
        return self.end - time.time()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup, repeats, max_s=None):
    """Median seconds of fn() over `repeats` calls after `warmup` untimed ones (fewer repeats
    when one call is longer than max_s / repeats)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    while len(times) < repeats:
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if max_s is not None and sum(times) > max_s and len(times) >= 2:
            break
    return statistics.median(times)


def cells_for(n):
    """Repeats (a, b, c) of the 4-atom cubic cell for n atoms: 500 -> 5^3, 4000 -> 10^3, ..."""
    k = round((n / 4) ** (1 / 3))
    if 4 * k ** 3 == n:
        return (k, k, k)
    raise ValueError(f"{n} atoms is not 4 k^3")


def copper(reps):
    import ase.build

    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=0)
    return atoms


def graph(atoms, dtype, device):
    from equiformer.data.neighbors import neighbor_list

    pos = atoms.get_positions()
    ei, sh, _ = neighbor_list(pos, CUTOFF, atoms.cell.array, atoms.get_pbc())
    vec = torch.tensor(pos[ei[0]] - pos[ei[1]] + sh, dtype=dtype, device=device)
    index = torch.from_numpy(np.ascontiguousarray(ei)).to(device)
    species = torch.zeros(len(atoms), dtype=torch.int64, device=device)
    return species, index, vec


def build(dtype, device):
    from equiformer.model import build_model

    torch.manual_seed(0)
    model = build_model({"preset": PRESET, "species": SPECIES, "cutoff": CUTOFF}, dtype=dtype).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def peak_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024 ** 3
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # process peak RSS (monotone)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(exc):
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower() or \
        "CUDA error: out of memory" in str(exc)


# ------------------------------------------------------------------------------------ matmul
def matmul_tflops(device, n, tf32=False, repeats=10):
    dtype = torch.float32
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        t = timed(lambda: torch.mm(a, b), device, 3, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 / t / 1e12


def forward_flops(model, species, index, vec):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.atom_energies(species, index, vec)
    return 3 * counter.get_total_flops()  # forward + backward (~2x forward), as aoti_speed.py


# ------------------------------------------------------------------------------------ bare
def export(model_cpu_dtype, path, dtype_name, device):
    from equiformer.export.torchscript import export_model

    if not os.path.isfile(path):
        t = time.perf_counter()
        export_model(model_cpu_dtype, path, dtype_name, device=str(device))
        log(f"exported {path} in {time.perf_counter() - t:.0f} s")
    return path


class Bare:
    """The eager model and the exported file on one device, measured size by size."""

    def __init__(self, args, device, dtype, sgemm):
        from equiformer.export.contract import load_engine_model
        from equiformer.export.torchscript import SINGLE_PASS_MEMORY, EquiformerEngineModel, graph_bytes_per_edge

        self.args, self.device, self.dtype, self.sgemm = args, device, dtype, sgemm
        self.model = build(dtype, device)
        memory = args.single_pass_gb * 1024 ** 3 if args.single_pass_gb is not None else SINGLE_PASS_MEMORY
        self.threshold = int(memory / graph_bytes_per_edge(self.model, dtype, str(device)))
        self.eager = EquiformerEngineModel(self.model, self.threshold)
        self.path = os.path.join(args.work, f"{PRESET}-{args.dtype}-{device.type}.pt")
        export(self.model, self.path, args.dtype, device)
        self.exported = load_engine_model(self.path, device)  # the C++ runtime's TorchScript settings
        if args.single_pass_gb is not None:
            self.exported.chunked_edges = self.threshold
        log(f"single-pass route up to {self.threshold} edges (eager and exported), then chunked")
        self.engines = {"eager": self.eager, "exported": self.exported}
        if args.pt2:
            if os.path.isfile(args.pt2):
                self.engines["pt2"] = load_engine_model(args.pt2, device)
                log(f"timing the compiled package {args.pt2} as engine pt2 (one pass at every size)")
            else:
                log(f"no compiled package at {args.pt2} (its compile failed or did not finish): no pt2 rows")
        self.last = {}  # engine -> (atoms, seconds) of the last measured size

    def measure(self, reps, engines, flops=True):
        """Rows for one structure; a row with "error": "out of memory" when it did not fit."""
        args, device = self.args, self.device
        n = 4 * reps[0] * reps[1] * reps[2]
        atoms = copper(reps)
        species, index, vec = graph(atoms, self.dtype, device)
        edges = int(index.shape[1])
        count = None
        if flops and n <= args.flops_max_atoms:
            try:
                count = forward_flops(self.model, species, index, vec)
            except Exception as exc:  # noqa: BLE001 - a count is optional
                log(f"flop count failed at {n} atoms: {type(exc).__name__}: {str(exc)[:200]}")
            reset_peak(device)
        rows = []
        energies = {}
        for name in engines:
            if name not in self.engines:
                continue
            engine = self.engines[name]
            if name == "pt2":  # the package's own threshold, when it has layer entries
                chunked = engine.chunked is not None and 0 <= engine.chunked_edges < edges
            else:
                chunked = 0 <= self.threshold < edges
            row = {"atoms": n, "cells": list(reps), "edges": edges, "engine": name, "dtype": args.dtype,
                   "device": str(device), "route": "chunked" if chunked else "one pass"}
            reset_peak(device)
            try:
                sec = timed(lambda: engine(species, index, vec, n), device, args.warmup, args.repeats,
                            max_s=args.measure_s)
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                row["error"] = "out of memory"
                rows.append(row)
                log(f"{n:>8} atoms {name}: out of memory")
                reset_peak(device)
                continue
            row.update(ms=1e3 * sec, atom_steps_s=n / sec, peak_gb=peak_gb(device))
            if count:
                row["tflops"] = count / sec / 1e12
                if self.sgemm:
                    row["fraction_of_sgemm"] = row["tflops"] / self.sgemm
            # the engines must agree (same weights): a fast wrong package would show here
            energies[name] = float(engine(species, index, vec, n)["energy"])
            if name != "exported" and "exported" in energies:
                ref = energies["exported"]
                row["energy_rel_diff_vs_exported"] = abs(energies[name] - ref) / max(abs(ref), 1e-30)
            rows.append(row)
            self.last[name] = (n, sec)
            log(f"{n:>8} atoms {edges:>10} edges {name:>8} {row['route']:>8}: {row['ms']:10.1f} ms "
                f"{row['atom_steps_s']:12.0f} atom-steps/s peak {row['peak_gb']:.2f} GB"
                + (f" {row['tflops']:.2f} TFLOP/s" if "tflops" in row else ""))
        del species, index, vec
        reset_peak(device)
        return rows

    def listed(self, budget):
        rows = []
        engines = ["exported"] + [e for e in self.args.engines if e != "exported"]  # the reference first
        for n in self.args.sizes:
            if budget.left() < self.args.reserve:
                rows.append({"atoms": n, "skipped": "time budget spent"})
                continue
            rows += self.measure(cells_for(n), engines)
        return rows

    def largest(self, budget):
        """Double the last listed cell (one axis at a time) until the exported model runs out
        of GPU memory, one call exceeds --max-call-s, or the next size would not fit the time
        budget (a call is assumed to take twice the last one). Returns (rows, why it stopped)."""
        args = self.args
        reps = cells_for(args.sizes[-1])
        rows = []
        for doubling in range(args.max_doublings + 1):
            if doubling == args.max_doublings:
                return rows, f"--max-doublings {args.max_doublings} reached"
            reps = tuple(sorted(reps))
            reps = (reps[0] * 2, reps[1], reps[2])
            n = 4 * reps[0] * reps[1] * reps[2]
            last_n, last_s = self.last.get("exported", (None, None))
            if last_s is not None:
                if last_s > args.max_call_s:
                    return rows, f"one call took {last_s:.1f} s at {last_n} atoms (> --max-call-s {args.max_call_s})"
                need = 2 * last_s * (args.warmup + 2) + 10 + args.reserve
                if budget.left() < need:
                    return rows, f"time budget: {budget.left():.0f} s left, {n} atoms would need about {need:.0f} s"
            try:
                got = self.measure(reps, ["exported"], flops=n <= args.flops_max_atoms)
            except MemoryError:
                return rows, f"host memory for the neighbour list of {n} atoms"
            rows += got
            if any(r.get("error") == "out of memory" for r in got):
                return rows, f"out of GPU memory at {n} atoms"


def compile_pt2(args, device, dtype):
    """--compile-pt2: the benchmark's model as a .pt2 package for this device, with a record
    of its compile time and size beside it (PACKAGE.json), read by the timing run."""
    from equiformer.export.torchscript import export_model

    path = args.compile_pt2
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model = build(dtype, torch.device("cpu"))
    t = time.perf_counter()
    export_model(model, path, args.dtype, device=str(device))
    record = {"package": os.path.basename(path), "compile_s": time.perf_counter() - t,
              "size_mb": os.path.getsize(path) / 1e6, "torch": torch.__version__, "device": str(device),
              "dtype": args.dtype, "preset": PRESET}
    with open(path + ".json", "w") as f:
        json.dump(record, f, indent=1)
    log(f"compiled {path}: {record['compile_s']:.0f} s, {record['size_mb']:.1f} MB")
    return 0


def pt2_record(args, bare):
    """The compile record of --pt2 (from --compile-pt2), with the TorchScript file's size."""
    if not args.pt2:
        return None
    record = {"package": args.pt2}
    if os.path.isfile(args.pt2 + ".json"):
        with open(args.pt2 + ".json") as f:
            record.update(json.load(f))
    if not os.path.isfile(args.pt2):
        record["error"] = "no package: its compile failed or did not finish in time (see the check's log)"
    if bare is not None and os.path.isfile(bare.path):
        record["torchscript_mb"] = os.path.getsize(bare.path) / 1e6
    return record


# ------------------------------------------------------------------------------------ ratios
def bare_call_s(path, atoms, dtype, device, args):
    from equiformer.export.contract import load_engine_model

    module = load_engine_model(path, device)
    species, index, vec = graph(atoms, dtype, device)
    n = len(atoms)
    return timed(lambda: module(species, index, vec, n), device, args.warmup + 1, args.repeats), int(index.shape[1])


def tf32_rows(args, device):
    """Shipped float32 models with TF32 matrix products on vs off (the default): what the switch
    of docs/gpu.md costs in accuracy and buys in speed."""
    import ase.io

    from equiformer.data.neighbors import neighbor_list
    from equiformer.export.contract import load_engine_model
    from equiformer.model_info import ModelInfo

    if device.type != "cuda":
        return [{"model": "shipped", "skipped": "TF32 is a CUDA setting; nothing to compare on " + str(device)}]
    cases = [("Cu", os.path.join(ROOT, "models", "cu", "model.pt"), copper(cells_for(500))),
             ("aspirin", os.path.join(ROOT, "models", "aspirin", "model.pt"),
              ase.io.read(os.path.join(ROOT, "data", "aspirin_xtb_test.xyz"), index=0))]
    rows = []
    for name, path, atoms in cases:
        try:
            info = ModelInfo.read(path)
            module = load_engine_model(path, device)
            pos = atoms.get_positions()
            ei, sh, _ = neighbor_list(pos, info.cutoff, atoms.cell.array, atoms.get_pbc())
            vec = torch.tensor(pos[ei[0]] - pos[ei[1]] + sh, dtype=info.torch_dtype, device=device)
            index = torch.from_numpy(np.ascontiguousarray(ei)).to(device)
            species = torch.from_numpy(info.species_indices(atoms.get_chemical_symbols())).to(device)
            n = len(atoms)
            out, ms = {}, {}
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    r = module(species, index, vec, n)
                    out[tf32] = (float(r["energy"]), r["forces"].detach().double())
                    ms[tf32] = 1e3 * timed(lambda: module(species, index, vec, n), device, args.warmup, args.repeats)
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = False
            df = out[True][1] - out[False][1]
            rows.append({"model": f"{name} ({os.path.relpath(path, ROOT)}, {info.dtype})", "atoms": n,
                         "energy_unit": info.energy_unit, "length_unit": info.length_unit,
                         "energy_diff_per_atom": abs(out[True][0] - out[False][0]) / n,
                         "force_diff_max": float(df.abs().max()), "force_diff_rms": float(df.pow(2).mean().sqrt()),
                         "speedup": ms[False] / ms[True]})
            log(f"tf32 {name}: {rows[-1]}")
        except Exception as exc:  # noqa: BLE001
            rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
    return rows


def find_lmp(args):
    for cand in (args.lmp, os.environ.get("EQUIFORMER_LMP"), os.path.join(ROOT, ".venv", "bin", "lmp")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def lammps_rows(args, device, dtype, path, bare, modes=None):
    modes = modes or args.lammps_modes
    fmt = ".pt2" if path.endswith(".pt2") else ".pt"
    lmp = find_lmp(args)
    if lmp is None:
        return [{"route": "lammps", "skipped": "no lmp (--lmp, $EQUIFORMER_LMP or .venv/bin/lmp)"}]
    atoms = copper(cells_for(args.ratio_atoms))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        write_data(os.path.join(d, "data.lmp"), atoms, "copper (gpu_speed.py)")
        for mode in modes:
            script = (MD_HEADER + f"pair_style equiformer device {device.type} mode {mode}\npair_coeff * * {path} Cu\n"
                      + MD_SETUP + f"thermo {args.md_steps}\nrun {args.md_warmup}\nrun {args.md_steps}\n")
            with open(os.path.join(d, "in.lmp"), "w") as f:
                f.write(script)
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            row = {"route": "lammps", "mode": mode, "ranks": 1, "atoms": len(atoms), "device": str(device),
                   "file": fmt}
            proc = subprocess.run([lmp, "-in", "in.lmp", "-log", "none", "-nocite"], cwd=d, capture_output=True,
                                  text=True, env=env, timeout=args.md_timeout)
            loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", proc.stdout)
            if proc.returncode != 0 or len(loops) < 2:
                row["error"] = "LAMMPS failed: " + " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])[:400]
                rows.append(row)
                log(row["error"])
                continue
            step = float(loops[-1][0]) / int(loops[-1][1])
            row.update(step_ms=1e3 * step, bare_ms=1e3 * bare, ratio=step / bare)
            rows.append(row)
            log(f"LAMMPS mode {mode} ({fmt}), 1 rank, {len(atoms)} atoms: {row['step_ms']:.2f} ms/step, bare "
                f"{row['bare_ms']:.2f} ms, ratio {row['ratio']:.3f}")
    return rows


def openmm_rows(args, device, dtype, path, bare):
    try:
        import openmm
    except ImportError as exc:
        return [{"route": "openmm", "skipped": f"openmm not importable: {exc}"}]
    atoms = copper(cells_for(args.ratio_atoms))
    box_nm = atoms.cell.array / 10.0
    pos_nm = atoms.get_positions() / 10.0
    symbols = atoms.get_chemical_symbols()
    platform = "CUDA" if device.type == "cuda" else args.openmm_cpu_platform
    rows = []
    routes = ["native"] + (["torchforce"] if "torchforce" in args.openmm_routes else [])
    for route in routes:
        row = {"route": f"openmm-{route}", "platform": platform, "atoms": len(atoms), "device": str(device)}
        try:
            if route == "native":
                from equiformer.openmm.native import create_native_force

                force = create_native_force(path, symbols, box_vectors=box_nm, device=str(device))
            else:
                try:
                    import openmmtorch  # noqa: F401
                except ImportError as exc:
                    row["skipped"] = f"openmmtorch not importable here: {exc}"
                    rows.append(row)
                    continue
                from equiformer.openmm.torchforce import create_torch_force

                force = create_torch_force(path, symbols, box_vectors=box_nm)
            system = openmm.System()
            for _ in symbols:
                system.addParticle(63.546)
            system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*r) for r in box_nm])
            system.addForce(force)
            integrator = openmm.VerletIntegrator(0.0005)
            context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
            context.setPositions(pos_nm)
            context.setVelocitiesToTemperature(300, 1)
            block = args.md_steps

            def run():
                integrator.step(block)
                context.getState(getEnergy=True)  # waits for the GPU

            integrator.step(args.md_warmup)
            step = timed(run, device, 0, max(3, args.repeats // 2)) / block
            row.update(step_ms=1e3 * step, bare_ms=1e3 * bare, ratio=step / bare)
            log(f"OpenMM {route} on {platform}, {len(atoms)} atoms: {row['step_ms']:.2f} ms/step, bare "
                f"{row['bare_ms']:.2f} ms, ratio {row['ratio']:.3f}")
            del context, integrator
        except Exception as exc:  # noqa: BLE001 - reported as the row's error
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            log(f"OpenMM {route}: {row['error']}")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ official
def official_rows(args, device, dtype, budget):
    checkout = args.official
    if not checkout or not os.path.isfile(os.path.join(checkout, "nets", "graph_attention_transformer_md17.py")):
        return [{"route": "official", "skipped": "no official checkout (--official CHECKOUT with nets/)"}]
    standins = os.path.join(HERE, "official_standins")
    sys.path.insert(0, standins)
    try:
        import official_runner
        import torch_geometric.utils  # noqa: F401  (the real PyG before the stand-ins, as official_runner)
        import types

        if "nets" not in sys.modules:
            pkg = types.ModuleType("nets")
            pkg.__path__ = [os.path.join(checkout, "nets")]
            sys.modules["nets"] = pkg
        import nets.graph_attention_transformer_md17  # noqa: F401
        from nets.registry import model_entrypoint

        gat = sys.modules["nets.graph_attention_transformer"]

        def embed(self, node_atom):  # as official_runner: the one-hot in the model's dtype
            onehot = torch.nn.functional.one_hot(node_atom, self.max_atom_type).to(self.atom_type_lin.tp.weight.dtype)
            return self.atom_type_lin(onehot), onehot, onehot

        gat.NodeEmbeddingNetwork.forward = embed
        torch.manual_seed(0)
        model = model_entrypoint(official_runner.MODELS[PRESET])(irreps_in="64x0e", radius=CUTOFF, num_basis=32)
        model = model.to(device=device, dtype=dtype).eval()
    except Exception as exc:  # noqa: BLE001
        return [{"route": "official", "error": f"cannot build the official model: {type(exc).__name__}: {exc}"[:300]}]
    rows = []
    for n in args.official_sizes:
        row = {"route": "official", "atoms": n, "device": str(device), "dtype": args.dtype,
               "graph": "open (no periodic boundaries in the official code)"}
        if budget.left() < args.reserve:
            row["skipped"] = "time budget spent"
            rows.append(row)
            continue
        atoms = copper(cells_for(n))
        z = torch.tensor(atoms.get_atomic_numbers(), device=device)
        pos = torch.tensor(atoms.get_positions(), dtype=dtype, device=device)
        batch = torch.zeros(n, dtype=torch.long, device=device)
        reset_peak(device)
        try:
            sec = timed(lambda: model(node_atom=z, pos=pos.clone(), batch=batch)[1].detach(), device, args.warmup,
                        args.repeats, max_s=args.measure_s)
            row.update(ms=1e3 * sec, atom_steps_s=n / sec, peak_gb=peak_gb(device))
            log(f"official {n} atoms: {row['ms']:.1f} ms, {row['atom_steps_s']:.0f} atom-steps/s, "
                f"peak {row['peak_gb']:.2f} GB")
        except Exception as exc:  # noqa: BLE001
            row["error"] = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:300]
            log(f"official {n} atoms: {row['error']}")
            reset_peak(device)
            rows.append(row)
            break
        rows.append(row)
    del model
    reset_peak(device)
    return rows


# ------------------------------------------------------------------------------------ report
def markdown(result):
    env = result["env"]
    out = [f"Measured {env['date']} on {env['gpu']}, torch {env['torch']} (CUDA {env['cuda']}), "
           f"command `{env['command']}`.", ""]
    mm = result.get("matmul")
    if mm:
        out.append(f"Dense float32 matmul ({mm['n']}^3 torch.mm, TF32 off): {mm['fp32_tflops']:.1f} TFLOP/s"
                   + (f" (TF32 on: {mm['tf32_tflops']:.1f})" if mm.get("tf32_tflops") else "") + ".")
        out.append("")
    rows = [r for r in result.get("bare", []) if "engine" in r]
    if rows:
        mem = "peak GPU GB" if env["device"].startswith("cuda") else "peak RSS GB"
        out += [f"| atoms | edges | engine | route | ms/call | atom-steps/s | {mem} | model TFLOP/s | of sgemm |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "ms" not in r:
                out.append(f"| {r['atoms']} | {r['edges']} | {r['engine']} | {r['route']} | {r.get('error')} | | | | |")
                continue
            note = " (largest)" if "largest" in r else ""
            out.append(f"| {r['atoms']}{note} | {r['edges']} | {r['engine']} | {r['route']} | {r['ms']:.1f} | "
                       f"{r['atom_steps_s']:.3g} | {r['peak_gb']:.2f} | "
                       + (f"{r['tflops']:.2f} | {100 * r['fraction_of_sgemm']:.1f}% |" if "fraction_of_sgemm" in r
                          else "n/a | n/a |"))
        if result.get("largest_stop"):
            out.append("")
            out.append(f"Doubling stopped: {result['largest_stop']}.")
        out.append("")
    pt2 = result.get("pt2")
    if pt2:
        if "compile_s" in pt2:
            out.append(f"Compiled package ({pt2['package']}, torch {pt2['torch']}, {pt2['device']}): compile "
                       f"{pt2['compile_s']:.0f} s, {pt2['size_mb']:.1f} MB"
                       + (f" (TorchScript file {pt2['torchscript_mb']:.1f} MB)" if "torchscript_mb" in pt2 else "") + ".")
        if "error" in pt2:
            out.append(f"Compiled package: {pt2['error']}.")
        pairs = pt2_pairs(result)
        if pairs:
            out += ["", "| atoms | TorchScript ms | .pt2 ms | .pt2 speed-up | .pt2 peak GB | energy rel. diff |",
                    "|---|---|---|---|---|---|"]
            for ts, c in pairs:
                out.append(f"| {c['atoms']} | {ts['ms']:.1f} | {c['ms']:.1f} | {ts['ms'] / c['ms']:.2f}x | "
                           f"{c['peak_gb']:.2f} | {c.get('energy_rel_diff_vs_exported', float('nan')):.1e} |")
        out.append("")
    ratios = result.get("ratios", [])
    if ratios:
        out += ["| engine | atoms | step ms | bare call ms | step / bare (target <= 1.10) |", "|---|---|---|---|---|"]
        for r in ratios:
            name = r["route"] + (f" mode {r['mode']}, 1 rank" if "mode" in r else "") + \
                (f" ({r['platform']})" if "platform" in r else "") + (f", {r['file']} file" if "file" in r else "")
            if "ratio" in r:
                out.append(f"| {name} | {r['atoms']} | {r['step_ms']:.2f} | {r['bare_ms']:.2f} | {r['ratio']:.3f} |")
            else:
                out.append(f"| {name} | {r.get('atoms', '')} | {r.get('error') or r.get('skipped')} | | |")
        out.append("")
    tf = result.get("tf32", [])
    if tf:
        out += ["| model | TF32 | energy difference (per atom) | force difference (max / RMS) | speed-up |",
                "|---|---|---|---|---|"]
        for r in tf:
            if "speedup" in r:
                e, f = r["energy_unit"], f"{r['energy_unit']}/{r['length_unit']}"
                out.append(f"| {r['model']}, {r['atoms']} atoms | on | {r['energy_diff_per_atom']:.2e} {e} | "
                           f"{r['force_diff_max']:.2e} / {r['force_diff_rms']:.2e} {f} | {r['speedup']:.2f}x |")
            else:
                out.append(f"| {r['model']} | on | {r.get('error') or r.get('skipped')} | | |")
        out.append("")
    off = result.get("official", [])
    if off:
        mem = "peak GPU GB" if env["device"].startswith("cuda") else "peak RSS GB"
        out += [f"| official code | atoms | ms/call | atom-steps/s | {mem} |", "|---|---|---|---|---|"]
        for r in off:
            if "ms" in r:
                out.append(f"| official (open graph) | {r['atoms']} | {r['ms']:.1f} | {r['atom_steps_s']:.3g} | "
                           f"{r['peak_gb']:.2f} |")
            else:
                out.append(f"| official | {r.get('atoms', '')} | {r.get('error') or r.get('skipped')} | | |")
        out.append("")
    return "\n".join(out)


def pt2_pairs(result):
    """(TorchScript row, .pt2 row) of each size where both were timed."""
    rows = [r for r in result.get("bare", []) if "ms" in r]
    ts = {r["atoms"]: r for r in rows if r["engine"] == "exported"}
    return [(ts[r["atoms"]], r) for r in rows if r["engine"] == "pt2" and r["atoms"] in ts]


def summary_lines(result):
    lines = []
    mm = result.get("matmul")
    if mm:
        lines.append(f"sgemm {mm['fp32_tflops']:.1f} TFLOP/s (TF32 off)")
    for r in result.get("bare", []):
        if "ms" in r:
            lines.append(f"{r['engine']} {r['atoms']} atoms ({r['route']}): {r['ms']:.1f} ms, "
                         f"{r['atom_steps_s']:.3g} atom-steps/s, peak {r['peak_gb']:.2f} GB"
                         + (f", {100 * r['fraction_of_sgemm']:.1f}% of sgemm" if "fraction_of_sgemm" in r else ""))
        elif "error" in r or "skipped" in r:
            lines.append(f"{r.get('engine', 'bare')} {r['atoms']} atoms: {r.get('error') or r.get('skipped')}")
    target = [r for r in result.get("bare", []) if r.get("engine") == "exported" and r.get("atoms", 0) >= 4000
              and "atom_steps_s" in r]
    if target:
        best = min(r["atom_steps_s"] for r in target)
        lines.append(f"target >= 5e4 atom-steps/s at 4,000+ atoms (exported): lowest {best:.3g} -> "
                     + ("met" if best >= 5e4 else "NOT met"))
    pt2 = result.get("pt2")
    if pt2:
        lines.append(f".pt2: {pt2['error']}" if "error" in pt2 else
                     f".pt2 compiled in {pt2.get('compile_s', float('nan')):.0f} s, {pt2.get('size_mb', float('nan')):.1f} MB")
        for ts, c in pt2_pairs(result):
            lines.append(f".pt2 vs TorchScript at {c['atoms']} atoms: {ts['ms'] / c['ms']:.2f}x "
                         f"({c['ms']:.1f} vs {ts['ms']:.1f} ms), energy rel. diff "
                         f"{c.get('energy_rel_diff_vs_exported', float('nan')):.1e}")
    for r in result.get("ratios", []):
        name = r["route"] + (f" {r['mode']}" if "mode" in r else "") + (f" {r['file']}" if "file" in r else "")
        if "ratio" in r:
            lines.append(f"{name}: step/bare {r['ratio']:.3f} (target <= 1.10: {'met' if r['ratio'] <= 1.10 else 'NOT met'})")
        else:
            lines.append(f"{name}: {r.get('error') or r.get('skipped')}")
    for r in result.get("tf32", []):
        lines.append(f"tf32 {r['model']}: " + (f"dE/atom {r['energy_diff_per_atom']:.2e}, dF max {r['force_diff_max']:.2e}, "
                                               f"speed-up {r['speedup']:.2f}x" if "speedup" in r
                                               else str(r.get("error") or r.get("skipped"))))
    for r in result.get("official", []):
        lines.append(f"official {r.get('atoms', '')}: " + (f"{r['ms']:.1f} ms" if "ms" in r else
                                                             str(r.get("error") or r.get("skipped"))))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:K or cpu (dry run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (the CPU dry run)")
    p.add_argument("--routes", default="matmul,bare,lammps,openmm,official")
    p.add_argument("--engines", default="eager,exported", help="eager, exported and pt2 (needs --pt2)")
    p.add_argument("--pt2", metavar="PACKAGE", help="a .pt2 of the same model (--compile-pt2) to time as engine pt2")
    p.add_argument("--compile-pt2", metavar="PACKAGE", help="compile the model to PACKAGE for --device, then exit")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--sizes", type=int, nargs="+", help="atoms, each 4 k^3 (default 500 4000 32000)")
    p.add_argument("--no-largest", dest="largest", action="store_false",
                   help="do not double past the last size to find the largest that fits")
    p.add_argument("--max-call-s", type=float, default=8.0, help="stop doubling once one call takes longer")
    p.add_argument("--max-doublings", type=int, default=1000, help="at most this many sizes past the last one")
    p.add_argument("--measure-s", type=float, default=10.0,
                   help="time cap per measurement: fewer repeats (at least 2) once the timed calls exceed it")
    p.add_argument("--single-pass-gb", type=float,
                   help="memory for one autograd pass before the chunked route (default: the export default, 2 GiB)")
    p.add_argument("--flops-max-atoms", type=int, default=32000, help="count FLOPs up to this size (a forward pass)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ratio-atoms", type=int, help="structure of the LAMMPS/OpenMM ratios (default 4000)")
    p.add_argument("--md-warmup", type=int, default=5)
    p.add_argument("--md-steps", type=int, default=20)
    p.add_argument("--md-timeout", type=float, default=240)
    p.add_argument("--lammps-modes", default="map", help="comma-separated pair_style modes, 1 rank")
    p.add_argument("--lmp", help="the lmp executable (default $EQUIFORMER_LMP, then .venv/bin/lmp)")
    p.add_argument("--openmm-routes", default="native,torchforce")
    p.add_argument("--openmm-cpu-platform", default="CPU")
    p.add_argument("--official", metavar="CHECKOUT", help="official Equiformer checkout (its nets/)")
    p.add_argument("--official-sizes", type=int, nargs="+", help="default 500 4000")
    p.add_argument("--budget", type=float, default=1e9, help="seconds for the whole run; later rows are skipped")
    p.add_argument("--reserve", type=float, default=20.0, help="seconds kept back when starting a new size")
    p.add_argument("--work", default=os.path.join(ROOT, "build", "gpu-speed"), help="exported files")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.quick:
        # a 2-core machine: one listed size, one doubling (which then stops on --max-call-s)
        args.sizes = args.sizes or [32]
        args.official_sizes = args.official_sizes or [32]
        args.ratio_atoms = args.ratio_atoms or 108  # the OpenMM box must be over twice the cutoff
        args.repeats, args.warmup, args.md_warmup, args.md_steps = 2, 1, 1, 1
        args.max_call_s = 1e9  # one doubling (--max-doublings 1) proves the route; no time limit on it
        args.max_doublings = min(args.max_doublings, 1)
        args.measure_s = min(args.measure_s, 2.0)
    args.sizes = args.sizes or [500, 4000, 32000]
    args.official_sizes = args.official_sizes or [500, 4000]
    args.ratio_atoms = args.ratio_atoms or 4000
    args.lammps_modes = args.lammps_modes.split(",")
    args.openmm_routes = args.openmm_routes.split(",")
    args.engines = args.engines.split(",")
    if args.pt2 and "pt2" not in args.engines:
        args.engines.append("pt2")
    routes = args.routes.split(",")
    for r in routes:
        if r not in ROUTES:
            p.error(f"unknown route {r}; choose from {', '.join(ROUTES)}")
    os.makedirs(args.work, exist_ok=True)
    from equiformer.device import resolve_device

    device = resolve_device(args.device, "--device", "--device {}")
    dtype = getattr(torch, args.dtype)
    budget = Budget(args.budget)
    torch.backends.cuda.matmul.allow_tf32 = False  # the model's own setting (torch's default)
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    if args.compile_pt2:
        return compile_pt2(args, device, dtype)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    result = {"env": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu,
                      "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                      "preset": PRESET, "cutoff": CUTOFF, "dtype": args.dtype,
                      "command": "python benchmarks/gpu_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}}
    log(f"{gpu}, torch {torch.__version__}, routes {routes}, budget {args.budget:.0f} s")

    def save():
        result["summary"] = summary_lines(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(markdown(result) + "\n")

    failed = []
    sgemm = None
    if "matmul" in routes:
        n = 8192 if device.type == "cuda" else (1024 if args.quick else 2048)
        fp32 = matmul_tflops(device, n)
        tf32 = matmul_tflops(device, n, tf32=True) if device.type == "cuda" else None
        sgemm = fp32
        result["matmul"] = {"n": n, "fp32_tflops": fp32, "tf32_tflops": tf32}
        log(f"matmul {n}^3 float32: {fp32:.2f} TFLOP/s" + (f", TF32 {tf32:.1f} TFLOP/s" if tf32 else ""))
        save()
    path = None
    bare_engine = None
    if "bare" in routes:
        try:
            bare_engine = Bare(args, device, dtype, sgemm)
            path = bare_engine.path
            result["bare"] = bare_engine.listed(budget)
        except Exception as exc:  # noqa: BLE001
            failed.append("bare")
            result["bare"] = [{"atoms": 0, "error": f"{type(exc).__name__}: {exc}"[:400]}]
            log(f"bare: {type(exc).__name__}: {exc}")
        result["pt2"] = pt2_record(args, bare_engine)
        save()
    if "tf32" in routes:
        result["tf32"] = tf32_rows(args, device)
        save()
    if "lammps" in routes or "openmm" in routes:
        try:
            model = build(dtype, torch.device("cpu"))
            path = path or export(model, os.path.join(args.work, f"{PRESET}-{args.dtype}-{device.type}.pt"),
                                  args.dtype, device)
            bare, edges = bare_call_s(path, copper(cells_for(args.ratio_atoms)), dtype, device, args)
            log(f"bare call of the exported file, {args.ratio_atoms} atoms ({edges} edges): {1e3 * bare:.2f} ms")
            result["ratios"] = []
            if "lammps" in routes:
                result["ratios"] += lammps_rows(args, device, dtype, path, bare)
                save()
                if args.pt2 and os.path.isfile(args.pt2):  # the compiled package in the pair style
                    try:
                        bare2, _ = bare_call_s(args.pt2, copper(cells_for(args.ratio_atoms)), dtype, device, args)
                        log(f"bare call of the .pt2, {args.ratio_atoms} atoms: {1e3 * bare2:.2f} ms")
                        result["ratios"] += lammps_rows(args, device, dtype, args.pt2, bare2, ["map"])
                    except Exception as exc:  # noqa: BLE001
                        err = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:300]
                        result["ratios"].append({"route": "lammps", "mode": "map", "file": ".pt2",
                                                 "atoms": args.ratio_atoms, "skipped": f".pt2 bare call: {err}"})
                        reset_peak(device)
                    save()
            if "openmm" in routes:
                result["ratios"] += openmm_rows(args, device, dtype, path, bare)
        except Exception as exc:  # noqa: BLE001
            failed.append("ratios")
            result.setdefault("ratios", []).append({"route": "ratios", "error": f"{type(exc).__name__}: {exc}"[:400]})
            log(f"ratios: {exc}")
        save()
    if "official" in routes:
        result["official"] = official_rows(args, device, dtype, budget)
        save()
    if bare_engine is not None and args.largest:  # last: it takes whatever time is left
        try:
            rows, stop = bare_engine.largest(budget)
        except Exception as exc:  # noqa: BLE001
            rows, stop = [], f"failed: {type(exc).__name__}: {exc}"[:300]
            failed.append("largest")
        fitted = [r for r in result["bare"] + rows if "ms" in r and r["engine"] == "exported"]
        if fitted:
            biggest = max(fitted, key=lambda r: r["atoms"])
            biggest["largest"] = stop
        result["bare"] += rows
        result["largest_stop"] = stop
        log(f"largest that fits: {biggest['atoms'] if fitted else 'none'} atoms; doubling stopped: {stop}")
    save()
    print(markdown(result))
    for line in result["summary"]:
        log(line)
    errors = [r for key in ("ratios",) for r in result.get(key, []) if "error" in r]
    if failed or errors:
        log(f"FAILED: {', '.join(failed + [r['route'] for r in errors])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
