"""Normalisation fit, learning-rate schedule and EMA."""

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from equiformer.data import keys
from equiformer.data.atoms import atoms_to_graph
from equiformer.data.dataset import GraphDataset
from equiformer.train.ema import EMA
from equiformer.train.normalization import fit_normalization
from equiformer.train.scheduler import LRSchedule


def test_lstsq_atom_ref_and_scales():
    rng = np.random.default_rng(0)
    ref = {"H": -13.6, "O": -432.1}
    graphs = []
    for k in range(6):
        nh, no = 1 + k % 3, 1 + k // 3
        a = Atoms("H" * nh + "O" * no, positions=rng.random((nh + no, 3)) * 3)
        g = atoms_to_graph(a, ["H", "O", "C"], 2.0)
        g[keys.ENERGY] = torch.tensor([nh * ref["H"] + no * ref["O"]], dtype=torch.float64)
        g[keys.FORCES] = torch.full((nh + no, 3), 2.0, dtype=torch.float64)
        graphs.append(g)
    ds = GraphDataset(graphs)
    norm = fit_normalization(ds, ["H", "O", "C"])
    np.testing.assert_allclose(norm["atom_ref"], [ref["H"], ref["O"], 0.0], atol=1e-8)
    assert norm["scale"] == pytest.approx(2.0) and norm["scale_method"] == "forces_rms"
    norm = fit_normalization(ds, ["H", "O", "C"], scale="energy_std")
    assert norm["scale"] == 1.0 and "degenerate" in norm["scale_method"]  # exact fit: zero residual
    norm = fit_normalization(ds, ["H", "O", "C"], atom_ref={"H": 1.0, "O": 2.0, "C": 3.0}, scale=0.5)
    assert norm["atom_ref"] == [1.0, 2.0, 3.0] and norm["scale"] == 0.5
    with pytest.raises(ValueError, match=r"missing \['C'\]"):
        fit_normalization(ds, ["H", "O", "C"], atom_ref={"H": 1.0, "O": 2.0})


def test_schedule_shapes():
    s = LRSchedule(1e-3, epochs=10, warmup_epochs=2, warmup_lr=1e-5, kind="cosine", min_lr=1e-6)
    assert s.lr_at(0) == pytest.approx(1e-5)
    assert s.lr_at(1) == pytest.approx(0.5 * (1e-5 + 1e-3))
    assert s.lr_at(2) == pytest.approx(1e-3)
    assert s.lr_at(6) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi / 2)))
    assert s.lr_at(10) == pytest.approx(1e-6)
    p = LRSchedule(1e-3, epochs=10, kind="plateau", min_lr=2e-4, plateau_factor=0.5, plateau_patience=1)
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95]):
        p.epoch_end(epoch, loss)
    assert p.plateau_level == 2 and p.lr_at(8) == pytest.approx(2.5e-4)
    p.epoch_end(8, 0.9)
    p.epoch_end(9, 0.9)
    assert p.lr_at(9.5) == pytest.approx(2e-4)  # floor
    q = LRSchedule(1e-3, epochs=10, kind="plateau", min_lr=2e-4, plateau_factor=0.5, plateau_patience=1)
    q.load_state_dict(p.state_dict())
    assert q.lr_at(9) == p.lr_at(9)


def test_ema_average_and_swap():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # effective decay min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - d))
    with ema.swapped(lin):
        assert torch.allclose(lin.weight, torch.full((1, 2), 1 - d))
    assert torch.equal(lin.weight, torch.ones(1, 2))
    other = EMA(lin, 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
