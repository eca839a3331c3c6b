"""Forces and virials from the edge-vector gradient (forces.py): the one definition."""

import torch

from equiformer.forces import forces_and_virial


def pair_energy(pos, edge_index, shifts):
    """A pair potential summed over directed edges (each pair twice): E = sum_e |r_e|^4 / 8."""
    r = pos[edge_index[0]] - pos[edge_index[1]] + shifts
    return (r.pow(2).sum(1) ** 2).sum() / 8.0


def test_forces_virial_and_per_atom_virial():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(5, 3, generator=g, dtype=torch.float64)
    src, dst = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])
    shifts = torch.zeros(edge_index.shape[1], 3, dtype=torch.float64)
    vec = (pos[edge_index[0]] - pos[edge_index[1]]).requires_grad_(True)
    (grad,) = torch.autograd.grad((vec.pow(2).sum(1) ** 2).sum() / 8.0, vec)
    forces, virial, atom_virial = forces_and_virial(edge_index, vec, grad, 5, per_atom=True)
    p = pos.clone().requires_grad_(True)
    (dedx,) = torch.autograd.grad(pair_energy(p, edge_index, shifts), p)
    assert torch.allclose(forces, -dedx, atol=1e-13)
    # a pair potential: virial = sum_i x_i (x) F_i for an isolated system
    assert torch.allclose(virial[0], torch.einsum("ia,ib->ab", pos, forces), atol=1e-13)
    assert torch.allclose(atom_virial.sum(0), virial[0], atol=1e-13)
    assert virial.shape == (1, 3, 3)


def test_batched_virial_is_per_structure():
    g = torch.Generator().manual_seed(1)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    vec = torch.rand(4, 3, generator=g, dtype=torch.float64)
    grad = torch.rand(4, 3, generator=g, dtype=torch.float64)
    _, batched, none = forces_and_virial(edge_index, vec, grad, 4, torch.tensor([0, 0, 1, 1]), 2)
    assert none is None
    for s, edges in ((0, slice(0, 2)), (1, slice(2, 4))):
        _, single, _ = forces_and_virial(edge_index[:, edges], vec[edges], grad[edges], 4)
        assert torch.allclose(batched[s], single[0], atol=1e-15)
