"""Committee files in OpenMM (issue 16): every route runs the committee mean, and
`DeviationReporter` writes the model deviation of the members, halting above a threshold.

References are independent of the package's committee code: the analytic pair committee's
members in closed form (`analytic_models.committee_reference`) and the spec's deviation
formulas written again in NumPy (`analytic_models.model_deviation`).
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before openmm (see equiformer.openmm.common)
openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analytic_models import (DEVIATION_COLUMNS, committee_reference, model_deviation,  # noqa: E402
                             write_pair_committee, write_pair_model)
from openmm_systems import make_system, make_topology, periodic_positions  # noqa: E402

from equiformer.openmm import (DeviationReporter, ModelDeviationError, create_python_force,  # noqa: E402
                               create_torch_force)
from equiformer.units import energy_factor  # noqa: E402

pytestmark = pytest.mark.openmm

torch.set_num_threads(1)  # tiny systems on a shared 2-core machine

EV = energy_factor("eV", "kJ/mol")
OFFSETS = [0.3, -0.1, 0.2, 0.6]  # each member's energy offset (eV): the file's is their mean
HEADER = ("#       step         max_devi_v         min_devi_v         avg_devi_v         max_devi_f"
          "         min_devi_f         avg_devi_f             devi_e")

# a cluster in vacuum and a triclinic box (Angstrom; cutoff 3 A, every box width > 3 A)
CLUSTER = (["Cu", "Cu", "O", "C", "H", "Cu", "O", "H"],
           np.array([[0.0, 0.0, 0.0], [2.1, 0.3, 0.1], [0.9, 1.8, 0.4], [1.2, 0.5, 1.9], [-1.0, 0.8, 0.6],
                     [2.6, 2.2, 1.3], [-0.4, -1.5, 1.1], [3.5, 0.4, 1.8]]), None)
BOX = np.array([[7.0, 0.0, 0.0], [2.0, 6.5, 0.0], [-1.5, 1.5, 6.8]])


def _box_structure(n=16, seed=3):
    symbols = [("Cu", "O", "C", "Cu")[k % 4] for k in range(n)]
    return symbols, periodic_positions(BOX, n, 1.6, seed), BOX


PERIODIC = _box_structure()


def _wrap(pos, cell):
    if cell is None:
        return pos
    frac = pos @ np.linalg.inv(cell)
    return (frac - np.floor(frac)) @ cell


def members(symbols, pos_a, cell_a):
    """The members' closed-form outputs (eV, Angstrom) of the committee file."""
    return committee_reference(symbols, _wrap(pos_a, cell_a), cell_a, cutoff=3.0, size=4, energy_offsets=OFFSETS)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("committee-openmm")
    return {
        "committee": write_pair_committee(str(d / "committee.pt"), size=4, energy_offsets=OFFSETS),
        # the same members in nm and kcal/mol: the reporter still writes eV and Angstrom
        "committee-nm": write_pair_committee(str(d / "committee-nm.pt"), size=4, cutoff=0.3, length_unit="nm",
                                             energy_unit="kcal/mol"),
        "single": write_pair_model(str(d / "single.pt")),
    }


def topology(symbols, cell_a=None):
    return make_topology(symbols, None if cell_a is None else cell_a / 10.0)


def system_for(symbols, cell_a=None):
    return make_system(symbols, None if cell_a is None else cell_a / 10.0)


def _native(path, top, atoms=None):
    from equiformer.openmm.native import create_native_force
    return create_native_force(path, top, atoms=atoms)


def _mlpotential(implementation):
    def create(path, top, atoms=None):  # a whole System (openmm-ml makes it)
        mlpotential = pytest.importorskip("openmmml")
        return mlpotential.MLPotential("equiformer", modelPath=path).createSystem(top, implementation=implementation)
    return create


def _have_native():
    try:
        from equiformer.openmm.native import load_plugin
        load_plugin()
        return True
    except ImportError:
        return False


def _have_torchforce():
    try:
        from equiformer.openmm.common import import_openmmtorch
        import_openmmtorch()
        return True
    except ImportError:
        return False


