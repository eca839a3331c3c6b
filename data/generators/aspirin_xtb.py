"""Aspirin reference data: GFN2-xTB (tblite) energies and forces along Langevin MD at 500 K.

    .venv/bin/pip install tblite==0.8.0                         # not a core dependency
    .venv/bin/python data/generators/aspirin_xtb.py             # -> data/aspirin_xtb_{train,test}.xyz
    .venv/bin/python data/generators/aspirin_xtb.py --quick     # 2 frames, for tests

The 21-atom starting geometry (acetylsalicylic acid, C9H8O4) is built from ideal bond
lengths and angles below and relaxed with GFN2-xTB (BFGS, fmax 0.01 eV/A). Langevin dynamics
(ASE, dt 0.5 fs, friction 0.01 /fs, seeded) is equilibrated for ``--equil`` steps and then
sampled every ``--every`` steps (default 20 steps = 10 fs), energies in eV and forces in eV/A,
as MD17 but with xTB instead of DFT.

Deterministic for a given tblite build and thread count (OMP_NUM_THREADS=1 is set) and
resumable: the MD state (positions, momenta, RNG state, step) and the frames so far are
saved to ``--cache`` every ``--save-every`` frames; rerunning continues from there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pickle
import sys
import time
from typing import List, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from equiformer.files import sha256_of  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)


def aspirin_guess():
    """Approximate aspirin geometry (A): benzene ring in the xy plane, carboxylic acid on C1,
    acetoxy on C2 rotated out of the ring plane (as in the crystal structure)."""
    from ase import Atoms

    def u(deg):
        return np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0])

    ring = np.array([1.39 * u(a) for a in (90, 150, 210, 270, 330, 30)])
    sym, pos = ["C"] * 6, list(ring)
    for i, a in zip(range(2, 6), (210, 270, 330, 30)):  # ring hydrogens
        sym.append("H"), pos.append(ring[i] + 1.08 * u(a))
    c7 = ring[0] + 1.48 * u(90)  # carboxyl carbon
    o8 = c7 + 1.22 * u(150)  # C=O
    o9 = c7 + 1.34 * u(30)  # O-H
    sym += ["C", "O", "O", "H"]
    pos += [c7, o8, o9, o9 + 0.97 * u(90)]
    o10 = ring[1] + 1.40 * u(150)  # ester oxygen
    d = np.array([-0.5, -0.3, 0.81])
    c11 = o10 + 1.36 * d / np.linalg.norm(d)
    d = np.array([-0.2, 0.6, 0.77])
    o12 = c11 + 1.20 * d / np.linalg.norm(d)
    dm = np.array([-0.8, -0.6, 0.2])
    dm /= np.linalg.norm(dm)
    c13 = c11 + 1.50 * dm
    sym += ["O", "C", "O", "C"]
    pos += [o10, c11, o12, c13]
    p = np.cross(dm, [0.0, 0.0, 1.0])
    p /= np.linalg.norm(p)
    q = np.cross(dm, p)
    for k in range(3):  # methyl hydrogens, tetrahedral
        phi = 2 * np.pi * k / 3
        v = 0.334 * dm + 0.943 * (np.cos(phi) * p + np.sin(phi) * q)
        sym.append("H"), pos.append(c13 + 1.09 * v / np.linalg.norm(v))
    return Atoms(sym, positions=np.array(pos))


def calculator():
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("tblite is missing: .venv/bin/pip install tblite==0.8.0") from exc
    return TBLite(method="GFN2-xTB", verbosity=0)


def relaxed_aspirin():
    from ase.optimize import BFGS

    atoms = aspirin_guess()
    atoms.calc = calculator()
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=1000)
    atoms.positions -= atoms.get_center_of_mass()
    _check_bonds(atoms)
    return atoms


def _bonds(atoms) -> np.ndarray:
    """Covalent bonds (i < j) by ASE's natural cutoffs."""
    from ase.neighborlist import NeighborList, natural_cutoffs

    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=False)
    nl.update(atoms)
    return np.array(sorted((min(i, j), max(i, j)) for i in range(len(atoms)) for j in nl.get_neighbors(i)[0]))


def _check_bonds(atoms, ref: Optional[np.ndarray] = None) -> None:
    """Stop if the molecule has dissociated or a proton has moved: every reference bond must be
    shorter than 1.6 x its covalent cutoff and every H must keep its nearest heavy atom."""
    from ase.neighborlist import natural_cutoffs

    if ref is None:  # relaxed structure: 21 bonds (aspirin has no ring other than benzene)
        b = _bonds(atoms)
        if len(b) != 21:
            raise RuntimeError(f"aspirin guess relaxed to {len(b)} bonds instead of 21")
        return
    rc = np.array(natural_cutoffs(atoms))
    d = np.linalg.norm(atoms.positions[ref[:, 0]] - atoms.positions[ref[:, 1]], axis=1)
    bad = d > 1.6 * (rc[ref[:, 0]] + rc[ref[:, 1]])
    if bad.any():
        raise RuntimeError(f"aspirin bond(s) broken: {ref[bad].tolist()}")


def _save_state(path, state) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh)
    os.replace(tmp, path)


