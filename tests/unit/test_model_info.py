"""ModelInfo: an exported model's metadata read, parsed and checked once, and the species and
unit questions every route asks it."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from equiformer.export.contract import read_metadata
from equiformer.model_info import ModelInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analytic_models import NUMBERS, SYMBOLS, write_pair_model  # noqa: E402
from damaged_files import flip_bit  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_pair_model(str(tmp_path_factory.mktemp("info") / "pair.pt"), cutoff=0.3, length_unit="nm",
                            energy_unit="kcal/mol", energy_offset=-12.5, num_layers=2, dtype=torch.float32)


def test_read(model):
    info = ModelInfo.read(model)
    assert info.path == model and info.format_version == 1
    assert info.cutoff == 0.3 and info.num_layers == 2 and info.interaction_range == pytest.approx(0.6)
    assert info.species_symbols == list(SYMBOLS) and info.atomic_numbers == list(NUMBERS)
    assert (info.length_unit, info.energy_unit, info.dtype, info.device) == ("nm", "kcal/mol", "float32", "cpu")
    assert info.torch_dtype is torch.float32
    assert info.energy_offset == -12.5
    assert info.min_distance == pytest.approx(0.05)  # the default 0.5 Angstrom, in nm
    assert info.hyperparameters == {"model": "analytic-pair", "cutoff": 0.3}
    assert info.metadata["cutoff"] == "0.3"


def test_units(model):
    info = ModelInfo.read(model)
    assert info.energy_to("kJ/mol") == 4.184
    assert info.energy_to("kcal/mol") == 1.0
    assert info.length_from("Angstrom") == pytest.approx(0.1)
    assert info.length_from("nm") == 1.0


def test_species(model):
    info = ModelInfo.read(model)
    np.testing.assert_array_equal(info.species_indices(["Cu", "H", "O"]), [3, 0, 2])
    with pytest.raises(ValueError, match=r"unknown species \['N'\] in my atoms"):
        info.species_indices(["H", "N"], "my atoms")
    assert info.species_of_elements([(29, "a"), (1, "b")]) == [3, 0]
    with pytest.raises(ValueError, match=r"only knows the elements H C O Cu; it cannot handle b: atomic number 7; "
                                         r"c: no element"):
        info.species_of_elements([(1, "a"), (7, "b"), (None, "c")])
    with pytest.raises(ValueError, match=r"\(and 2 more\)"):
        info.species_of_elements([(7, f"atom {k}") for k in range(7)])


def _files(model, **changes):
    files = dict(read_metadata(model))
    files.update(changes)
    return files


def test_defaults_of_optional_entries(model):
    info = ModelInfo.from_metadata("m.pt", _files(model, num_layers="", interaction_range="", energy_offset="",
                                                  min_distance="", hyperparameters="", atomic_numbers=""))
    assert info.num_layers == 1 and info.interaction_range == pytest.approx(0.9) and info.energy_offset == 0.0
    assert info.min_distance == pytest.approx(0.05) and info.hyperparameters == {} and info.atomic_numbers == []
    with pytest.raises(ValueError, match="has no atomic_numbers metadata"):
        info.species_of_elements([(1, "a")])
    assert ModelInfo.from_metadata("m.pt", _files(model, min_distance="0.07")).min_distance == 0.07


@pytest.mark.parametrize("changes, message", [
    ({"cutoff": ""}, "lacks the 'cutoff' metadata"),
    ({"species_symbols": ""}, "lacks the 'species_symbols' metadata"),
    ({"length_unit": "bohr"}, "unsupported length_unit 'bohr'"),
    ({"energy_unit": "Hartree"}, "unsupported energy_unit 'Hartree'"),
    ({"dtype": "float16"}, "unsupported dtype 'float16'"),
    ({"cutoff": "three"}, "malformed metadata"),
    ({"atomic_numbers": "1 6 x 29"}, "malformed metadata"),
    ({"hyperparameters": "{not json"}, "malformed metadata"),
    ({"atomic_numbers": "1 6"}, "species_symbols and atomic_numbers differ in length"),
    ({"cutoff": "0"}, "cutoff must be positive"),
    ({"num_layers": "0"}, "num_layers must be at least 1"),
])
def test_bad_metadata(model, changes, message):
    with pytest.raises(ValueError, match=message):
        ModelInfo.from_metadata("m.pt", _files(model, **changes))


def test_bad_files(model, tmp_path):
    with pytest.raises(ValueError, match="no model given"):
        ModelInfo.read(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelInfo.read(tmp_path / "missing.pt")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": {}}, checkpoint)
    with pytest.raises(ValueError, match="not an exported Equiformer model"):
        ModelInfo.read(checkpoint)
    damaged = str(tmp_path / "damaged.pt")
    flip_bit(model, damaged)
    with pytest.raises(ValueError, match="is damaged"):
        ModelInfo.read(damaged)
