"""Tiny analytic models that speak the exported-model contract, with known answers.

The pair model: the energy of atom i is
    e_i = 1/2 * sum_{j in N(i)} A[s_i, s_j] * (1 - (r_ij / rc)^2)^2 + e0[s_i]
for r_ij < rc. Its forces, virials and energies are computed independently in numpy by
`pair_reference`, so engine tests can check every output against a closed form.

The pair committee (issue 16, /tmp/committee-spec.md): K pair models that differ in their
A matrix (`committee_matrices`), in one file with `committee_size` = K, whose forward returns
the committee mean under the usual keys plus the members' outputs (`member_energies`,
`member_atom_energies`, `member_forces`, `member_virials`). Its mean is the pair model with
the mean A (A enters linearly), and `committee_reference` / `model_deviation` give the members'
answers and the deviations in NumPy, independently of the package's committee code.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from equiformer import __version__
from equiformer.export.contract import EngineModel, metadata_files, save_engine_model

SYMBOLS = ("H", "C", "O", "Cu")
NUMBERS = (1, 6, 8, 29)
A = np.array(
    [[0.30, 0.50, 0.40, 0.20], [0.50, 0.70, 0.60, 0.25], [0.40, 0.60, 0.80, 0.35], [0.20, 0.25, 0.35, 0.90]]
)
E0 = np.array([-0.5, -1.5, -2.0, -3.0])


class PairAtomEnergies(torch.nn.Module):
    def __init__(self, cutoff: float, dtype: torch.dtype, a: Optional[np.ndarray] = None):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("a", torch.tensor(A if a is None else a, dtype=dtype))
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


def pair_metadata(cutoff: float, dtype: torch.dtype, length_unit: str, energy_unit: str, energy_offset: float,
                  num_layers: int) -> Dict[str, object]:
    """The exported-model metadata of a pair model (and of a pair committee)."""
    return {
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
    }


def write_pair_model(path: str, cutoff: float = 3.0, dtype: torch.dtype = torch.float64,
                     length_unit: str = "Angstrom", energy_unit: str = "eV", energy_offset: float = 0.0,
                     num_layers: int = 1, a: Optional[np.ndarray] = None) -> str:
    """The pair model (A: the module's matrix, default `A`)."""
    module = torch.jit.script(EngineModel(PairAtomEnergies(cutoff, dtype, a)))
    save_engine_model(module, path, pair_metadata(cutoff, dtype, length_unit, energy_unit, energy_offset, num_layers))
    return path


def committee_matrices(size: int) -> List[np.ndarray]:
    """The A matrices of a pair committee of SIZE members: A scaled entry by entry, differently
    for each member (symmetric, so each member is a pair model like the single one)."""
    i, j = np.indices(A.shape)
    return [A * (1.0 + 0.2 * np.sin(1.3 * (k + 1) + i + j)) for k in range(size)]


class PairCommittee(torch.nn.Module):
    """The exported-committee contract over pair members: the mean under the usual keys, plus
    the members' energies (with their offsets relative to the file's), per-atom energies,
    forces and virials."""

    def __init__(self, cutoff: float, dtype: torch.dtype, matrices: Sequence[np.ndarray], offsets: Sequence[float]):
        super().__init__()
        self.members = torch.nn.ModuleList([EngineModel(PairAtomEnergies(cutoff, dtype, a)) for a in matrices])
        mean = float(np.mean(offsets))
        self.register_buffer("offsets", torch.tensor([o - mean for o in offsets], dtype=torch.float64))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        outs: List[Dict[str, torch.Tensor]] = []
        for member in self.members:
            outs.append(member(species, edge_index, edge_vectors, n_local))
        result: Dict[str, torch.Tensor] = {}
        for key in ("energy", "atom_energies", "forces", "virial", "atom_virial"):
            result[key] = torch.stack([o[key] for o in outs]).mean(0)
        result["member_energies"] = torch.stack([o["energy"] for o in outs]) + self.offsets
        result["member_atom_energies"] = torch.stack([o["atom_energies"] for o in outs])
        result["member_forces"] = torch.stack([o["forces"] for o in outs])
        result["member_virials"] = torch.stack([o["virial"] for o in outs])
        return result


def write_pair_committee(path: str, size: int = 4, cutoff: float = 3.0, dtype: torch.dtype = torch.float64,
                         length_unit: str = "Angstrom", energy_unit: str = "eV",
                         energy_offsets: Optional[Sequence[float]] = None, num_layers: int = 1) -> str:
    """A committee file of SIZE pair members (`committee_matrices`); ENERGY_OFFSETS: each
    member's per-structure offset (default 0), the file's `energy_offset` is their mean."""
    offsets = [0.0] * size if energy_offsets is None else [float(o) for o in energy_offsets]
    if len(offsets) != size:
        raise ValueError(f"{len(offsets)} energy offsets for {size} members")
    module = torch.jit.script(PairCommittee(cutoff, dtype, committee_matrices(size), offsets))
    meta = pair_metadata(cutoff, dtype, length_unit, energy_unit, float(np.mean(offsets)), num_layers)
    meta["hyperparameters"] = {"model": "analytic-pair-committee", "cutoff": cutoff}
    # written with the metadata of the single-model contract plus committee_size (whether or not
    # the package's contract already lists that key)
    files = metadata_files(meta)
    files["committee_size"] = str(size)
    torch.jit.save(module, path, _extra_files=files)
    return path


def committee_reference(symbols: Sequence[str], positions: np.ndarray, cell: np.ndarray = None,
                        cutoff: float = 3.0, size: int = 4,
                        energy_offsets: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    """The members of `write_pair_committee`'s file by `pair_reference`: member_energies [K]
    (totals, each member's own offset included), member_atom_energies [K, N], member_forces
    [K, N, 3], member_virials [K, 3, 3], and the mean under `pair_reference`'s keys (its energy
    with the mean offset)."""
    offsets = np.zeros(size) if energy_offsets is None else np.asarray(energy_offsets, dtype=np.float64)
    refs = [pair_reference(symbols, positions, cell, cutoff, a) for a in committee_matrices(size)]
    out = {
        "member_energies": np.array([r["energy"] for r in refs]) + offsets,
        "member_atom_energies": np.array([r["energies"] for r in refs]),
        "member_forces": np.array([r["forces"] for r in refs]),
        "member_virials": np.array([r["virial"] for r in refs]),
    }
    out["energy"] = out["member_energies"].mean()
    out["energies"] = out["member_atom_energies"].mean(0)
    out["forces"] = out["member_forces"].mean(0)
    out["virial"] = out["member_virials"].mean(0)
    return out


DEVIATION_COLUMNS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e")


def model_deviation(member_forces: np.ndarray, member_virials: np.ndarray,
                    member_energies: np.ndarray) -> Dict[str, np.ndarray]:
    """The committee deviations of the spec (population statistics) from members' forces
    [K, N, 3], virials [K, 3, 3] and total energies [K]: the DP-GEN columns
    (`DEVIATION_COLUMNS`) and the per-atom force deviation `force_deviation` [N]. Written here,
    independently of equiformer.committee, so the engines' tests check against two codes."""
    f = np.asarray(member_forces, dtype=np.float64)
    n = f.shape[1]
    sigma_f = np.sqrt(((f - f.mean(0)) ** 2).sum(-1).mean(0))
    sigma_v = np.asarray(member_virials, dtype=np.float64).reshape(len(f), 9).std(0) / n
    out = {"max_devi_v": sigma_v.max(), "min_devi_v": sigma_v.min(), "avg_devi_v": sigma_v.mean(),
           "max_devi_f": sigma_f.max(), "min_devi_f": sigma_f.min(), "avg_devi_f": sigma_f.mean(),
           "devi_e": np.std(np.asarray(member_energies, dtype=np.float64)) / n}
    out["force_deviation"] = sigma_f
    return out


def image_shifts(cell, cutoff: float):
    """Every lattice vector whose image of an atom can come within ``cutoff`` of another atom
    of the cell (brute force: enough images for any cell); [0] without a cell."""
    if cell is None:
        return [np.zeros(3)]
    cell = np.asarray(cell, dtype=np.float64)
    heights = np.abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reps = np.ceil(cutoff / heights).astype(int)
    return [np.array([a, b, c]) @ cell for a in range(-reps[0], reps[0] + 1)
            for b in range(-reps[1], reps[1] + 1) for c in range(-reps[2], reps[2] + 1)]


def pair_reference(symbols: Sequence[str], positions: np.ndarray, cell: np.ndarray = None,
                   cutoff: float = 3.0, a_matrix: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Brute-force energies, forces and virial of the pair model (minimum-image free: loops over
    enough periodic images for any cell); A_MATRIX: the model's matrix (default `A`)."""
    amat = A if a_matrix is None else np.asarray(a_matrix, dtype=np.float64)
    species = np.array([SYMBOLS.index(s) for s in symbols])
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    shifts = image_shifts(cell, cutoff)
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
                a = amat[species[i], species[j]]
                energies[i] += 0.5 * a * (1 - x) ** 2
                g = 0.5 * a * 2 * (1 - x) * (-1) * 2 * r / cutoff ** 2  # d e / d r (r = x_j - x_i)
                forces[j] -= g
                forces[i] += g
                virial -= np.outer(r, g)
    return {"energy": energies.sum(), "energies": energies, "forces": forces, "virial": virial}
