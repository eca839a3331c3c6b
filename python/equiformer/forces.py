"""Forces and virials from the gradient of the energy with respect to the edge vectors: the
one place they are assembled in Python (training, every exported model); the C++ runtime has
the same once, for its per-layer evaluation.

An edge vector is r_e = x_src - x_dst (+ a periodic shift), so dE/dx_src += g_e and
dE/dx_dst -= g_e with g_e = dE/dr_e; F = -dE/dx; the virial is W = -sum_e r_e (x) g_e (LAMMPS'
sign: sum r (x) F for pair forces), per structure, and per atom half an edge's term on each
end. Everything is float64 whatever the network dtype.
"""

from typing import Optional, Tuple

import torch


def forces_and_virial(edge_index: torch.Tensor, edge_vectors: torch.Tensor, grad: torch.Tensor, num_atoms: int,
                      edge_structure: Optional[torch.Tensor] = None, num_structures: int = 1,
                      per_atom: bool = False) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(forces [N, 3], virial [S, 3, 3], per-atom virial [N, 3, 3] or None).

    ``edge_structure`` [E]: the structure of each edge in a batch of ``num_structures`` (None:
    one structure). ``grad`` keeps its graph (training differentiates the forces)."""
    grad = grad.to(torch.float64)
    src, dst = edge_index[0], edge_index[1]
    forces = torch.zeros((num_atoms, 3), dtype=torch.float64, device=grad.device)
    forces = forces.index_add(0, src, -grad).index_add(0, dst, grad)
    edge_virial = -edge_vectors.detach().to(torch.float64).unsqueeze(2) * grad.unsqueeze(1)  # [E, 3, 3]
    if edge_structure is None:
        virial = edge_virial.sum(0, keepdim=True)
    else:
        virial = torch.zeros((num_structures, 3, 3), dtype=torch.float64, device=grad.device)
        virial = virial.index_add(0, edge_structure, edge_virial)
    atom_virial: Optional[torch.Tensor] = None
    if per_atom:
        half = 0.5 * edge_virial
        atom_virial = torch.zeros((num_atoms, 3, 3), dtype=torch.float64, device=grad.device)
        atom_virial = atom_virial.index_add(0, src, half).index_add(0, dst, half)
    return forces, virial, atom_virial
