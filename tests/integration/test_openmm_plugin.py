"""The native OpenMM plugin (openmm_plugin/, `equiformer.openmm.EquiformerForce`).

Energies and forces are compared with the project's reference, the ASE calculator
(`EquiformerCalculator`, its own neighbor list), on a real exported Equiformer model.
Skipped when the plugin library is not built (scripts/build_cpp.sh).
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before openmm (see equiformer.openmm.common)
openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from openmm_systems import periodic_positions  # noqa: E402
from package_variants import always_chunked, rewrite_metadata  # noqa: E402

pytestmark = pytest.mark.openmm

try:
    from equiformer.openmm.native import EquiformerForce, create_native_force, load_plugin
    load_plugin()
except ImportError as exc:  # pragma: no cover - depends on the build
    pytest.skip(f"native OpenMM plugin not available: {exc}", allow_module_level=True)

torch.set_num_threads(1)  # tiny systems on a shared 2-core machine

EV = 96.48533212331002  # kJ/mol per eV
SYMBOLS = ["O", "H", "H", "C", "H", "H", "H", "O", "C", "H"]
Z = {"H": 1, "C": 6, "O": 8}
CUTOFF_NM = 0.4
TOL = 1e-8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model
    torch.manual_seed(0)
    m = build_model({"preset": "tiny", "species": ["H", "C", "O"], "cutoff": 4.0}, dtype=torch.float64)
    path = str(tmp_path_factory.mktemp("plugin") / "model.pt")
    export_model(m, path, "float64")
    return path


_REFERENCES = {}


def ase_reference(model, symbols, pos_nm, box_nm=None):
    """(energy kJ/mol, forces kJ/mol/nm) from the ASE calculator; computed once per structure
    (the platforms are checked against the same one; a fresh calculator costs seconds of
    TorchScript profiling)."""
    from ase import Atoms
    from equiformer.calculator import EquiformerCalculator
    key = (model, tuple(symbols), np.asarray(pos_nm, dtype=np.float64).tobytes(),
           None if box_nm is None else np.asarray(box_nm, dtype=np.float64).tobytes())
    if key not in _REFERENCES:
        atoms = Atoms(symbols, positions=np.asarray(pos_nm) * 10.0)
        if box_nm is not None:
            atoms.set_cell(np.asarray(box_nm) * 10.0)
            atoms.set_pbc(True)
        atoms.calc = EquiformerCalculator(model=model)
        _REFERENCES[key] = (atoms.get_potential_energy() * EV, atoms.get_forces() * EV * 10.0)
    energy, forces = _REFERENCES[key]
    return energy, forces.copy()


def make_system(n, box=None, masses=None):
    system = openmm.System()
    for k in range(n):
        system.addParticle(1.0 if masses is None else masses[k])
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    return system


def evaluate(system, pos, platform="Reference", box=None):
    context = openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName(platform))
    if box is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    context.setPositions(pos)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def assert_close(energy, forces, ref_energy, ref_forces, tol=TOL):
    assert abs(energy - ref_energy) <= tol * abs(ref_energy), (energy, ref_energy)
    scale = np.abs(ref_forces).max()
    assert np.abs(forces - ref_forces).max() <= tol * scale, np.abs(forces - ref_forces).max() / scale


def molecule(seed=1, n=len(SYMBOLS)):
    """A compact random cluster (nm), atoms at least 0.09 nm apart."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        x = rng.random(3) * 0.45
        if all(np.linalg.norm(x - p) > 0.09 for p in pos):
            pos.append(x)
    return np.array(pos)


# OpenMM reduced triclinic boxes (nm): a general one, and one whose widths lie between 1 and
# 2 cutoffs, so that atoms interact with several images of each other
TRICLINIC = np.array([[1.1, 0.0, 0.0], [0.35, 0.95, 0.0], [-0.3, 0.25, 0.9]])
SMALL = np.array([[0.52, 0.0, 0.0], [0.2, 0.47, 0.0], [0.12, -0.2, 0.45]])


def box_widths(box):
    box = np.asarray(box)
    v = abs(np.linalg.det(box))
    return v / np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]), axis=1)


