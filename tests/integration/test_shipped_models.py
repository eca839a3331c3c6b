"""The shipped models (models/) have an energy surface smooth where MD starts: a perfect
lattice and atoms meeting their first neighbour (what the former shipped models failed,
docs/architecture.md), through the ASE calculator on the float64 exports."""

import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from equiformer.calculator import EquiformerCalculator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CU = os.path.join(ROOT, "models", "cu", "model.float64.pt")
ASPIRIN = os.path.join(ROOT, "models", "aspirin", "model.float64.pt")


@pytest.fixture(scope="module")
def cu():
    return EquiformerCalculator(model=CU)


@pytest.fixture(scope="module")
def aspirin():
    return EquiformerCalculator(model=ASPIRIN)


def energy_forces(calc, atoms):
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_cu_perfect_lattice_is_a_smooth_minimum(cu):
    """An atom of perfect fcc moved by h: E(h) - E(0) = k h^2 / 2 and F = -k h with one k from
    1e-6 to 1e-2 A (measured: k = 6.89 eV/A^2 at every h, to 1e-4; the former model's force
    was 0.41, 4.1, 13.7, -8.8, -0.31 eV/A at h = 1e-6 ... 1e-2)."""
    crystal = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)
    e0, f0 = energy_forces(cu, crystal.copy())
    assert np.abs(f0).max() < 1e-10
    k = []
    for h in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        moved = crystal.copy()
        moved.positions[0, 0] += h
        e, f = energy_forces(cu, moved)
        k.append(-f[0, 0] / h)
        if h >= 1e-3:  # the energy difference is above rounding there
            assert abs((e - e0) / (0.5 * k[-1] * h * h) - 1.0) < 0.02, (h, e - e0)
    k = np.array(k)
    assert k[-1] > 1.0, k  # a minimum with a copper-like stiffness (EAM: about 6 eV/A^2)
    assert np.all(np.abs(k / k[-1] - 1.0) < 0.01), k


@pytest.mark.parametrize("which,pair", [("cu", "Cu2"), ("aspirin", "O2"), ("aspirin", "CH")])
def test_first_neighbour_enters_smoothly(cu, aspirin, which, pair):
    """Two atoms at rc - delta: energy within O(delta^2) and forces within O(delta) of the
    separated atoms' (the former Cu model jumped by 1.24 eV between delta = 1e-7 and 1e-8,
    with forces up to 8e4 eV/A)."""
    calc = cu if which == "cu" else aspirin
    rc = calc.cutoff
    far, _ = energy_forces(calc, Atoms(pair, positions=[[0, 0, 0], [rc + 1.0, 0, 0]]))
    for delta in (1e-2, 1e-4, 1e-6, 1e-8):
        e, f = energy_forces(calc, Atoms(pair, positions=[[0, 0, 0], [rc - delta, 0, 0]]))
        assert abs(e - far) < 20.0 * delta ** 2 + 1e-12, (delta, e - far)
        assert np.abs(f).max() < 20.0 * delta + 1e-10, (delta, f)


@pytest.mark.parametrize("name", ["cu", "aspirin"])
def test_shipped_committee_is_its_members(name):
    """models/NAME/committee.pt holds the four checkpoints it is documented to hold (member 0
    the shipped model, members 1-3 in models/NAME/committee/), in order: member k's weights
    and normalisation in the file equal its checkpoint's, exactly."""
    import torch

    from equiformer.export.torchscript import load_any
    from equiformer.model_info import ModelInfo

    folder = os.path.join(ROOT, "models", name)
    path = os.path.join(folder, "committee.pt")
    assert ModelInfo.read(path).committee_size == 4
    stored = torch.jit.load(path, map_location="cpu").state_dict()
    members = [os.path.join(folder, "model.ckpt.pt")] + [
        os.path.join(folder, "committee", f"member-{k}.ckpt.pt") for k in (1, 2, 3)]
    for k, member in enumerate(members):
        weights = load_any(member).state_dict()
        assert len(weights) > 50
        for key, value in weights.items():
            got = stored[f"members.{k}.model.{key}"]
            assert torch.equal(got, value.to(got.dtype)), (name, k, key)
    # the members differ (seeds 0-3): not one model four times
    key = next(key for key, value in weights.items() if key.startswith("blocks.") and value.numel() > 1)
    assert not torch.equal(stored[f"members.0.model.{key}"], stored[f"members.1.model.{key}"])
