"""Structures, comparisons and engine runners of the GPU suite (tests/gpu/conftest.py)."""

import os
import subprocess
from typing import Dict, List, Sequence

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
LMP = os.environ.get("EQUIFORMER_LMP") or os.path.join(VENV_BIN, "lmp")
MPIRUN = os.environ.get("EQUIFORMER_MPIRUN") or os.path.join(VENV_BIN, "mpirun")
MASSES = {"H": 1.008, "C": 12.011, "O": 15.999, "Cu": 63.546}
SPECIES = ("H", "C", "O", "Cu")
NKTV2P_METAL = 1.6021765e6  # LAMMPS' pressure conversion (metal units)
EV_KJ = 96.48533212331002  # kJ/mol per eV
# float64 on the device against the CPU (issue 15); float32: the two differ by rounding only
TOL = {"float64": 1e-10, "float32": 1e-4}


def triclinic_cell(n: int = 32, seed: int = 3, scale: float = 1.0):
    """(symbols, positions [n,3] A, cell [3,3] A rows) of a jittered grid in a triclinic cell in
    LAMMPS' restricted form, species H C O Cu in turn, atoms >~1.2 A apart."""
    rng = np.random.default_rng(seed)
    cell = np.array([[8.2, 0.0, 0.0], [1.3, 7.6, 0.0], [-0.9, 1.1, 7.9]]) * scale
    k = int(np.ceil(n ** (1 / 3)))
    grid = np.array([(a, b, c) for a in range(k) for b in range(k) for c in range(k)][:n], dtype=float)
    frac = (grid + 0.5 + rng.uniform(-0.15, 0.15, grid.shape)) / k
    return [SPECIES[i % 4] for i in range(n)], frac @ cell, cell


def molecule(seed: int = 1, n: int = 10):
    """(symbols, positions A) of a compact open cluster, atoms >= 1.0 A apart."""
    rng = np.random.default_rng(seed)
    pos: List[np.ndarray] = []
    while len(pos) < n:
        x = rng.random(3) * 4.5
        if all(np.linalg.norm(x - p) > 1.0 for p in pos):
            pos.append(x)
    return [SPECIES[i % 4] for i in range(n)], np.array(pos)