# --------------------------------------------------------------------------------------------
# agreement with the ASE calculator


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_molecule_matches_ase(model, platform):
    pos = molecule()
    system = make_system(len(SYMBOLS))
    force = EquiformerForce(model, SYMBOLS)
    assert isinstance(force, openmm.Force) and not force.usesPeriodicBoundaryConditions()
    system.addForce(force)
    energy, forces = evaluate(system, pos, platform)
    assert_close(energy, forces, *ase_reference(model, SYMBOLS, pos))


@pytest.mark.parametrize("box", [TRICLINIC, SMALL], ids=["triclinic", "small-triclinic"])
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_triclinic_box_matches_ase(model, box, platform):
    widths = box_widths(box)
    assert widths.min() >= CUTOFF_NM
    if box is SMALL:
        assert widths.max() < 2 * CUTOFF_NM  # several images of a neighbour inside the cutoff
    symbols = SYMBOLS[:8] if box is SMALL else SYMBOLS * 2
    pos = periodic_positions(box, len(symbols), 0.08)
    system = make_system(len(symbols), box)
    system.addForce(EquiformerForce(model, [Z[s] for s in symbols], periodic=True))
    energy, forces = evaluate(system, pos, platform)
    assert_close(energy, forces, *ase_reference(model, symbols, pos, box))


def test_topology_helper_and_openmm_ml(model):
    """create_native_force from a Topology, and openmm-ml's implementation='native'."""
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("MOL", chain)
    for k, s in enumerate(SYMBOLS):
        topology.addAtom(f"{s}{k}", app.Element.getBySymbol(s), residue)
    pos = molecule()
    ref = ase_reference(model, SYMBOLS, pos)
    system = make_system(len(SYMBOLS))
    force = create_native_force(model, topology)
    assert force.getAtomicNumbers() == [Z[s] for s in SYMBOLS] and force.getParticles() == []
    system.addForce(force)
    assert_close(*evaluate(system, pos), *ref)

    mlpotential = pytest.importorskip("openmmml")
    potential = mlpotential.MLPotential("equiformer", modelPath=model)
    ml_system = potential.createSystem(topology, implementation="native", removeCMMotion=False)
    assert ml_system.getNumForces() == 1
    assert EquiformerForce.cast(ml_system.getForce(0)).getModelFile() == os.path.abspath(model)
    assert_close(*evaluate(ml_system, pos), *ref)


# --------------------------------------------------------------------------------------------
# ML/MM, serialization, dynamics