def generate(n_frames: int, every: int, equil: int, seed: int, temperature: float, cache: str,
             save_every: int = 50, log=print):
    """Run (or continue) the MD; returns (frames, state dict)."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    os.makedirs(cache, exist_ok=True)
    key = f"n{n_frames}_e{every}_q{equil}_s{seed}_T{temperature:g}"
    spath = os.path.join(cache, f"state_{key}.pkl")
    if os.path.exists(spath):
        with open(spath, "rb") as fh:
            state = pickle.load(fh)
        log(f"resuming at frame {len(state['frames'])} (step {state['step']})")
    else:
        t0 = time.time()
        atoms = relaxed_aspirin()
        rng = np.random.RandomState(seed)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        state = {"numbers": atoms.numbers.copy(), "positions": atoms.positions.copy(),
                 "momenta": atoms.get_momenta(), "rng": rng.get_state(), "step": 0, "frames": [],
                 "relaxed_positions": atoms.positions.copy(), "relax_time_s": time.time() - t0}
        log(f"relaxed aspirin with GFN2-xTB in {state['relax_time_s']:.1f} s, E = {atoms.get_potential_energy():.4f} eV")

    from ase import Atoms

    atoms = Atoms(numbers=state["numbers"], positions=state["positions"])
    atoms.set_momenta(state["momenta"])
    atoms.calc = calculator()
    rng = np.random.RandomState()
    rng.set_state(state["rng"])
    dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=True, rng=rng)
    relaxed = Atoms(numbers=state["numbers"], positions=state["relaxed_positions"])
    ref_bonds = _bonds(relaxed)
    t0 = time.time()
    while len(state["frames"]) < n_frames:
        target = equil + (len(state["frames"]) + 1) * every
        dyn.run(target - state["step"])
        state["step"] = target
        e = float(atoms.get_potential_energy())
        f = atoms.get_forces().copy()
        _check_bonds(atoms, ref_bonds)
        state["frames"].append((atoms.positions.copy(), e, f, float(atoms.get_temperature())))
        n = len(state["frames"])
        if n % save_every == 0 or n == n_frames:
            state.update(positions=atoms.positions.copy(), momenta=atoms.get_momenta(), rng=rng.get_state())
            _save_state(spath, state)
            log(f"frame {n}/{n_frames} step {state['step']} T={atoms.get_temperature():.0f} K "
                f"({time.time() - t0:.1f} s this run)")
    frames = []
    for k, (x, e, f, T) in enumerate(state["frames"]):
        a = Atoms(numbers=state["numbers"], positions=x)
        a.info["md_step"] = equil + (k + 1) * every
        a.info["temperature_K"] = round(T, 1)
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    return frames, state


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(DATA, "aspirin_xtb"), help="output prefix (default data/aspirin_xtb)")
    p.add_argument("--cache", default=os.path.join(HERE, ".cache", "aspirin_xtb"))
    p.add_argument("--frames", type=int, default=1500)
    p.add_argument("--every", type=int, default=20, help="MD steps (0.5 fs) between frames")
    p.add_argument("--equil", type=int, default=2000, help="equilibration steps (0.5 fs)")
    p.add_argument("--temperature", type=float, default=500.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--quick", action="store_true", help="2 frames, 5 steps apart, 10 steps equilibration")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.every, args.equil = 2, 5, 10

    import ase
    import ase.io


    t_start = time.time()
    frames, state = generate(args.frames, args.every, args.equil, args.seed, args.temperature, args.cache)
    # held-out test set: a seeded random subset of frames (MD17 practice)
    perm = np.random.default_rng(args.seed).permutation(len(frames))
    n_test = int(round(args.test_fraction * len(frames)))
    test_idx = set(perm[:n_test].tolist())
    out = {}
    for split in ("train", "test"):
        sel = [f for k, f in enumerate(frames) if (k in test_idx) == (split == "test")]
        path = f"{args.out}_{split}.xyz"
        ase.io.write(path + ".tmp", sel, format="extxyz")
        os.replace(path + ".tmp", path)
        out[split] = {"path": os.path.relpath(path, DATA), "structures": len(sel), "bytes": os.path.getsize(path),
                      "sha256": sha256_of(path)}
    prov = {
        "dataset": "aspirin_xtb",
        "method": "GFN2-xTB (tblite ASE calculator), Langevin MD (ASE), dt 0.5 fs, friction 0.01/fs",
        "parameters": {"frames": args.frames, "every_steps": args.every, "equilibration_steps": args.equil,
                       "temperature_K": args.temperature, "seed": args.seed, "test_fraction": args.test_fraction},
        "command": "python data/generators/aspirin_xtb.py" + (" --quick" if args.quick else ""),
        "versions": {"tblite": importlib.metadata.version("tblite"), "ase": ase.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "files": out, "wall_time_s_this_run": round(time.time() - t_start, 1),
        "relax_time_s": round(state.get("relax_time_s", 0.0), 1),
    }
    with open(f"{args.out}.provenance.json", "w") as fh:
        json.dump(prov, fh, indent=1)
    print(json.dumps(out, indent=1))
    print(f"done in {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
