"""The energy surface is smooth where MD starts: at sites of high symmetry (perfect
crystals) and when an atom gets its first neighbours or loses its last ones. Each check
also runs on the former architecture (per-block norm, envelope inside the softmax only) to
show that it detects the defect it guards against."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from equiformer.data.neighbors import neighbor_list
from equiformer.export.torchscript import EquiformerEngineModel
from equiformer.model import build_model, resolve_hparams, saved_hparams
from equiformer.nn.norm import EquivariantLayerNorm, JointEquivariantLayerNorm

CUTOFF = 4.5
LEGACY = {"layer_norm": "per_block", "attention_cutoff": "softmax"}


def make_model(seed=0, **hp):
    """A tiny copper model with weights moved away from their initial values (a trained
    model's are not small and tidy), float64."""
    torch.manual_seed(seed)
    model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": CUTOFF, **hp}, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return EquiformerEngineModel(model.eval())


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def legacy():
    return make_model(**LEGACY)


def evaluate(engine, atoms):
    pbc = atoms.pbc
    ei, shifts, _ = neighbor_list(atoms.positions, CUTOFF, atoms.cell.array if pbc.any() else None, pbc)
    vec = torch.tensor(atoms.positions[ei[0]] - atoms.positions[ei[1]] + shifts)
    n = len(atoms)
    out = engine(torch.zeros(n, dtype=torch.long), torch.from_numpy(ei), vec, n)
    return float(out["energy"]), out["forces"].numpy()


# ------------------------------------------------------------------ perfect lattice


def lattice_response(engine, steps=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2)):
    """F_x / h on an atom of perfect fcc copper moved by h along x: minus the curvature."""
    crystal = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)
    out = []
    for h in steps:
        moved = crystal.copy()
        moved.positions[0, 0] += h
        out.append(evaluate(engine, moved)[1][0, 0] / h)
    return np.array(out)


def test_perfect_lattice_curvature_has_no_small_scale(model):
    """The curvature seen by a displaced atom is the same from 1e-6 to 1e-2 A (measured:
    equal to 1e-4 relative; the former norm makes the force change sign within 1e-4 A)."""
    k = lattice_response(model)
    assert np.all(np.abs(k / k[-1] - 1.0) < 0.02), k


def test_former_norm_shows_the_lattice_defect(legacy):
    k = lattice_response(legacy)
    assert np.abs(k / k[-1] - 1.0).max() > 10.0, k


def test_joint_norm_passes_vanishing_blocks_linearly():
    """A degree-1 block scaled by eps comes out scaled by eps (the scalars set the RMS);
    the per-block norm blows it up to a unit vector instead."""
    irreps = [(4, 0, 1), (2, 1, 1)]
    torch.manual_seed(0)
    x = torch.randn(3, 4 + 6, dtype=torch.float64)
    joint, per_block = JointEquivariantLayerNorm(irreps).double(), EquivariantLayerNorm(irreps).double()
    responses = {"joint": [], "per_block": []}
    for eps in (1e-8, 1e-5, 1e-2):
        y = x.clone()
        y[:, 4:] *= eps
        responses["joint"].append(joint(y)[:, 4:] / eps)
        responses["per_block"].append(per_block(y)[:, 4:] / eps)
    r = responses["joint"]
    assert torch.allclose(r[0], r[1], rtol=1e-6) and torch.allclose(r[1], r[2], rtol=1e-3)
    r = responses["per_block"]
    assert not torch.allclose(r[0], r[2], rtol=0.5)


# ------------------------------------------------------------------ first neighbours


def dimer(d):
    return Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [d, 0.0, 0.0]])


def several(d):
    """An atom whose four neighbours enter (or leave) its cutoff together, at distance d."""
    return Atoms("Cu5", positions=[[0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, 0, -d]])


def one_more(d):
    """An atom that already has a neighbour (at 2.6 A) while a third atom crosses its cutoff
    (the third stays beyond the cutoff of the second)."""
    return Atoms("Cu3", positions=[[0, 0, 0], [-2.6, 0.0, 0.0], [d, 0.0, 0.0]])


GEOMETRIES = {"first neighbour": dimer, "several at once": several, "one more": one_more}
DELTAS = np.array([1e-2, 1e-3, 1e-4, 1e-5])


def approach(engine, geometry):
    """(E(rc - delta) - E(outside), max |F(rc - delta)|) for each delta."""
    e_out, f_out = evaluate(engine, geometry(CUTOFF + 1e-3))
    de, df = [], []
    for delta in DELTAS:
        e, f = evaluate(engine, geometry(CUTOFF - delta))
        de.append(e - e_out)
        df.append(np.abs(f - f_out).max())
    return np.array(de), np.array(df)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_energy_and_force_continuous_with_finite_slope_across_cutoff(model, geometry):
    """Entering or leaving the cutoff is smooth: the energy approaches its outside value as
    delta^2, the force as delta (so its derivative is finite)."""
    de, df = approach(model, GEOMETRIES[geometry])
    assert np.all(np.abs(de) <= 10.0 * DELTAS ** 2 + 1e-12), de
    assert np.all(df <= 10.0 * DELTAS + 1e-10), df
    # the force's slope settles on a finite value (C1 envelope: a finite jump of dF/dr)
    slopes = df / DELTAS
    assert slopes[-1] < 2.0 * slopes[-2] + 1e-6, slopes


def test_former_attention_jumps_at_the_first_neighbour(legacy):
    de, _ = approach(legacy, dimer)
    assert abs(de[-1]) > 1e-3, de


# ------------------------------------------------------------------ hyperparameters of files


def test_files_from_before_keep_their_function():
    """Checkpoints written before `layer_norm` / `attention_cutoff` (they store
    `smooth_cutoff`) rebuild the model they were trained as."""
    old = {"preset": "tiny", "species": ["Cu"], "smooth_cutoff": True}
    assert saved_hparams(old)["layer_norm"] == "per_block"
    assert saved_hparams(old)["attention_cutoff"] == "softmax"
    assert saved_hparams({**old, "smooth_cutoff": False})["attention_cutoff"] == "mask"
    new = resolve_hparams({"species": ["Cu"]})
    assert saved_hparams(new) == new  # a current file is read as written
    assert (new["layer_norm"], new["attention_cutoff"]) == ("joint", "envelope")


def test_smooth_cutoff_in_a_config_is_the_older_name():
    assert resolve_hparams({"species": ["Cu"], "smooth_cutoff": False})["attention_cutoff"] == "mask"
    assert resolve_hparams({"species": ["Cu"], "smooth_cutoff": True})["attention_cutoff"] == "envelope"
    with pytest.raises(ValueError, match="older name"):
        resolve_hparams({"species": ["Cu"], "smooth_cutoff": True, "attention_cutoff": "mask"})
    with pytest.raises(ValueError, match="layer_norm"):
        resolve_hparams({"species": ["Cu"], "layer_norm": "batch"})
    with pytest.raises(ValueError, match="attention_cutoff"):
        resolve_hparams({"species": ["Cu"], "attention_cutoff": "hard"})
