"""Committees (equiformer/committee.py), eagerly on tiny members: the deviation formulas, the
shared-geometry forward against each member alone, its mean against the mean energy's
derivatives, the chunked route, and the checks on members and run folders."""

import numpy as np
import pytest
import torch

from equiformer.committee import (CommitteeEngineModel, basis_is_shared, check_members, deviations,
                                  member_checkpoints)
from equiformer.export.torchscript import EquiformerEngineModel
from equiformer.model import build_model

from model_variants import SPECIES, random_graph


def member(seed, **hp):
    torch.manual_seed(seed)
    model = build_model({"preset": "tiny", "species": SPECIES, **hp}, dtype=torch.float64).eval()
    with torch.no_grad():
        model.set_energy_normalization(torch.tensor([-0.5, -1.5, -2.0]), 1.3, offset=0.1 * seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_deviations_follow_the_definitions():
    """The spec's formulas written out one atom and one component at a time."""
    rng = np.random.default_rng(0)
    k, n = 4, 7
    f, w, e = rng.normal(size=(k, n, 3)), rng.normal(size=(k, 3, 3)), rng.normal(size=k)
    got = deviations(f, w, e)
    sigma = []
    for i in range(n):
        mean = sum(f[j, i] for j in range(k)) / k
        sigma.append(np.sqrt(sum(np.dot(f[j, i] - mean, f[j, i] - mean) for j in range(k)) / k))
    comps = []
    for a in range(3):
        for b in range(3):
            m = sum(w[j, a, b] for j in range(k)) / k
            comps.append(np.sqrt(sum((w[j, a, b] - m) ** 2 for j in range(k)) / k) / n)
    me = e.sum() / k
    assert np.allclose(got["sigma_F"], sigma, rtol=1e-13, atol=0)
    assert got["max_devi_f"] == pytest.approx(max(sigma), rel=1e-13)
    assert got["min_devi_f"] == pytest.approx(min(sigma), rel=1e-13)
    assert got["avg_devi_f"] == pytest.approx(sum(sigma) / n, rel=1e-13)
    assert got["max_devi_v"] == pytest.approx(max(comps), rel=1e-13)
    assert got["min_devi_v"] == pytest.approx(min(comps), rel=1e-13)
    assert got["avg_devi_v"] == pytest.approx(sum(comps) / 9, rel=1e-13)
    assert got["devi_e"] == pytest.approx(np.sqrt(((e - me) ** 2).sum() / k) / n, rel=1e-13)
    # n_atoms: only the first rows count, and N divides the virial and energy deviations
    part = deviations(f, w, e, n_atoms=3)
    assert np.allclose(part["sigma_F"], sigma[:3]) and part["devi_e"] == pytest.approx(got["devi_e"] * n / 3)
    with pytest.raises(ValueError, match="n_atoms"):
        deviations(f, w, e, n_atoms=0)
    with pytest.raises(ValueError, match="K = 4"):
        deviations(f, w[:3], e)


def test_members_match_their_own_engines_and_the_mean_is_the_mean_energy():
    """Shared geometry, per-member gradients: each member's outputs equal its own engine
    model's; the usual keys are the members' mean; forces are -d(mean energy)/dx."""
    members = [member(0), member(1), member(2)]
    committee = CommitteeEngineModel(members)
    species, edge_index, vec = random_graph(n=8, seed=1)
    n_local = 6
    out = committee(species, edge_index, vec, n_local)
    singles = [EquiformerEngineModel(m)(species, edge_index, vec, n_local) for m in members]
    offsets = torch.tensor([float(m.energy_offset) for m in members], dtype=torch.float64)
    for k, s in enumerate(singles):
        assert float(out["member_energies"][k]) == pytest.approx(float(s["energy"] + offsets[k] - offsets.mean()),
                                                                 abs=1e-12)
        assert torch.allclose(out["member_atom_energies"][k], s["atom_energies"], atol=1e-12)
        assert torch.allclose(out["member_forces"][k], s["forces"], atol=1e-12)
        assert torch.allclose(out["member_virials"][k], s["virial"], atol=1e-12)
    for key in ("energy", "atom_energies", "forces", "virial", "atom_virial"):
        assert torch.allclose(out[key], torch.stack([s[key] for s in singles]).mean(0), atol=1e-12), key
    assert out["member_energies"].mean() == pytest.approx(float(out["energy"]), abs=1e-12)


def test_forces_are_finite_differences_of_the_mean_energy():
    members = [member(0), member(3)]
    committee = CommitteeEngineModel(members)
    g = torch.Generator().manual_seed(4)
    pos = torch.rand((6, 3), generator=g, dtype=torch.float64) * 3.0
    species = torch.tensor([0, 1, 2, 0, 1, 2])
    src, dst = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])

    def energy(p):
        return float(committee(species, edge_index, p[edge_index[0]] - p[edge_index[1]], 6)["energy"])

    forces = committee(species, edge_index, pos[edge_index[0]] - pos[edge_index[1]], 6)["forces"]
    h = 1e-5
    for i, d in ((0, 0), (3, 1), (5, 2)):
        plus, minus = pos.clone(), pos.clone()
        plus[i, d] += h
        minus[i, d] -= h
        assert float(forces[i, d]) == pytest.approx(-(energy(plus) - energy(minus)) / (2 * h), abs=1e-7)