def _route(name, create, needs):
    reasons = {"torchforce": (_have_torchforce, "openmm-torch missing"),
               "pythonforce": (lambda: hasattr(openmm, "PythonForce"), "no openmm.PythonForce"),
               "native": (_have_native, "native plugin not built (scripts/build_cpp.sh)")}
    available, why = reasons[needs]
    return pytest.param(create, id=name, marks=pytest.mark.skipif(not available(), reason=why))


ROUTES = [
    _route("torchforce", create_torch_force, "torchforce"),
    _route("pythonforce", create_python_force, "pythonforce"),
    _route("native", _native, "native"),
    _route("openmm-ml-torchforce", _mlpotential("torchforce"), "torchforce"),
    _route("openmm-ml-native", _mlpotential("native"), "native"),
]


def simulation_with(force, symbols, pos_a, cell_a, integrator=None, extra=0):
    """A Simulation of the atoms (plus EXTRA free particles after them) with FORCE (or the
    System a route made), on Reference."""
    top = topology(list(symbols) + ["N"] * extra, cell_a)
    if isinstance(force, openmm.System):
        system = force
    else:
        system = system_for(list(symbols) + ["N"] * extra, cell_a)
        system.addForce(force)
    integrator = integrator or openmm.VerletIntegrator(0.5 * unit.femtosecond)
    sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    positions = np.concatenate([pos_a, 10.0 + np.arange(3 * extra).reshape(extra, 3)]) if extra else pos_a
    sim.context.setPositions(positions / 10.0)
    if cell_a is not None:
        sim.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in cell_a / 10.0])
    return sim


def energy_forces(sim):
    state = sim.context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


@pytest.mark.parametrize("create", ROUTES)
@pytest.mark.parametrize("structure", [CLUSTER, PERIODIC], ids=["cluster", "triclinic"])
def test_every_route_runs_the_committee_mean(files, create, structure):
    symbols, pos, cell = structure
    sim = simulation_with(create(files["committee"], topology(symbols, cell)), symbols, pos, cell)
    sim.step(2)  # the extra member outputs go through the integrator (TorchForce: a frozen module)
    state = sim.context.getState(getPositions=True)
    pos_now = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    energy, forces = energy_forces(sim)
    ref = members(symbols, pos_now, cell)
    assert energy == pytest.approx(ref["energy"] * EV, rel=1e-10)  # the mean offset included
    np.testing.assert_allclose(forces, ref["forces"] * EV * 10.0, rtol=0, atol=1e-10 * np.abs(ref["forces"]).max()
                               * EV * 10.0)


def _record(sim, reporter, steps):
    """Run STEPS with REPORTER, keeping each report's positions (A) and full-precision values."""
    seen = []

    class Recorder:  # reports right after REPORTER, at the same steps
        def describeNextReport(self, simulation):
            return reporter.describeNextReport(simulation)

        def report(self, simulation, state):
            seen.append((simulation.currentStep, state.getPositions(asNumpy=True).value_in_unit(unit.angstrom),
                         dict(reporter.latest)))

    sim.reporters.extend([reporter, Recorder()])
    sim.step(steps)
    return seen


def _lines(path):
    text = Path(path).read_text().splitlines()
    return text, np.array([[float(v) for v in line.split()] for line in text if not line.startswith("#")])


@pytest.mark.parametrize("create", ROUTES)
def test_deviation_file_matches_reference(files, create, tmp_path):
    symbols, pos, cell = PERIODIC
    sim = simulation_with(create(files["committee"], topology(symbols, cell)), symbols, pos, cell)
    path = tmp_path / "devi.out"
    reporter = DeviationReporter(str(path), 3)
    seen = _record(sim, reporter, 7)
    reporter.close()
    assert [step for step, _, _ in seen] == [3, 6]
    text, table = _lines(path)
    assert text[1] == HEADER and "eV/Angstrom" in text[0] and sum(line.startswith("#") for line in text) == 2
    assert all(len(line) == 12 + 19 * 7 for line in text[2:])
    for row, (step, pos_a, values) in zip(table, seen):
        ref_members = members(symbols, pos_a, cell)
        ref = model_deviation(ref_members["member_forces"], ref_members["member_virials"],
                              ref_members["member_energies"])
        assert ref["max_devi_f"] > 1e-3  # the members differ: a real test
        for key in DEVIATION_COLUMNS:
            assert values[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-14), key
        np.testing.assert_allclose(values["sigma_F"], ref["force_deviation"], rtol=1e-10, atol=1e-14)
        assert row[0] == step
        np.testing.assert_allclose(row[1:], [ref[key] for key in DEVIATION_COLUMNS], rtol=1e-6)


