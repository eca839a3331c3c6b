"""Peer benchmark: energy + forces time and peak memory of NequIP and MACE (untrained, float32)
on the structures of benchmarks/model_eval.py's table (copper cluster/bulk of N atoms, aspirin).

    benchmarks/setup_peers.sh        # once: the peer venvs under benchmarks/.venvs/
    .venv/bin/python benchmarks/peers.py --threads 2 --sizes 32 108 256 500 --systems cluster molecule

Each configuration runs in a fresh subprocess of its peer's venv, so that its peak RSS is its own.
Each model is built through its package's own builder (NequIP: nequip.model.NequIPGNNModel; MACE:
its training CLI's argument parser and configure_model, so every setting not named below is
MACE's training default). The neighbor list comes from the peer's own data pipeline and is built
once; only the model call that returns energy and forces (autograd, as the peer does it) is timed.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MOLECULE = os.path.join(HERE, "..", "data", "aspirin_xtb_test.xyz")
R_MAX = 5.0

# name -> (package, settings); the settings are NequIPGNNModel arguments / MACE training CLI flags
PEERS = {
    "nequip-l2": ("nequip", {"l_max": 2, "num_layers": 4, "num_features": 64, "parity": True}),
    "mace-256-L2": ("mace", {"hidden_irreps": "256x0e+256x1o+256x2e", "correlation": 3, "num_interactions": 2,
                             "num_radial_basis": 8, "num_cutoff_basis": 5, "max_ell": 3}),
    "mace-128-L1": ("mace", {"hidden_irreps": "128x0e+128x1o", "correlation": 3, "num_interactions": 2,
                             "num_radial_basis": 8, "num_cutoff_basis": 5, "max_ell": 3}),
}

WORKER = r'''
import json, resource, statistics, sys, time
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
import ase.build, ase.io

def structure(system, n):
    if system == "molecule":
        return ase.io.read(cfg["molecule"], index=0)
    r = round((n / 4) ** (1 / 3))
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (r, r, r)
    atoms.rattle(0.05, seed=0)
    atoms.pbc = system == "bulk"
    return atoms

atoms = structure(cfg["system"], cfg["size"])
r_max, settings = cfg["r_max"], cfg["settings"]

if cfg["package"] == "nequip":
    import nequip
    from nequip.model import NequIPGNNModel
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.utils.global_state import set_global_state
    set_global_state()  # as nequip-train does before building (TF32 off)
    types = sorted(set(atoms.get_chemical_symbols()))
    data = from_ase(atoms)
    for transform in (ChemicalSpeciesToAtomTypeMapper(model_type_names=types), NeighborListTransform(r_max=r_max)):
        data = transform(data)
    edges = data[AtomicDataDict.EDGE_INDEX_KEY].shape[1]
    # required argument: the mean neighbor count, which NequIP's configs take from the training data
    model = NequIPGNNModel(seed=0, model_dtype="float32", type_names=types, r_max=r_max,
                           avg_num_neighbors=edges / len(atoms), **settings).eval()
    version = "nequip " + nequip.__version__

    def call():
        out = model(data)  # forces by autograd inside the model (ForceStressOutput)
        return out[AtomicDataDict.TOTAL_ENERGY_KEY], out[AtomicDataDict.FORCE_KEY]
else:
    import numpy as np
    import mace
    from mace import data as mace_data, tools
    from mace.tools import torch_geometric
    from mace.tools.model_script_utils import configure_model
    tools.set_default_dtype("float32")
    z_table = tools.AtomicNumberTable(sorted(set(atoms.numbers.tolist())))
    graph = mace_data.AtomicData.from_config(mace_data.config_from_atoms(atoms), z_table=z_table, cutoff=r_max,
                                             heads=["Default"])
    batch = next(iter(torch_geometric.dataloader.DataLoader([graph], batch_size=1))).to_dict()
    edges = batch["edge_index"].shape[1]
    flags = ["--name", "peers", "--model", "MACE", "--default_dtype", "float32", "--r_max", str(r_max),
             # untrained: zero E0s, no scaling; avg_num_neighbors as training would compute it on this structure
             "--mean", "0", "--std", "1", "--avg_num_neighbors", str(edges / len(atoms))]
    for key, value in settings.items():
        flags += ["--" + key, str(value)]
    args, _ = tools.check_args(tools.build_default_arg_parser().parse_args(flags))
    args.compute_energy, args.compute_dipole, args.compute_polarizability = True, False, False  # as mace_run_train
    tools.set_seeds(0)
    model, _ = configure_model(args, None, np.zeros((1, len(z_table))), heads=["Default"], z_table=z_table)
    model.eval()
    version = "mace-torch " + mace.__version__

    def call():
        out = model(batch, compute_force=True, training=False)
        return out["energy"], out["forces"]

for _ in range(3):
    call()
times = []
t_end = time.perf_counter() + cfg["seconds"]
while len(times) < 2 or time.perf_counter() < t_end:
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
print(json.dumps({"atoms": len(atoms), "edges": int(edges), "time_s": statistics.median(times), "min_s": min(times),
                  "repeats": len(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # KiB / 1e6, as model_eval.py
                  "version": f"{version}, torch {torch.__version__}"}))
'''


def run(cfg, timeout):
    python = os.path.join(HERE, ".venvs", cfg["package"], "bin", "python")
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    try:
        proc = subprocess.run([python, "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:g} s"}
    except OSError as e:  # e.g. the venv is missing: run benchmarks/setup_peers.sh
        return {"error": str(e)}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}".replace("|", "/")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--systems", nargs="+", default=["cluster", "molecule"], choices=["cluster", "bulk", "molecule"])
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 108, 256, 500])
    p.add_argument("--threads", nargs="+", type=int, default=[1], choices=[1, 2])
    p.add_argument("--seconds", type=float, default=10.0, help="timing budget per configuration after 3 warm-up calls")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", help="write all rows to this file")
    args = p.parse_args(argv)
    print("command:", shlex.join([sys.executable, sys.argv[0]] + (argv or sys.argv[1:])))
    print("load average: %.2f %.2f %.2f" % os.getloadavg())
    print()
    print("| peer | system | atoms | edges | threads | ms/call | ms per atom | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for peer in args.peers:
        package, settings = PEERS[peer]
        for system in args.systems:
            for size in [21] if system == "molecule" else args.sizes:
                for threads in args.threads:
                    cfg = {"peer": peer, "package": package, "settings": settings, "system": system, "size": size,
                           "threads": threads, "r_max": R_MAX, "seconds": args.seconds, "molecule": MOLECULE}
                    row = dict(cfg, **run(cfg, args.timeout))
                    rows.append(row)
                    if "error" in row:
                        print(f"| {peer} | {system} | {size} | | {threads} | {row['error']} | | |", flush=True)
                    else:
                        ms = 1000 * row["time_s"]
                        print(f"| {peer} | {system} | {row['atoms']} | {row['edges']} | {threads} | {ms:.1f} | "
                              f"{ms / row['atoms']:.3f} | {row['peak_rss_gb']:.2f} |", flush=True)
    print("\nload average: %.2f %.2f %.2f" % os.getloadavg())
    versions = sorted({r["version"] for r in rows if "version" in r})
    if versions:
        print("versions:", "; ".join(versions))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
