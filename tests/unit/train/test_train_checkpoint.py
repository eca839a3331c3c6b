"""Checkpoint round trip and error messages."""

import os

import pytest
import torch

from equiformer.data.atoms import atoms_to_graph, collate
from equiformer.model import build_model
from equiformer.train.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    build_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

from train_helpers import emt_copper


def _model_and_batch(dtype=torch.float64):
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 3.0}).to(dtype)
    model.set_energy_normalization(torch.tensor([-1.25], dtype=torch.float64), 0.7)
    batch = collate([atoms_to_graph(a, ["Cu"], 3.0, dtype) for a in emt_copper(3)])
    return model, batch


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_same_predictions(tmp_path, dtype):
    model, batch = _model_and_batch(dtype)
    norm = {"atom_ref": [-1.25], "scale": 0.7, "atom_ref_method": "fixed", "scale_method": "fixed", "species": ["Cu"]}
    ck = build_checkpoint(model, model.state_dict(), norm, training=None, metadata={"kind": "best"})
    path = tmp_path / "c.pt"
    save_checkpoint(ck, path)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["species_symbols"] == ["Cu"] and raw["cutoff"] == 3.0
    assert raw["dtype"] == str(dtype).replace("torch.", "")
    assert raw["energy_unit"] == "eV" and raw["length_unit"] == "Angstrom"
    ref = model(batch, compute_forces=True, compute_stress=True)
    for source in (path, raw, str(path)):
        again = model_from_checkpoint(source)
        assert not again.training
        out = again(batch, compute_forces=True, compute_stress=True)
        for key in ref:
            assert torch.equal(ref[key], out[key]), key
    assert float(again.energy_scale) == 0.7


def test_atomic_write_leaves_no_temp_files(tmp_path):
    save_checkpoint({"format": FORMAT, "x": torch.zeros(2)}, tmp_path / "a.pt")
    save_checkpoint({"format": FORMAT, "x": torch.ones(2)}, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == ["a.pt"]
    assert torch.load(tmp_path / "a.pt", weights_only=True)["x"].tolist() == [1.0, 1.0]


def test_checkpoint_gets_the_modes_of_a_new_file(tmp_path):
    """best.pt / last.pt used to be private (0600, from mkstemp); they follow the umask."""
    old = os.umask(0o022)
    try:
        save_checkpoint({"format": FORMAT, "x": torch.zeros(2)}, tmp_path / "a.pt")
        os.umask(0o077)
        save_checkpoint({"format": FORMAT, "x": torch.zeros(2)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o600


def test_load_errors(tmp_path):
    model, _ = _model_and_batch()
    ck = build_checkpoint(model, model.state_dict(), {"atom_ref": [0.0], "scale": 1.0})
    good = tmp_path / "good.pt"
    save_checkpoint(ck, good)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "data.xyz"
    text.write_text("2\n\nH 0 0 0\nH 0 0 1\n")
    with pytest.raises(CheckpointError, match="not a PyTorch archive"):
        load_checkpoint(text)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: 2000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(trunc)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, other)
    with pytest.raises(CheckpointError, match="not an Equiformer training checkpoint"):
        load_checkpoint(other)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(CheckpointError, match="arbitrary Python objects"):
        load_checkpoint(pickled)
    future = dict(ck, format_version=FORMAT_VERSION + 1)
    save_checkpoint(future, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