def assert_parity(got, ref, tol: float, what: str) -> None:
    """max |got - ref| <= tol * max |ref| (relative to the quantity's scale)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    if ref.size == 0:
        return
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(got - ref).max())
    assert err <= tol * scale, f"{what}: device differs from the CPU by {err:.3g} (relative {err / scale:.3g}, " \
                               f"tolerance {tol:g})"


# ------------------------------------------------------------------------------------- LAMMPS


def lammps_plugin_missing():
    """Why LAMMPS cannot be run here (None: it can)."""
    from equiformer import lammps

    if not (os.path.isfile(LMP) and os.access(LMP, os.X_OK)):
        return f"no lmp at {LMP} (set EQUIFORMER_LMP)"
    if not os.path.isfile(lammps.plugin_path()):
        return f"LAMMPS plugin not built at {lammps.plugin_path()} (scripts/build_cpp.sh, or EQUIFORMER_BUILD_DIR)"
    return None


def write_data(path: str, symbols: Sequence[str], positions: np.ndarray, cell: np.ndarray,
               types: Sequence[str] = SPECIES) -> None:
    c = np.asarray(cell).tolist()
    lines = ["LAMMPS data file (tests/gpu)", "", f"{len(symbols)} atoms", f"{len(types)} atom types",
             f"0.0 {c[0][0]!r} xlo xhi", f"0.0 {c[1][1]!r} ylo yhi", f"0.0 {c[2][2]!r} zlo zhi",
             f"{c[1][0]!r} {c[2][0]!r} {c[2][1]!r} xy xz yz", "", "Masses", ""]
    lines += [f"{t + 1} {MASSES[s]}" for t, s in enumerate(types)]
    lines += ["", "Atoms # atomic", ""]
    for i, (s, p) in enumerate(zip(symbols, np.asarray(positions).tolist())):
        lines.append(f"{i + 1} {types.index(s) + 1} {p[0]!r} {p[1]!r} {p[2]!r}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_lammps(folder, script: str, nprocs: int = 1, timeout: float = 300) -> str:
    """Run `script` in `folder` with `nprocs` MPI ranks; its screen output."""
    with open(os.path.join(folder, "in.lmp"), "w") as f:
        f.write(script)
    cmd = [LMP, "-in", "in.lmp", "-log", "none"]
    if nprocs > 1:
        cmd = [MPIRUN, "-np", str(nprocs)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"LAMMPS failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def lammps_header(pair_style: str, model: str) -> str:
    return ("units metal\natom_style atomic\nboundary p p p\nnewton on\nread_data data.lmp\n"
            f"pair_style {pair_style}\npair_coeff * * {model} {' '.join(SPECIES)}\n")


LAMMPS_SINGLE_POINT = (
    "compute pe all pe/atom\ncompute vir all pressure NULL virial\n"
    "dump d all custom 1 out.dump id fx fy fz c_pe\ndump_modify d sort id format float %.17g\n"
    "run 0\n"
    'print "RESULT $(pe:%.17g) $(vol:%.17g) $(c_vir[1]:%.17g) $(c_vir[2]:%.17g) $(c_vir[3]:%.17g) '
    '$(c_vir[4]:%.17g) $(c_vir[5]:%.17g) $(c_vir[6]:%.17g)"\n'
)


def lammps_single_point(folder, pair_style: str, model: str, nprocs: int = 1) -> Dict[str, np.ndarray]:
    """Energy, per-atom energies, forces and virial (eV, A; Voigt xx yy zz xy xz yz) of the
    data.lmp in `folder`, and the screen output."""
    out = run_lammps(folder, lammps_header(pair_style, model) + LAMMPS_SINGLE_POINT, nprocs)
    values = [float(v) for v in next(l for l in out.splitlines() if l.startswith("RESULT ")).split()[1:]]
    with open(os.path.join(folder, "out.dump")) as f:
        lines = f.read().splitlines()
    start = lines.index(next(l for l in lines if l.startswith("ITEM: ATOMS"))) + 1
    table = np.array([[float(v) for v in l.split()] for l in lines[start:] if l.strip()])
    return {"energy": np.array(values[0]), "energies": table[:, 4], "forces": table[:, 1:4],
            "virial": np.array(values[2:8]) * values[1] / NKTV2P_METAL, "stdout": out}


def lammps_nve(folder, pair_style: str, model: str, steps: int, nprocs: int = 1) -> np.ndarray:
    """Total and potential energy (eV) after every step of an NVE run (600 K, 0.5 fs)."""
    script = (lammps_header(pair_style, model)
              + "velocity all create 600 87287 mom yes rot no\nfix nve all nve\ntimestep 0.0005\n"
              + 'fix p all print 1 "ETOT $(etotal:%.17g) $(pe:%.17g)" screen yes\nthermo 1000\n'
              + f"run {steps}\n")
    out = run_lammps(folder, script, nprocs)
    rows = [[float(v) for v in l.split()[1:]] for l in out.splitlines() if l.startswith("ETOT ")]
    return np.array(rows)


# ------------------------------------------------------------------------------------- OpenMM


def platform_for(device: str) -> str:
    """The OpenMM platform that runs on the device under test (the CPU one for the dry run)."""
    return "CPU" if device == "cpu" else "CUDA"


def platform_or_skip(name: str):
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name not in names:
        failures = [f for f in openmm.Platform.getPluginLoadFailures() if name.lower() in f.lower()]
        pytest.skip(f"OpenMM has no {name} platform here (platforms {names}; "
                    f"{failures[0] if failures else 'pip install openmm-cuda-12'})")
    return openmm.Platform.getPlatformByName(name)


def platform_properties(name: str) -> Dict[str, str]:
    """Double precision where a platform has a choice (CUDA defaults to single)."""
    return {"Precision": "double"} if name in ("CUDA", "OpenCL") else ({"Threads": "2"} if name == "CPU" else {})


def topology(symbols: Sequence[str], box_nm=None):
    import openmm
    from openmm import app, unit

    top = app.Topology()
    residue = top.addResidue("MOL", top.addChain())
    for k, s in enumerate(symbols):
        top.addAtom(f"{s}{k}", app.Element.getBySymbol(s), residue)
    if box_nm is not None:
        top.setPeriodicBoxVectors([openmm.Vec3(*row) for row in np.asarray(box_nm)] * unit.nanometer)
    return top


def system_with(force, symbols: Sequence[str], box_nm=None):
    import openmm
    from openmm import app

    system = openmm.System()
    for s in symbols:
        system.addParticle(app.Element.getBySymbol(s).mass)
    if box_nm is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(box_nm)])
    system.addForce(force)
    return system


def openmm_evaluate(system, positions_nm, platform: str, box_nm=None):
    """(energy kJ/mol, forces kJ/mol/nm) of one configuration."""
    import openmm
    from openmm import unit

    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName(platform),
                             platform_properties(platform))
    if box_nm is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(box_nm)])
    context.setPositions(np.asarray(positions_nm))
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def openmm_nve(system, positions_nm, platform: str, dt_fs: float, total_fs: float, box_nm=None):
    """(spread of the total energy, mean kinetic energy), kJ/mol, of a Verlet run at 300 K."""
    import openmm
    from openmm import unit

    integrator = openmm.VerletIntegrator(dt_fs * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform),
                             platform_properties(platform))
    if box_nm is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(box_nm)])
    context.setPositions(np.asarray(positions_nm))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    totals, kinetic = [], []
    for _ in range(int(round(total_fs / dt_fs))):
        integrator.step(1)
        st = context.getState(getEnergy=True)
        k = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        totals.append(k + st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        kinetic.append(k)
    return float(np.ptp(totals)), float(np.mean(kinetic))
