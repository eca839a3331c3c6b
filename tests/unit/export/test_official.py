"""Official checkpoints reproduce the official implementation's energies and forces."""

import json
import os

import pytest
import torch

from equiformer.data import keys
from equiformer.export.official import load_official, read_recipe

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "fixtures", "official_equiformer")
CKPT = os.path.join(FIXTURE, "official_md17_l2.ckpt.pt")
RECIPE = os.path.join(FIXTURE, "official_md17_l2.json")

pytestmark = pytest.mark.skipif(not os.path.isfile(CKPT), reason="../shared/fixtures is not beside the checkout")


def radius_graph(pos, cutoff):
    d = torch.cdist(pos, pos)
    centre, neighbour = torch.nonzero((d < cutoff) & (d > 0), as_tuple=True)
    return torch.stack([neighbour, centre])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
def test_fixture_energies_and_forces(dtype, tol):
    model = load_official(CKPT, RECIPE, dtype=dtype)
    recipe = json.load(open(RECIPE))
    for case in recipe["cases"]:
        pos = torch.tensor(case["positions"], dtype=torch.float64)
        species = torch.tensor([model.species_symbols.index(s) for s in
                                [__import__("ase").data.chemical_symbols[z] for z in case["numbers"]]])
        out = model({keys.POSITIONS: pos, keys.SPECIES: species, keys.EDGE_INDEX: radius_graph(pos, recipe["radius"])})
        assert abs(out[keys.ENERGY].item() - case["energy"]) < tol, case["name"]
        assert (out[keys.FORCES] - torch.tensor(case["forces"])).abs().max().item() < tol, case["name"]


def test_unknown_model_in_recipe(tmp_path):
    recipe = json.load(open(RECIPE))
    recipe["model_name"] = "graph_attention_transformer_nonexistent_md17"
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match="unknown official model"):
        read_recipe(str(path))


def test_state_dict_that_does_not_fit(tmp_path):
    sd = torch.load(CKPT, weights_only=True)["state_dict"]
    del sd["blocks.3.ga.proj.tp.weight"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match="blocks.3.ga.proj.tp.weight"):
        load_official(str(path), RECIPE)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not an official Equiformer checkpoint"):
        load_official(str(path), RECIPE)
