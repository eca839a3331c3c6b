"""Tiny analytic models that speak the exported-model contract, with known answers.

The pair model: the energy of atom i is
    e_i = 1/2 * sum_{j in N(i)} A[s_i, s_j] * (1 - (r_ij / rc)^2)^2 + e0[s_i]
for r_ij < rc. Its forces, virials and energies are computed independently in numpy by
`pair_reference`, so engine tests can check every output against a closed form.
"""

from typing import Dict, Sequence

import numpy as np
import torch

from equiformer import __version__
from equiformer.export.contract import EngineModel, save_engine_model

SYMBOLS = ("H", "C", "O", "Cu")
NUMBERS = (1, 6, 8, 29)
A = np.array(
    [[0.30, 0.50, 0.40, 0.20], [0.50, 0.70, 0.60, 0.25], [0.40, 0.60, 0.80, 0.35], [0.20, 0.25, 0.35, 0.90]]
)
E0 = np.array([-0.5, -1.5, -2.0, -3.0])


class PairAtomEnergies(torch.nn.Module):
    def __init__(self, cutoff: float, dtype: torch.dtype):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("a", torch.tensor(A, dtype=dtype))
        self.register_buffer("e0", torch.tensor(E0, dtype=torch.float64))

    def atom_energies(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        r2 = (edge_vectors * edge_vectors).sum(-1) / (self.cutoff * self.cutoff)
        inside = r2 < 1.0
        pair = torch.where(inside, (1.0 - r2) ** 2, torch.zeros_like(r2))
        src, dst = edge_index[0], edge_index[1]
        pair = 0.5 * self.a[species[dst], species[src]] * pair
        e = torch.zeros(species.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        e = e.index_add(0, dst, pair)
        return e.to(torch.float64) + self.e0[species]


def write_pair_model(path: str, cutoff: float = 3.0, dtype: torch.dtype = torch.float64,
                     length_unit: str = "Angstrom", energy_unit: str = "eV", energy_offset: float = 0.0,
                     num_layers: int = 1) -> str:
    module = torch.jit.script(EngineModel(PairAtomEnergies(cutoff, dtype)))
    save_engine_model(module, path, {
        "package_version": __version__,
        "cutoff": cutoff,
        "num_layers": num_layers,
        "interaction_range": cutoff * num_layers,
        "species_symbols": list(SYMBOLS),
        "atomic_numbers": list(NUMBERS),
        "length_unit": length_unit,
        "energy_unit": energy_unit,
        "dtype": str(dtype).replace("torch.", ""),
        "device": "cpu",
        "energy_offset": energy_offset,
        "hyperparameters": {"model": "analytic-pair", "cutoff": cutoff},
    })
    return path


def pair_reference(symbols: Sequence[str], positions: np.ndarray, cell: np.ndarray = None,
                   cutoff: float = 3.0) -> Dict[str, np.ndarray]:
    """Brute-force energies, forces and virial of the pair model (minimum-image free: loops over
    enough periodic images for any cell)."""
    species = np.array([SYMBOLS.index(s) for s in symbols])
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    shifts = [np.zeros(3)]
    if cell is not None:
        cell = np.asarray(cell, dtype=np.float64)
        heights = np.abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        reps = np.ceil(cutoff / heights).astype(int)
        shifts = [np.array([a, b, c]) @ cell for a in range(-reps[0], reps[0] + 1)
                  for b in range(-reps[1], reps[1] + 1) for c in range(-reps[2], reps[2] + 1)]
    energies = E0[species].copy()
    forces = np.zeros((n, 3))
    virial = np.zeros((3, 3))
    for i in range(n):
        for j in range(n):
            for s in shifts:
                r = pos[j] + s - pos[i]
                d2 = r @ r
                if d2 == 0.0 or d2 >= cutoff ** 2:
                    continue
                x = d2 / cutoff ** 2
                a = A[species[i], species[j]]
                energies[i] += 0.5 * a * (1 - x) ** 2
                g = 0.5 * a * 2 * (1 - x) * (-1) * 2 * r / cutoff ** 2  # d e / d r (r = x_j - x_i)
                forces[j] -= g
                forces[i] += g
                virial -= np.outer(r, g)
    return {"energy": energies.sum(), "energies": energies, "forces": forces, "virial": virial}