def test_units_and_cluster(files, tmp_path):
    """A committee in nm and kcal/mol, on a cluster in vacuum: still eV and Angstrom."""
    symbols, pos, _ = CLUSTER
    sim = simulation_with(create_python_force(files["committee-nm"], topology(symbols)), symbols, pos, None)
    reporter = DeviationReporter(str(tmp_path / "devi.out"), 2)
    seen = _record(sim, reporter, 4)
    kcal_to_ev = energy_factor("kcal/mol", "eV")
    for _, pos_a, values in seen:
        m = committee_reference(symbols, pos_a / 10.0, None, cutoff=0.3, size=4)  # model units: nm, kcal/mol
        ref = model_deviation(m["member_forces"] * kcal_to_ev / 10.0, m["member_virials"] * kcal_to_ev,
                              m["member_energies"] * kcal_to_ev)
        for key in DEVIATION_COLUMNS:
            assert values[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-14), key


@pytest.mark.parametrize("create", [r for r in ROUTES if r.id in ("pythonforce", "native", "torchforce")])
def test_subset_of_the_system(files, create, tmp_path):
    """The model on the first atoms only: deviations over those atoms (N = their number)."""
    symbols, pos, _ = CLUSTER
    extra = 3  # free particles with an element the model does not know
    top = topology(list(symbols) + ["N"] * extra)
    force = create(files["committee"], top, atoms=list(range(len(symbols))))
    sim = simulation_with(force, symbols, pos, None, extra=extra)
    reporter = DeviationReporter(str(tmp_path / "devi.out"), 2)
    seen = _record(sim, reporter, 2)
    (_, pos_a, values), = seen
    m = members(symbols, pos_a[:len(symbols)], None)
    ref = model_deviation(m["member_forces"], m["member_virials"], m["member_energies"])
    assert len(values["sigma_F"]) == len(symbols)
    for key in DEVIATION_COLUMNS:
        assert values[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-14), key


