"""openmm-ml's addForces: the route table sends each option to the routes that take it (the
forces themselves are tested in tests/integration/test_openmm*.py)."""

import sys
import warnings
from pathlib import Path

import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmml")
from openmm import app  # noqa: E402

from equiformer.openmm import mlpotential  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from analytic_models import write_pair_model  # noqa: E402

CALLS = []


def record(model, topology, **keywords):
    """Stands in for every route's create function."""
    CALLS.append(keywords)
    return openmm.CustomExternalForce("0")


@pytest.fixture
def potential(tmp_path, monkeypatch):
    monkeypatch.setattr(mlpotential, "ROUTES", {name: (__name__, "record", options)
                                                for name, (_, _, options) in mlpotential.ROUTES.items()})
    CALLS.clear()
    return mlpotential.EquiformerPotentialImpl("equiformer", write_pair_model(str(tmp_path / "pair.pt")))


def add_forces(potential, atoms=None, **options):
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    system = openmm.System()
    for symbol in ("C", "H", "O"):
        topology.addAtom(symbol, app.Element.getBySymbol(symbol), residue)
        system.addParticle(1.0)
    potential.addForces(topology, system, atoms, 3, **options)
    assert system.getNumForces() == 1
    return CALLS[-1]


@pytest.mark.parametrize("implementation, expected", [
    ("torchforce", {"outputs_forces": False}),
    ("pythonforce", {"device": "cuda", "num_threads": 2}),
    ("native", {"device": "cuda", "num_threads": 2}),
])
def test_each_route_gets_its_options(potential, implementation, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # options of other routes are not "unknown"
        keywords = add_forces(potential, [0, 2], implementation=implementation, outputsForces=False, device="cuda",
                              numThreads=2, precision="double", interpolate=True)
    assert keywords == {"atoms": [0, 2], "periodic": False, "box_vectors": None, "precision": "double",
                        "force_group": 3, **expected}


def test_defaults_and_unknown_options(potential):
    keywords = add_forces(potential)
    assert keywords == {"atoms": None, "periodic": False, "box_vectors": None, "precision": None, "force_group": 3}
    with pytest.warns(UserWarning, match=r"ignoring unknown options \['colour'\]"):
        add_forces(potential, implementation="Python-Force", colour="red")
    with pytest.raises(ValueError, match="unknown implementation 'gpu'; use one of 'torchforce', 'pythonforce', "
                                         "'native'"):
        add_forces(potential, implementation="gpu")