def test_ml_subset(model):
    """The model sees only the selected particles; the others feel no force from it."""
    n = 14
    rng = np.random.default_rng(5)
    pos = np.concatenate([molecule(), rng.random((n - len(SYMBOLS), 3)) * 0.5 + 0.1])
    ml = [0, 3, 4, 7, 8, 9, 11, 13]
    ml_symbols = ["O", "C", "H", "O", "C", "H", "H", "C"]
    system = make_system(n)
    system.addForce(EquiformerForce(model, ml_symbols, particles=ml))
    energy, forces = evaluate(system, pos)
    ref_energy, ref_forces = ase_reference(model, ml_symbols, pos[ml])
    assert_close(energy, forces[ml], ref_energy, ref_forces)
    others = [k for k in range(n) if k not in ml]
    assert np.all(forces[others] == 0.0)

    # the same through the Topology helper (atoms=), with an MM force in another group
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    elements = ["N"] * n
    for k, s in zip(ml, ml_symbols):
        elements[k] = s
    for k, s in enumerate(elements):
        topology.addAtom(f"A{k}", app.Element.getBySymbol(s), residue)
    system = make_system(n)
    bond = openmm.HarmonicBondForce()
    bond.addBond(1, 2, 0.1, 1000.0)
    system.addForce(bond)
    system.addForce(create_native_force(model, topology, atoms=ml, force_group=3))
    context = openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pos)
    e3 = context.getState(getEnergy=True, groups={3}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert abs(e3 - ref_energy) <= TOL * abs(ref_energy)


def test_xml_round_trip(model):
    box = TRICLINIC
    symbols = SYMBOLS * 2
    pos = periodic_positions(box, len(symbols), 0.08)
    system = make_system(len(symbols), box)
    force = EquiformerForce(model, symbols, particles=list(range(len(symbols))), periodic=True,
                            precision="double", numThreads=1)
    force.setForceGroup(2)
    force.setName("ml")
    system.addForce(force)
    xml = openmm.XmlSerializer.serialize(system)
    assert 'type="EquiformerForce"' in xml and os.fspath(model) in xml
    copy = openmm.XmlSerializer.deserialize(xml)
    restored = EquiformerForce.cast(copy.getForce(0))
    assert restored.getModelFile() == model
    assert restored.getAtomicNumbers() == [Z[s] for s in symbols]
    assert restored.getParticles() == list(range(len(symbols)))
    assert restored.usesPeriodicBoundaryConditions() and restored.getPrecision() == "double"
    assert restored.getNumThreads() == 1 and restored.getDevice() == "cpu"
    assert restored.getForceGroup() == 2 and restored.getName() == "ml"
    assert openmm.XmlSerializer.serialize(copy) == xml
    e1, f1 = evaluate(system, pos)
    e2, f2 = evaluate(copy, pos)
    assert e1 == e2 and np.array_equal(f1, f2)


def test_settings_change_in_place(model):
    """The setters change the C++ force itself, also after System.addForce took it over: the
    System's copy (what a Context and the XML see) has the new settings."""
    system = make_system(3)
    force = EquiformerForce("elsewhere.pt", [1, 1, 1], periodic=True, precision="single", numThreads=2)
    force.setForceGroup(1)
    system.addForce(force)
    force.setModelFile(model)
    force.setAtomicNumbers([8, 1, 1])
    force.setParticles([2, 0, 1])
    force.setUsesPeriodicBoundaryConditions(False)
    force.setPrecision(None)
    force.setNumThreads(0)
    view = EquiformerForce.cast(system.getForce(0))
    assert (view.getModelFile(), view.getAtomicNumbers(), view.getParticles()) == (model, [8, 1, 1], [2, 0, 1])
    assert not view.usesPeriodicBoundaryConditions() and view.getPrecision() is None and view.getNumThreads() == 0
    assert view.getForceGroup() == 1 and view.getName() == "EquiformerForce" and view.getDevice() == "cpu"
    pos = molecule(n=3)
    energy, forces = evaluate(system, pos)
    ref_energy, ref_forces = ase_reference(model, ["O", "H", "H"], pos[[2, 0, 1]])
    assert_close(energy, forces[[2, 0, 1]], ref_energy, ref_forces)
    with pytest.raises(openmm.OpenMMException, match="number of threads"):
        force.setNumThreads(-1)
    with pytest.raises(TypeError, match="not an EquiformerForce"):
        EquiformerForce.cast(openmm.HarmonicBondForce())


def test_nve_energy_conservation(model):
    """Velocity Verlet conserves a shadow Hamiltonian: the total energy fluctuates by O(dt^2)
    without drift, *only if the forces are the exact gradient of the energy*. We check
    (1) the fluctuation at dt is far below the kinetic energy (< 1 %), and (2) halving dt
    divides it by ~4 (between 2.5 and 6.5): a force error (a missing image, a wrong unit, a
    neighbour-list bug) would give a fluctuation that does not shrink as dt^2."""
    masses = {"H": 1.008, "C": 12.011, "O": 15.999}
    pos = molecule(seed=3)
    spread = []
    for dt in (0.5e-3, 0.25e-3):  # ps
        system = make_system(len(SYMBOLS), masses=[masses[s] for s in SYMBOLS])
        system.addForce(EquiformerForce(model, SYMBOLS))
        integrator = openmm.VerletIntegrator(dt)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(pos)
        context.setVelocitiesToTemperature(300.0, 1)
        totals, kinetic = [], []
        for _ in range(int(round(0.025 / dt))):  # 25 fs
            integrator.step(1)
            state = context.getState(getEnergy=True)
            k = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
            totals.append(k + state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            kinetic.append(k)
        spread.append(np.ptp(totals))
        assert spread[-1] < 0.01 * np.mean(kinetic), (dt, spread[-1], np.mean(kinetic))
    assert 2.5 < spread[0] / spread[1] < 6.5, spread


# --------------------------------------------------------------------------------------------
# errors: raised when the Context is created (or by the Python helper), never a crash


def context_error(system, platform="Reference"):
    with pytest.raises(openmm.OpenMMException) as info:
        openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName(platform))
    return str(info.value)


def test_bad_model_files(model, tmp_path):
    system = make_system(3)
    system.addForce(EquiformerForce(str(tmp_path / "missing.pt"), ["O", "H", "H"]))
    assert "does not exist" in context_error(system)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    system = make_system(3)
    system.addForce(EquiformerForce(str(junk), ["O", "H", "H"]))
    assert "not an exported Equiformer model" in context_error(system, "CPU")

    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    system = make_system(3)
    system.addForce(EquiformerForce(str(plain), ["O", "H", "H"]))
    assert "not an exported Equiformer model" in context_error(system)

    with pytest.raises(Exception, match="does not exist|No such file|not found"):
        create_native_force(str(tmp_path / "missing.pt"), ["O", "H", "H"])


def test_bad_settings(model):
    system = make_system(3)
    system.addForce(EquiformerForce(model, [8, 1, 11]))
    message = context_error(system)
    assert "only knows the elements H C O" in message and "atomic number 11" in message

    system = make_system(3)
    system.addForce(EquiformerForce(model, ["O", "H", "H"], precision="single"))
    assert "exported in float64" in context_error(system)
    with pytest.raises(openmm.OpenMMException, match="unknown precision"):
        EquiformerForce(model, ["O", "H", "H"], precision="half")

    system = make_system(3)
    system.addForce(EquiformerForce(model, ["O", "H"]))
    assert "2 atomic numbers given for 3 particles" in context_error(system)

    system = make_system(3)
    system.addForce(EquiformerForce(model, ["O", "H"], particles=[0, 5]))
    assert "outside the System" in context_error(system)

    with pytest.raises(ValueError, match="only knows the elements"):
        create_native_force(model, ["O", "H", "Na"])
    with pytest.raises(ValueError, match="precision"):
        create_native_force(model, ["O", "H", "H"], precision="single")


def test_box_too_small(model):
    box = np.diag([1.0, 1.0, 0.35])  # thinner than the 0.4 nm cutoff
    system = make_system(3, box)
    system.addForce(EquiformerForce(model, ["O", "H", "H"], periodic=True))
    assert "periodic box too small" in context_error(system)
    with pytest.raises(ValueError, match="periodic box too small"):
        create_native_force(model, ["O", "H", "H"], periodic=True, box_vectors=box)

    # a box that becomes too small during the simulation: an exception, not a crash
    system = make_system(3, np.eye(3))
    system.addForce(EquiformerForce(model, ["O", "H", "H"], periodic=True))
    context = openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(molecule(n=3))
    context.getState(getEnergy=True)
    context.setPeriodicBoxVectors(openmm.Vec3(1, 0, 0), openmm.Vec3(0, 1, 0), openmm.Vec3(0, 0, 0.3))
    with pytest.raises(openmm.OpenMMException, match="periodic box too small"):
        context.getState(getEnergy=True)

    # exploded coordinates are reported, not crashed on
    context.setPeriodicBoxVectors(openmm.Vec3(1, 0, 0), openmm.Vec3(0, 1, 0), openmm.Vec3(0, 0, 1))
    context.setPositions(np.array([[0, 0, 0], [np.nan, 0, 0], [0.1, 0, 0]]))
    with pytest.raises(openmm.OpenMMException, match="NaN|non-finite"):
        context.getState(getEnergy=True)


def test_openmm_ml_mixed_system(model):
    """createMixedSystem(implementation='native') equals the PythonForce route's system."""
    mlpotential = pytest.importorskip("openmmml")
    if not hasattr(openmm, "PythonForce"):
        pytest.skip("no openmm.PythonForce to compare with")
    elements = ["O", "H", "H", "C", "O", "H"]
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for k, s in enumerate(elements):
        topology.addAtom(f"A{k}", app.Element.getBySymbol(s), residue)
    mm = make_system(len(elements), masses=[app.Element.getBySymbol(s).mass for s in elements])
    nonbonded = openmm.NonbondedForce()
    for k in range(len(elements)):
        nonbonded.addParticle(0.1 * (-1) ** k, 0.3, 0.5)
    mm.addForce(nonbonded)
    pos = molecule(seed=4, n=len(elements))
    potential = mlpotential.MLPotential("equiformer", modelPath=model)
    energies = []
    for implementation in ("native", "pythonforce"):
        system = potential.createMixedSystem(topology, mm, [0, 1, 2], implementation=implementation)
        energies.append(evaluate(system, pos))
    assert abs(energies[0][0] - energies[1][0]) <= TOL * abs(energies[1][0])
    assert np.abs(energies[0][1] - energies[1][1]).max() <= TOL * np.abs(energies[1][1]).max()


def test_energy_only_torchforce_after_a_native_context(model):
    """The native runtime runs its calls on TorchScript's legacy executor and leaves the
    process's setting as it found it: openmm-torch's energy-only module (whose backward fails
    under the legacy executor) still works after a native Context has computed forces."""
    from equiformer.openmm.common import import_openmmtorch
    try:
        import_openmmtorch()
    except ImportError as exc:
        pytest.skip(f"openmm-torch not available: {exc}")
    from equiformer.openmm.torchforce import create_torch_force

    pos = molecule(seed=2)
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for k, s in enumerate(SYMBOLS):
        topology.addAtom(f"A{k}", app.Element.getBySymbol(s), residue)
    # torch's default (profiling) executor, whatever earlier tests in this process set
    executor, mode = torch._C._jit_set_profiling_executor(True), torch._C._jit_set_profiling_mode(True)
    try:
        results = []
        for force in (EquiformerForce(model, SYMBOLS), create_torch_force(model, topology, outputs_forces=False)):
            system = make_system(len(SYMBOLS))
            system.addForce(force)
            results.append(evaluate(system, pos))
        assert torch._C._jit_set_profiling_executor(True), "the native runtime left the legacy executor set"
    finally:
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(mode)
    assert abs(results[0][0] - results[1][0]) <= TOL * abs(results[0][0])
    assert np.abs(results[0][1] - results[1][1]).max() <= 1e-6 * np.abs(results[0][1]).max()


# --------------------------------------------------------------------------------------------
# runtime checks: a box too small only in the System, close atoms, damaged model files

CU_MODEL = str(Path(__file__).resolve().parents[2] / "models" / "cu" / "model.pt")
TWO_CU = np.array([[0.05, 0.05, 0.05], [0.17, 0.15, 0.1]])  # nm, 0.12 nm apart


@pytest.fixture(scope="module")
def pair45(tmp_path_factory):
    """The analytic pair model (tests/analytic_models.py) with the Cu model's 4.5 A cutoff: fast,
    with a closed-form reference."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from analytic_models import write_pair_model
    return write_pair_model(str(tmp_path_factory.mktemp("plugin-pair") / "pair45.pt"), cutoff=4.5)


def cubic(edge):
    return [openmm.Vec3(edge, 0, 0), openmm.Vec3(0, edge, 0), openmm.Vec3(0, 0, edge)]


def test_default_box_too_small_stops_before_a_step(pair45):
    """EquiformerForce(periodic=True) with the box only in the System's default vectors: 0.4 nm
    (< the 0.45 nm cutoff) raises an OpenMMException naming the problem at the latest at the
    first step; a 1.0 nm box gives the pair model's periodic energy."""
    from analytic_models import pair_reference
    for edge in (1.0, 0.4):
        system = make_system(2, np.eye(3) * edge, masses=[63.546] * 2)
        system.addForce(EquiformerForce(pair45, ["Cu", "Cu"], periodic=True))
        if edge == 1.0:
            integrator = openmm.VerletIntegrator(5e-4)
            context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
            context.setPositions(TWO_CU + [1.0, 0.0, 0.0])  # an image: the periodic box is used
            integrator.step(1)
            context.setPositions(TWO_CU + [1.0, 0.0, 0.0])
            energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            ref = pair_reference(["Cu", "Cu"], TWO_CU * 10, np.eye(3) * 10.0, 4.5)
            assert abs(energy - ref["energy"] * EV) <= TOL * abs(ref["energy"] * EV)
        else:
            with pytest.raises(openmm.OpenMMException,
                               match=r"periodic box too small.*0\.4 nm, smaller than the model cutoff 0\.45 nm"):
                integrator = openmm.VerletIntegrator(5e-4)
                context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
                context.setPositions(TWO_CU)
                integrator.step(1)


def test_openmm_ml_native_default_box_too_small(pair45):
    """openmm-ml implementation='native', box-less Topology + periodic MM System: the System's
    default box is checked, 0.4 nm refused when the mixed system is built, 1.0 nm accepted."""
    mlpotential = pytest.importorskip("openmmml")
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for k in range(3):
        topology.addAtom(f"Cu{k}", app.Element.getBySymbol("Cu"), residue)
    potential = mlpotential.MLPotential("equiformer", modelPath=pair45, implementation="native")
    systems = {}
    for edge in (0.4, 1.0):
        mm = make_system(3, np.eye(3) * edge, masses=[63.546] * 3)
        nonbonded = openmm.NonbondedForce()
        nonbonded.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
        nonbonded.setCutoffDistance(0.19)
        for _ in range(3):
            nonbonded.addParticle(0.0, 0.2, 0.0)
        mm.addForce(nonbonded)
        if edge == 0.4:
            with pytest.raises(ValueError, match=r"periodic box too small.*0\.4 nm.*cutoff 0\.45 nm"):
                potential.createMixedSystem(topology, mm, [0, 1])
        else:
            systems[edge] = potential.createMixedSystem(topology, mm, [0, 1])
    forces = [f for f in systems[1.0].getForces() if f.getName() == "EquiformerForce"]
    assert len(forces) == 1 and EquiformerForce.cast(forces[0]).usesPeriodicBoundaryConditions()


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_close_atoms_warning_once(pair45, platform):
    """Atoms 0.02 nm apart (model min_distance 0.05 nm): 'EquiformerForce: warning: two atoms
    are' on stderr exactly once over 3 steps (the atoms stay that close), none for a normal
    geometry, once more for a new Context."""
    from close_atoms_run import run_split

    distances, parts = run_split("native", pair45, platform)
    assert distances["close"] < 0.05 and distances["normal"] > 0.05
    message = "EquiformerForce: warning: two atoms are"
    assert parts["normal"].count("two atoms are") == 0, parts["normal"]
    assert parts["close"].count(message) == 1 and parts["close"].count("two atoms are") == 1, parts["close"]
    assert "two atoms are 0.02 nm apart" in parts["close"]
    assert parts["close-new-context"].count(message) == 1, parts["close-new-context"]


def test_damaged_model_file(tmp_path):
    """A copy of models/cu/model.pt with one byte flipped inside a tensor's data: Context
    creation raises an OpenMMException with 'is damaged' naming the entry (Reference and CPU),
    create_native_force refuses it too; the undamaged copy gives a Context."""
    import shutil
    if not os.path.isfile(CU_MODEL):
        pytest.skip(f"{CU_MODEL} missing")
    good, damaged = str(tmp_path / "good.pt"), str(tmp_path / "damaged.pt")
    shutil.copyfile(CU_MODEL, good)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from damaged_files import flip_bit

    entry = flip_bit(CU_MODEL, damaged)

    for platform in ("Reference", "CPU"):
        system = make_system(2)
        system.addForce(EquiformerForce(damaged, ["Cu", "Cu"]))
        message = context_error(system, platform)
        assert "is damaged" in message and damaged in message and entry in message, message
    with pytest.raises(ValueError, match="is damaged"):
        create_native_force(damaged, ["Cu", "Cu"])

    system = make_system(2)
    system.addForce(EquiformerForce(good, ["Cu", "Cu"]))
    openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName("Reference"))


