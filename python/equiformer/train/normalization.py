"""Per-species reference energies and the energy scale, fitted on the training data.

The model predicts ``E_i = scale * y_i + atom_ref[species_i]`` per atom (``y_i`` the network
output). ``atom_ref`` comes from a least-squares fit of the total energies on the species
counts (minimum-norm solution: species absent from the training data get 0, and for a data
set of one composition, e.g. MD17, the fit spreads the mean energy over the species). The
scale is the RMS of the reference force components when forces are trained (forces are the
gradient of the scaled output, so the network then sees targets of unit size), otherwise the
standard deviation of the per-atom energy residuals after subtracting the references.
"""

from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

from equiformer.data import keys

__all__ = ["species_counts", "fit_atom_ref", "fit_scale", "fit_normalization"]


def species_counts(dataset, num_species: int) -> np.ndarray:
    """[B, S] number of atoms of each species in every structure."""
    counts = np.zeros((len(dataset), num_species), dtype=np.float64)
    for b, g in enumerate(dataset.graphs):
        counts[b] = np.bincount(g[keys.SPECIES].numpy(), minlength=num_species)
    return counts


def fit_atom_ref(dataset, species_symbols: Sequence[str], method: Union[str, Dict[str, float]] = "lstsq") -> np.ndarray:
    num_species = len(species_symbols)
    if isinstance(method, dict):
        missing = [s for s in species_symbols if s not in method]
        unknown = [s for s in method if s not in species_symbols]
        if missing or unknown:
            raise ValueError(
                f"normalization.atom_ref must give an energy for every model species {list(species_symbols)}; "
                f"missing {missing}, not in the model {unknown}"
            )
        return np.array([float(method[s]) for s in species_symbols])
    if method == "zero" or not dataset.has(keys.ENERGY):
        return np.zeros(num_species)
    if method != "lstsq":
        raise ValueError(f"unknown atom_ref method {method!r}; use 'lstsq', 'zero' or a mapping")
    counts = species_counts(dataset, num_species)
    energies = np.array([float(g[keys.ENERGY].sum()) for g in dataset.graphs])
    ref, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return ref


def fit_scale(dataset, atom_ref: np.ndarray, method: Union[str, float] = "auto", use_forces: bool = True) -> Tuple[float, str]:
    """Energy scale and the name of the method actually used."""
    if not isinstance(method, str):
        return float(method), "fixed"
    has_forces = dataset.has(keys.FORCES)
    if method == "forces_rms" or (method == "auto" and use_forces and has_forces):
        if not has_forces:
            raise ValueError("normalization.scale 'forces_rms' needs forces in the training data")
        sq = sum(float((g[keys.FORCES] ** 2).sum()) for g in dataset.graphs)
        n = sum(g[keys.FORCES].numel() for g in dataset.graphs)
        scale, used = (sq / max(n, 1)) ** 0.5, "forces_rms"
    elif dataset.has(keys.ENERGY):
        counts = species_counts(dataset, len(atom_ref))
        energies = np.array([float(g[keys.ENERGY].sum()) for g in dataset.graphs])
        natoms = counts.sum(1)
        residual = (energies - counts @ atom_ref) / natoms
        scale, used = float(np.std(residual)), "energy_std"
    else:
        scale, used = 1.0, "none"
    if not np.isfinite(scale) or scale < 1e-8:
        # a single structure or constant data: fall back to 1 so that training still works
        return 1.0, used + " (degenerate, using 1.0)"
    return float(scale), used


def fit_normalization(dataset, species_symbols: Sequence[str], atom_ref="lstsq", scale="auto",
                      use_forces: bool = True) -> Dict[str, object]:
    ref = fit_atom_ref(dataset, species_symbols, atom_ref)
    s, used = fit_scale(dataset, ref, scale, use_forces)
    return {
        "atom_ref": [float(x) for x in ref],
        "scale": float(s),
        "atom_ref_method": atom_ref if isinstance(atom_ref, str) else "fixed",
        "scale_method": used,
        "species": list(species_symbols),
    }


def apply_normalization(model, norm: Dict[str, object]) -> None:
    model.set_energy_normalization(torch.tensor(norm["atom_ref"], dtype=torch.float64), float(norm["scale"]))
