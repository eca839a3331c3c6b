"""Species / unit layer of the OpenMM routes (no OpenMM Context needed)."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openmm")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from analytic_models import write_pair_model  # noqa: E402

from equiformer.openmm.common import check_box, prepare, resolve_precision  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_pair_model(str(tmp_path_factory.mktemp("m") / "pair.pt"), energy_unit="kcal/mol",
                            energy_offset=-7.0)


def test_species_and_units(model):
    setup = prepare(model, ["O", 1, "Cu", 6], atoms=[3, 0, 2])
    assert setup.species == [1, 2, 3] and setup.atoms == [3, 0, 2] and setup.num_particles == 4
    assert setup.nm_to_model == 10.0 and setup.energy_to_kj == 4.184
    assert setup.force_to_kj_nm == pytest.approx(41.84) and setup.cutoff_nm == pytest.approx(0.3)
    assert setup.info.energy_offset == -7.0 and not setup.periodic
    assert prepare(model, ["H", "C"], atoms=[0, 1]).atoms is None  # all atoms: no subset


def test_errors(model):
    with pytest.raises(ValueError, match="atomic number 7"):
        prepare(model, ["H", "N"])
    with pytest.raises(ValueError, match="outside"):
        prepare(model, ["H", "C"], atoms=[2])
    with pytest.raises(ValueError, match="duplicate"):
        prepare(model, ["H", "C"], atoms=[1, 1])
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("half", "float64")
    assert resolve_precision("double", "float64") == "float64"
    with pytest.raises(ValueError, match="exported in float64"):
        resolve_precision("single", "float64")
    check_box(np.eye(3) * 0.31, 0.3)
    with pytest.raises(ValueError, match="across box vector c"):
        check_box(np.diag([1.0, 1.0, 0.29]), 0.3)