# --------------------------------------------------------------------------------------------
# a compiled AOTInductor package (.pt2): the TorchScript file's numbers, and its refusals


def test_compiled_package_equals_torchscript(compiled_pair, tmp_path):
    """EquiformerForce with the .pt2 package gives the .pt file's energy and forces (same
    model, float64: 1e-10 relative), periodic and for a single atom (no edge), by one graph
    and by its layer entries' chunked route (a copy whose threshold sends every graph there)."""
    models = {"pt": compiled_pair["pt"], "pt2": compiled_pair["pt2"],
              "chunked": always_chunked(compiled_pair["pt2"], str(tmp_path / "chunked.pt2"))}
    cell = np.eye(3) * 0.72  # a rattled fcc Cu cell (32 atoms, 7.2 A)
    rng = np.random.default_rng(1)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pos = np.array([(b + np.array(k)) * 0.36 for k in np.ndindex(2, 2, 2) for b in base])
    pos += rng.normal(scale=0.001, size=pos.shape)
    for positions, box in ((pos, cell), (np.zeros((1, 3)), None)):
        results = []
        for path in models.values():
            system = make_system(len(positions), box)
            system.addForce(EquiformerForce(path, ["Cu"] * len(positions), periodic=box is not None))
            results.append(evaluate(system, positions, "CPU", box))
        (e_pt, f_pt) = results[0]
        for e_pt2, f_pt2 in results[1:]:
            assert abs(e_pt2 - e_pt) <= 1e-10 * abs(e_pt), (e_pt2, e_pt)
            assert np.abs(f_pt2 - f_pt).max() <= 1e-10 * max(1.0, np.abs(f_pt).max())


