"""Tiny models of every architecture variant and a random graph, shared by the tests that
check that two evaluations of the same function agree (edge frames, memory schedules)."""

import numpy as np
import torch
from ase import Atoms

SPECIES = ["H", "C", "O"]

VARIANTS = {
    "se3-l2": {},
    "e3-l2": {"irreps_node": "8x0e+2x0o+2x1e+4x1o+2x2e+1x2o", "irreps_sh": "1x0e+1x1o+1x2e",
              "irreps_head": "4x0e+1x0o+1x1e+2x1o+1x2e", "irreps_mlp": "16x0e+8x1o+4x2e"},
    "se3-l1": {"irreps_node": "8x0e+4x1e", "irreps_sh": "1x0e+1x1e", "irreps_head": "4x0e+2x1e",
               "irreps_mlp": "16x0e+8x1e"},
    "se3-l3": {"irreps_node": "8x0e+4x1e+2x2e+2x3e", "irreps_sh": "1x0e+1x1e+1x2e+1x3e",
               "irreps_head": "4x0e+2x1e+1x2e+1x3e", "irreps_mlp": "16x0e+8x1e+4x2e+2x3e"},
    "e3-l3": {"irreps_node": "8x0e+4x1o+2x2e+2x3o", "irreps_sh": "1x0e+1x1o+1x2e+1x3o",
              "irreps_head": "4x0e+2x1o+1x2e+1x3o", "irreps_mlp": "16x0e+8x1o+4x2e+2x3o"},
    "linear-message": {"nonlinear_message": False},
    "dot-product": {"attention": "dot_product"},
    "attention-head": {"attention_head": True, "irreps_feature": "8x0e+2x1e"},
    "attention-head-scalars": {"attention_head": True},  # a head whose gate has nothing to gate
    "official-cutoff-rescale": {"attention_cutoff": "mask", "layer_norm": "per_block", "rescale_degree": True},
}


def random_graph(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand((n, 3), generator=g, dtype=torch.float64) * 4.0
    pos[1] = pos[0] + torch.tensor([0.0, 1.3, 0.0], dtype=torch.float64)  # an edge on the frame's pole
    src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (src != dst) & ((pos[src] - pos[dst]).norm(dim=-1) < 5.0)
    edge_index = torch.stack([src[keep], dst[keep]])
    species = torch.randint(0, len(SPECIES), (n,), generator=g)
    return species, edge_index, pos[edge_index[0]] - pos[edge_index[1]]


def energies_and_gradient(model, species, edge_index, vec, n_local):
    vec = vec.clone().requires_grad_(True)
    e = model.atom_energies(species, edge_index, vec)
    (grad,) = torch.autograd.grad(e[:n_local].sum(), vec)
    return e.detach(), grad


def random_molecule(seed=0, n=8, box=3.2, min_dist=0.9, species=SPECIES):
    """A random (hence chiral) molecule in a box, no two atoms closer than min_dist, the
    species in turn."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in pos):
            pos.append(p)
    return Atoms([species[i % len(species)] for i in range(n)], positions=np.array(pos))


def strain_derivative(energy_of, atoms, i, j, h=1e-5):
    """d(energy_of(atoms))/d(strain_ij) / volume by central differences (atoms scaled with the
    cell): what stress[i, j] must equal."""
    es = []
    for s in (1.0, -1.0):
        eps = np.eye(3)
        eps[i, j] += s * h
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ eps, scale_atoms=True)
        es.append(energy_of(strained))
    return (es[0] - es[1]) / (2 * h) / atoms.get_volume()