def test_identical_members_have_zero_deviation_and_equal_the_single_model():
    one = member(5)
    committee = CommitteeEngineModel([one, member(5), member(5)])
    species, edge_index, vec = random_graph(seed=3)
    out = committee(species, edge_index, vec, len(species))
    single = EquiformerEngineModel(one)(species, edge_index, vec, len(species))
    for key in ("energy", "forces", "virial", "atom_virial"):
        assert torch.allclose(out[key], single[key], rtol=1e-13, atol=1e-14), key
    devi = deviations(out["member_forces"].numpy(), out["member_virials"].numpy(), out["member_energies"].numpy())
    assert devi["max_devi_f"] == 0.0 and devi["max_devi_v"] == 0.0 and devi["devi_e"] == 0.0


@pytest.mark.parametrize("basis", ["exp", "gaussian"])
def test_chunked_route_equals_the_shared_pass(basis):
    """Above chunked_edges every member takes its own chunked schedule: same numbers. A
    trained (gaussian) basis differs between members: each then computes its own."""
    members = [member(0, radial_basis=basis), member(1, radial_basis=basis)]
    assert basis_is_shared(members) == (basis == "exp")
    committee = CommitteeEngineModel(members)
    species, edge_index, vec = random_graph(seed=2)
    shuffle = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    edge_index, vec = edge_index[:, shuffle], vec[shuffle]
    one_pass = committee(species, edge_index, vec, 5)
    singles = [EquiformerEngineModel(m)(species, edge_index, vec, 5) for m in members]
    assert torch.allclose(one_pass["member_forces"][1], singles[1]["forces"], atol=1e-12)
    committee.chunked_edges = 0
    for m in committee.members:
        m.schedule.edge_chunk = 7  # several chunks
    chunked = committee(species, edge_index, vec, 5)
    for key, value in one_pass.items():
        assert torch.allclose(chunked[key], value, rtol=1e-12, atol=1e-12), key


def test_members_that_cannot_share_are_refused_by_name():
    with pytest.raises(ValueError, match=r"cutoff: a\.pt has 5\.0, c\.pt has 4\.0"):
        check_members([member(0), member(1), member(2, cutoff=4.0)], ["a.pt", "b.pt", "c.pt"])
    other = build_model({"preset": "tiny", "species": ["H", "C"]})
    with pytest.raises(ValueError, match="species: a.pt has H C O, b.pt has H C"):
        check_members([member(0), other], ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="energy_unit"):
        check_members([member(0), member(1, energy_unit="kcal/mol")], ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="dtype"):
        check_members([member(0), member(1).to(torch.float32)], ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="at least 2 members"):
        check_members([member(0)])


def test_member_checkpoints_of_a_run_folder(tmp_path):
    for k in range(3):
        (tmp_path / f"member-{k}").mkdir()
        (tmp_path / f"member-{k}" / "best.pt").write_bytes(b"x")
    assert member_checkpoints(str(tmp_path)) == [str(tmp_path / f"member-{k}" / "best.pt") for k in range(3)]
    (tmp_path / "committee.yaml").write_text("size: 4\n")
    with pytest.raises(ValueError, match="member 3 is missing"):
        member_checkpoints(str(tmp_path))
    (tmp_path / "committee.yaml").write_text("size: 3\n")
    (tmp_path / "member-1" / "best.pt").unlink()
    with pytest.raises(ValueError, match=r"member 1 has no best.pt: .*member-1/best.pt does not exist"):
        member_checkpoints(str(tmp_path))
    with pytest.raises(ValueError, match="not a committee run"):
        member_checkpoints(str(tmp_path / "member-0"))


def test_select_bounds_are_half_open():
    """lo <= max_devi_f < hi is a candidate; below lo accurate, at hi or above failed."""
    from ase import Atoms

    from equiformer.cli.select import select

    class Stub:  # a calculator whose deviation is the frame's tag
        def calculate(self, atoms, properties):
            value = atoms.info["devi"]
            self.results = {"model_deviation": {"max_devi_f": value}, "forces_std": np.full(len(atoms), value)}

    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]], info={"devi": v}) for v in (0.01, 0.05, 0.2, 0.3, 0.4)]
    picked, counts, worst = select(frames, Stub(), 0.05, 0.3)
    assert counts == {"accurate": 1, "candidates": 2, "failed": 2}
    assert [a.info["max_devi_f"] for a in picked] == [0.05, 0.2]
    assert picked[0].calc is None and picked[1].arrays["sigma_f"].tolist() == [0.2, 0.2]
    assert worst.tolist() == [0.01, 0.05, 0.2, 0.3, 0.4]