def test_compiled_package_refusals(compiled_pair, tmp_path):
    """A package without the format metadata, one compiled with another torch and one for
    another CPU family: clear errors when the Context is created, no crash."""
    cases = {
        "no-format": (lambda m: m.pop("format"), "is a .pt2 package but not an exported Equiformer model"),
        "old-torch": (lambda m: m.update(torch_version="1.0.0"),
                      "was compiled with torch 1.0.0, this runtime uses torch"),
        "other-cpu": (lambda m: m.update(cpu_capability="SVE256"), "compile the package on the CPU family"),
    }
    for name, (edit, needle) in cases.items():
        path = rewrite_metadata(compiled_pair["pt2"], str(tmp_path / f"{name}.pt2"), lambda m: (edit(m), m)[1])
        system = make_system(2)
        system.addForce(EquiformerForce(path, ["Cu", "Cu"]))
        message = context_error(system)
        assert needle in message and path in message, message
        if name == "no-format":
            assert "equiformer-export CHECKPOINT.pt MODEL.pt2" in message, message


# the CUDA platform kernel (libEquiformerOpenMMCUDA.so): built here, loadable only with a GPU
# driver; without one every way in fails with a message naming the cause, never a crash

CUDA_LIBRARY = Path(load_plugin()).with_name("libEquiformerOpenMMCUDA.so")
HAS_CUDA_DRIVER = any(openmm.Platform.getPlatform(i).getName() == "CUDA" for i in range(openmm.Platform.getNumPlatforms()))