def test_openmm_ml_mixed_system(files, tmp_path):
    """openmm-ml `createMixedSystem` on a subset: the reporter finds the force and its atoms."""
    mlpotential = pytest.importorskip("openmmml")
    symbols, pos, _ = CLUSTER
    extra = 2
    top = topology(list(symbols) + ["N"] * extra)
    mm = system_for(list(symbols) + ["N"] * extra)
    nonbonded = openmm.NonbondedForce()
    for _ in range(len(symbols) + extra):
        nonbonded.addParticle(0.0, 0.3, 0.1)
    mm.addForce(nonbonded)
    ml_atoms = list(range(len(symbols)))
    mixed = mlpotential.MLPotential("equiformer", modelPath=files["committee"]).createMixedSystem(
        top, mm, ml_atoms, implementation="pythonforce")
    sim = app.Simulation(top, mixed, openmm.VerletIntegrator(0.5 * unit.femtosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(np.concatenate([pos, [[9.0, 9.0, 9.0], [12.0, 9.0, 9.0]]]) / 10.0)
    reporter = DeviationReporter(str(tmp_path / "devi.out"), 2)
    (_, pos_a, values), = _record(sim, reporter, 2)
    m = members(symbols, pos_a[:len(symbols)], None)
    assert values["max_devi_f"] == pytest.approx(
        model_deviation(m["member_forces"], m["member_virials"], m["member_energies"])["max_devi_f"], rel=1e-10)


def test_pythonforce_outputs_are_reused(files, tmp_path):
    """When OpenMM evaluated the PythonForce at the reported positions (another reporter asked
    for the energy), the reporter takes the members from that call: no evaluation of its own."""
    symbols, pos, cell = PERIODIC
    sim = simulation_with(create_python_force(files["committee"], topology(symbols, cell)), symbols, pos, cell)
    alone = DeviationReporter(str(tmp_path / "alone.out"), 2)
    sim.reporters.append(alone)
    sim.step(4)
    assert alone.evaluations == 2
    shared = DeviationReporter(str(tmp_path / "shared.out"), 2)
    sim.reporters = [app.StateDataReporter(str(tmp_path / "state.csv"), 2, potentialEnergy=True), shared]
    seen = _record(sim, shared, 4)
    assert shared.evaluations == 0 and len(seen) == 2
    _, pos_a, values = seen[-1]
    m = members(symbols, pos_a, cell)
    assert values["max_devi_f"] == pytest.approx(
        model_deviation(m["member_forces"], m["member_virials"], m["member_energies"])["max_devi_f"], rel=1e-10)


def _hot_start(files, create):
    symbols, pos, cell = PERIODIC
    sim = simulation_with(create(files["committee"], topology(symbols, cell)), symbols, pos, cell,
                          integrator=openmm.VerletIntegrator(2.0 * unit.femtosecond))
    sim.context.setVelocitiesToTemperature(3000 * unit.kelvin, 7)
    return sim


@pytest.mark.parametrize("create", [r for r in ROUTES if r.id in ("pythonforce", "native")])
def test_halt_above_stops_at_the_step(files, create, tmp_path):
    sim = _hot_start(files, create)
    free = DeviationReporter(str(tmp_path / "free.out"), 2)
    sim.reporters.append(free)
    values = []
    for _ in range(10):
        sim.step(2)
        values.append(free.latest["max_devi_f"])
    # the first report that passes every earlier one; the threshold lies between them
    first = next(k for k in range(1, len(values)) if values[k] > max(values[:k]))
    threshold = 0.5 * (values[first] + max(values[:first]))

    sim = _hot_start(files, create)
    path = tmp_path / "halt.out"
    sim.reporters.append(DeviationReporter(str(path), 2, halt_above=threshold))
    with pytest.raises(ModelDeviationError) as caught:
        sim.step(20)
    step = 2 * (first + 1)
    assert caught.value.step == step == sim.currentStep
    assert caught.value.max_devi_f == pytest.approx(values[first], rel=1e-12)
    message = str(caught.value)
    assert f"step {step}" in message and f"halt_above={threshold:g}" in message and "retrain" in message
    _, table = _lines(path)
    assert table[-1, 0] == step and len(table) == first + 1


def test_refusals(files, tmp_path):
    symbols, pos, cell = CLUSTER
    single = simulation_with(create_python_force(files["single"], topology(symbols)), symbols, pos, None)
    single.reporters.append(DeviationReporter(str(tmp_path / "a.out"), 2))
    with pytest.raises(ValueError, match="single model, not a committee"):
        single.step(1)
    assert single.currentStep == 0  # refused before the first step

    bare = simulation_with(openmm.CMMotionRemover(), symbols, pos, None)
    bare.reporters.append(DeviationReporter(str(tmp_path / "b.out"), 2))
    with pytest.raises(ValueError, match="no Equiformer force"):
        bare.step(1)

    two = simulation_with(create_python_force(files["committee"], topology(symbols)), symbols, pos, None)
    two.system.addForce(create_python_force(files["committee"], topology(symbols)))
    two.context.reinitialize(preserveState=True)
    two.reporters.append(DeviationReporter(str(tmp_path / "c.out"), 2))
    with pytest.raises(ValueError, match=re.escape("several Equiformer forces (indices 0, 1)")):
        two.step(1)
    two.reporters = [DeviationReporter(str(tmp_path / "d.out"), 2, force_index=1)]
    two.step(2)
    assert two.reporters[0].latest["max_devi_f"] > 0.0

    with pytest.raises(ValueError, match="halt_above"):
        DeviationReporter(str(tmp_path / "e.out"), 2, halt_above=-1.0)
    with pytest.raises(ValueError, match="reportInterval"):
        DeviationReporter(str(tmp_path / "f.out"), 0)
