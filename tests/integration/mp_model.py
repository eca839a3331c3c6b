"""A small analytic message-passing model (num_layers = 2) that speaks the exported-model
contract, with the layer-by-layer methods embed / block / readout.

    h0_i      = w[s_i]
    h(k+1)_i  = tanh(h(k)_i + c_k * sum_{j in N(i)} phi(r_ij) * h(k)_j),  phi = (1 - r^2/rc^2)^2
    e_i       = a[s_i] * h(L)_i^2 + e0[s_i]

The energy of an atom depends on atoms up to num_layers x cutoff away, so an engine that
truncates the graph wrongly gets wrong answers. `mp_reference` evaluates the same model on
a graph built here by brute force over periodic images (independent of any engine).
"""

from typing import Dict, Sequence

import numpy as np
import torch

from analytic_models import image_shifts
from equiformer import __version__
from equiformer.export.contract import engine_outputs, save_engine_model

SYMBOLS = ("H", "C", "O", "Cu")
NUMBERS = (1, 6, 8, 29)


class MessagePassing(torch.nn.Module):
    def __init__(self, cutoff: float, num_layers: int = 2):
        super().__init__()
        self.cutoff = cutoff
        self.num_layers = num_layers
        self.register_buffer("w", torch.tensor([0.3, -0.5, 0.8, 1.1], dtype=torch.float64))
        self.register_buffer("a", torch.tensor([0.7, 1.3, -0.9, 2.1], dtype=torch.float64))
        self.register_buffer("e0", torch.tensor([-0.5, -1.5, -2.0, -3.0], dtype=torch.float64))
        self.register_buffer("c", torch.tensor([0.6, -0.4, 0.3, 0.2][:num_layers], dtype=torch.float64))

    @torch.jit.export
    def embed(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.w[species].unsqueeze(1)

    @torch.jit.export
    def block(self, k: int, x: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        r2 = (edge_vectors * edge_vectors).sum(-1) / (self.cutoff * self.cutoff)
        phi = torch.where(r2 < 1.0, (1.0 - r2) ** 2, torch.zeros_like(r2))
        msg = phi.unsqueeze(1) * x[edge_index[0]]
        agg = torch.zeros_like(x).index_add(0, edge_index[1], msg)
        return torch.tanh(x + self.c[k] * agg)

    @torch.jit.export
    def readout(self, species: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.a[species] * x[:, 0] ** 2 + self.e0[species]

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        x = self.embed(species, edge_index, edge_vectors)
        for k in range(self.num_layers):
            x = self.block(k, x, edge_index, edge_vectors)
        atom_energies = self.readout(species, x, edge_index, edge_vectors)
        grads = torch.autograd.grad([atom_energies[:n_local].sum()], [edge_vectors], allow_unused=True)
        grad = grads[0]
        if grad is None:
            grad = torch.zeros_like(edge_vectors)
        return engine_outputs(edge_index, edge_vectors, grad, atom_energies, n_local)


def write_mp_model(path: str, cutoff: float = 2.5, num_layers: int = 2) -> str:
    module = torch.jit.script(MessagePassing(cutoff, num_layers))
    save_engine_model(module, path, {
        "package_version": __version__, "cutoff": cutoff, "num_layers": num_layers,
        "interaction_range": cutoff * num_layers, "species_symbols": list(SYMBOLS),
        "atomic_numbers": list(NUMBERS), "length_unit": "Angstrom", "energy_unit": "eV",
        "dtype": "float64", "device": "cpu", "energy_offset": 0.0,
        "hyperparameters": {"model": "analytic-message-passing", "cutoff": cutoff, "num_layers": num_layers},
    })
    return path


def brute_force_graph(positions: np.ndarray, cell, cutoff: float):
    pos = np.asarray(positions, dtype=np.float64)
    shifts = image_shifts(cell, cutoff)
    src, dst, vec = [], [], []
    for i in range(len(pos)):
        for j in range(len(pos)):
            for s in shifts:
                r = pos[j] + s - pos[i]
                if 0.0 < r @ r < cutoff ** 2:
                    src.append(j), dst.append(i), vec.append(r)
    return np.array([src, dst], dtype=np.int64).reshape(2, -1), np.array(vec, dtype=np.float64).reshape(-1, 3)


def mp_reference(model_path: str, symbols: Sequence[str], positions: np.ndarray, cell=None,
                 cutoff: float = 2.5) -> Dict[str, np.ndarray]:
    module = torch.jit.load(model_path)
    species = torch.tensor([SYMBOLS.index(s) for s in symbols])
    index, vec = brute_force_graph(positions, cell, cutoff)
    out = module(species, torch.from_numpy(index), torch.from_numpy(vec), len(symbols))
    return {"energy": float(out["energy"]), "energies": out["atom_energies"].numpy(),
            "forces": out["forces"].numpy(), "virial": out["virial"].numpy()}


def exported_reference(model_path: str, symbols: Sequence[str], positions: np.ndarray, cell=None
                       ) -> Dict[str, np.ndarray]:
    """Any exported model evaluated on a brute-force periodic graph (independent of the
    engines' neighbour lists and ghost handling). Assumes eV / Angstrom models."""
    from equiformer.export.contract import read_metadata

    meta = read_metadata(model_path)
    cutoff = float(meta["cutoff"])
    known = meta["species_symbols"].split()
    module = torch.jit.load(model_path, map_location="cpu")
    dtype = torch.float32 if meta["dtype"] == "float32" else torch.float64
    species = torch.tensor([known.index(s) for s in symbols])
    index, vec = brute_force_graph(positions, cell, cutoff)
    out = module(species, torch.from_numpy(index), torch.from_numpy(vec).to(dtype), len(symbols))
    offset = float(meta.get("energy_offset") or 0.0)
    energies = out["atom_energies"].numpy() + offset / len(symbols)
    return {"energy": float(out["energy"]) + offset, "energies": energies,
            "forces": out["forces"].numpy(), "virial": out["virial"].numpy()}