def test_cuda_plugin_built():
    """The CUDA kernel library is built beside the main one (where the openmm-cuda-12 wheel is
    installed), with its version sidecar, and links OpenMM's CUDA platform and the main plugin."""
    import json
    import subprocess
    try:
        import openmm.version
        has_openmm_cuda = (Path(openmm.version.openmm_library_path) / "plugins" / "libOpenMMCUDA.so").is_file()
    except Exception:  # pragma: no cover
        has_openmm_cuda = False
    if not has_openmm_cuda:
        pytest.skip("OpenMM's CUDA platform (pip install openmm-cuda-12) is not installed")
    assert CUDA_LIBRARY.is_file(), f"{CUDA_LIBRARY} was not built (scripts/build_cpp.sh)"
    info = json.loads(CUDA_LIBRARY.with_suffix(".json").read_text())
    assert info["plugin"] == "openmm-cuda" and info["torch"] == torch.__version__, info
    needed = subprocess.run(["readelf", "-d", str(CUDA_LIBRARY)], capture_output=True, text=True).stdout
    for lib in ("libEquiformerOpenMM.so", "libOpenMMCUDA.so", "libtorch_cuda.so"):
        assert f"[{lib}]" in needed, needed


@pytest.mark.skipif(HAS_CUDA_DRIVER, reason="this machine has OpenMM's CUDA platform")
def test_cuda_plugin_load_fails_cleanly():
    """Loading the CUDA kernel without a GPU driver: an exception naming the missing library
    in a fresh process (which must exit normally, not on a signal), and the remembered reason."""
    import subprocess
    if not CUDA_LIBRARY.is_file():
        pytest.skip("the CUDA kernel library is not built")
    script = (
        "import torch, openmm, sys\n"
        f"openmm.Platform.loadPluginLibrary({str(Path(load_plugin()))!r})\n"
        "try:\n"
        f"    openmm.Platform.loadPluginLibrary({str(CUDA_LIBRARY)!r})\n"
        "except Exception as exc:\n"
        "    print('REFUSED:', exc)\n"
        "else:\n"
        "    print('LOADED')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert "REFUSED:" in run.stdout and "libcuda.so" in run.stdout, run.stdout + run.stderr[-2000:]

    from equiformer.openmm.native import cuda_plugin_status
    available, detail = cuda_plugin_status()
    assert not available and "libcuda.so" in detail, detail


@pytest.mark.skipif(HAS_CUDA_DRIVER, reason="this machine has OpenMM's CUDA platform")
def test_cuda_platform_unavailable_message():
    """Asking for the CUDA platform here: OpenMM's own error, and the helper's clear one."""
    from equiformer.openmm.native import check_platform, cuda_platform
    with pytest.raises(Exception) as info:
        openmm.Platform.getPlatformByName("CUDA")
    assert "CUDA" in str(info.value)
    with pytest.raises(RuntimeError) as info:
        cuda_platform()
    message = str(info.value)
    assert message.startswith("the Equiformer CUDA kernel could not be loaded: "), message
    assert "no CUDA platform here" in message and "use the CPU or Reference platform" in message, message
    with pytest.raises(RuntimeError, match="Equiformer CUDA kernel"):
        check_platform("CUDA")
    check_platform("Reference")  # other platforms pass
    check_platform(openmm.Platform.getPlatformByName("CPU"))


@pytest.mark.skipif(not HAS_CUDA_DRIVER, reason="needs a GPU and OpenMM's CUDA platform")
def test_cuda_platform_matches_reference(model):  # pragma: no cover - GPU machines only
    """On a GPU: the CUDA kernel (positions, neighbours, network and forces on the device) gives
    the Reference platform's energy and forces, in every OpenMM precision, periodic or not."""
    from equiformer.openmm.native import cuda_platform
    platform = cuda_platform()
    cases = [(molecule(), None), (periodic_positions(TRICLINIC, 12, 0.08), TRICLINIC),
             (periodic_positions(SMALL, 6, 0.08), SMALL)]
    for pos, box in cases:
        system = make_system(len(pos), box=box)
        system.addForce(EquiformerForce(model, [SYMBOLS[k % len(SYMBOLS)] for k in range(len(pos))],
                                        periodic=box is not None))
        ref = evaluate(system, pos, "Reference", box=box)
        for precision in ("double", "mixed", "single"):
            context = openmm.Context(system, openmm.VerletIntegrator(1e-4), platform, {"Precision": precision})
            if box is not None:
                context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
            context.setPositions(pos)
            state = context.getState(getEnergy=True, getForces=True)
            energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            tol = 1e-9 if precision == "double" else 1e-4
            assert abs(energy - ref[0]) <= tol * (1 + abs(ref[0])), (precision, box, energy, ref[0])
            assert np.abs(forces - ref[1]).max() <= tol * (1 + np.abs(ref[1]).max()), (precision, box)
