"""What an exported model says about itself (docs/model-format.md), read and checked once.

Every Python route (the ASE calculator, the OpenMM routes, openmm-ml, the demo) reads a model
through `ModelInfo.read` and asks it, rather than the raw metadata, for the cutoff, the
species, the units and the dtype. The C++ runtime (cpp/src/runtime.cpp) is the one reader on
the C++ side; the two accept and refuse the same files.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .export.contract import DEFAULT_MIN_DISTANCE_ANGSTROM, read_metadata
from .units import ENERGY_IN_EV, LENGTH_IN_ANGSTROM, energy_factor, length_factor

DTYPES = ("float32", "float64")
# without these a file cannot be used at all (the C++ runtime requires the same)
REQUIRED = ("cutoff", "species_symbols", "length_unit", "energy_unit", "dtype")


@dataclass(frozen=True)
class ModelInfo:
    """The metadata of one exported model, parsed. Lengths are in `length_unit`, energies in
    `energy_unit`; `metadata` keeps every entry as the text stored in the file."""

    path: str
    format_version: int
    package_version: str
    cutoff: float
    num_layers: int
    interaction_range: float       # cutoff x message-passing hops (the receptive field)
    species_symbols: List[str]
    atomic_numbers: List[int]      # one per species (empty in files that do not say)
    length_unit: str
    energy_unit: str
    dtype: str                     # 'float32' | 'float64'
    device: str                    # the device it was exported for
    energy_offset: float           # added once per structure
    min_distance: float            # closer atoms are warned about (the model has no repulsion)
    hyperparameters: dict = field(repr=False)
    metadata: Dict[str, str] = field(repr=False)
    committee_size: int = 1        # members of a committee file (committee.py); 1: a single model

    @classmethod
    def read(cls, path) -> "ModelInfo":
        """The metadata of the exported file ``path``, checked: a missing, damaged,
        non-exported or malformed file raises an error that says how to fix it."""
        if path is None:
            raise ValueError("no model given: pass the path of an exported model (equiformer-export CKPT MODEL.pt)")
        path = os.fspath(path)
        return cls.from_metadata(path, read_metadata(path))

    @classmethod
    def from_metadata(cls, path: str, files: Dict[str, str]) -> "ModelInfo":
        """Parse the metadata entries ``files`` (text, as stored) of the model at ``path``."""
        for key in REQUIRED:
            if not files.get(key, ""):
                raise ValueError(f"{path} lacks the '{key}' metadata; re-export it with `equiformer-export`")
        length_unit, energy_unit, dtype = files["length_unit"], files["energy_unit"], files["dtype"]
        if length_unit not in LENGTH_IN_ANGSTROM:
            raise ValueError(f"{path}: unsupported length_unit {length_unit!r} "
                             f"(supported: {', '.join(LENGTH_IN_ANGSTROM)})")
        if energy_unit not in ENERGY_IN_EV:
            raise ValueError(f"{path}: unsupported energy_unit {energy_unit!r} (supported: {', '.join(ENERGY_IN_EV)})")
        if dtype not in DTYPES:
            raise ValueError(f"{path}: unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
        try:
            cutoff = float(files["cutoff"])
            num_layers = int(files.get("num_layers") or 1)
            info = cls(
                path=path,
                format_version=int(files.get("format_version") or 0),
                package_version=files.get("package_version", ""),
                cutoff=cutoff,
                num_layers=num_layers,
                # files without it: the widest receptive field, as the C++ runtime assumes
                interaction_range=float(files.get("interaction_range") or cutoff * (num_layers + 2)),
                species_symbols=files["species_symbols"].split(),
                atomic_numbers=[int(z) for z in files.get("atomic_numbers", "").split()],
                length_unit=length_unit,
                energy_unit=energy_unit,
                dtype=dtype,
                device=files.get("device", ""),
                energy_offset=float(files.get("energy_offset") or 0.0),
                min_distance=_min_distance(files.get("min_distance", ""), length_unit),
                hyperparameters=json.loads(files.get("hyperparameters") or "{}"),
                metadata=dict(files),
                committee_size=int(files.get("committee_size") or 1),
            )
        except ValueError as exc:  # json.JSONDecodeError is one too
            raise ValueError(f"{path}: malformed metadata ({exc}); re-export it with `equiformer-export`") from None
        if info.atomic_numbers and len(info.atomic_numbers) != len(info.species_symbols):
            raise ValueError(f"{path}: species_symbols and atomic_numbers differ in length")
        if not info.cutoff > 0.0:
            raise ValueError(f"{path}: cutoff must be positive, got {info.cutoff}")
        if info.committee_size < 1:
            raise ValueError(f"{path}: committee_size must be at least 1, got {info.committee_size}")
        if info.num_layers < 1:
            raise ValueError(f"{path}: num_layers must be at least 1, got {info.num_layers}")
        return info

    @property
    def torch_dtype(self):
        import torch
        return getattr(torch, self.dtype)

    # -- units ---------------------------------------------------------------------------
    def energy_to(self, unit: str) -> float:
        """Multiply an energy in the model's unit by this to get it in ``unit``."""
        return energy_factor(self.energy_unit, unit)

    def length_from(self, unit: str) -> float:
        """Multiply a length in ``unit`` by this to get it in the model's unit."""
        return length_factor(unit, self.length_unit)

    # -- species -------------------------------------------------------------------------
    def species_indices(self, symbols: Sequence[str], where: str = "") -> np.ndarray:
        """Species index of every chemical symbol; an unknown one is a ValueError."""
        from .data.atoms import species_indices
        return species_indices(symbols, self.species_symbols, where)

    def species_of_elements(self, atoms: Sequence[Tuple[Optional[int], str]]) -> List[int]:
        """Species index of every atom given as (atomic number or None, description); atoms
        without an element or with one the model does not know are named in a ValueError."""
        if not self.atomic_numbers:
            raise ValueError(f"the model {self.path} has no atomic_numbers metadata; re-export it with "
                             "`equiformer-export`")
        index = {z: k for k, z in enumerate(self.atomic_numbers)}
        species, missing = [], []
        for z, description in atoms:
            if z is None:
                missing.append(f"{description}: no element")
            elif z not in index:
                missing.append(f"{description}: atomic number {z}")
            else:
                species.append(index[z])
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ValueError(f"the model {self.path} only knows the elements {' '.join(self.species_symbols)}; "
                             f"it cannot handle {'; '.join(missing[:5])}{more}")
        return species


def _min_distance(text: str, length_unit: str) -> float:
    """`min_distance` in the model's length unit; files written before it mean the default."""
    if text:
        return float(text)
    return DEFAULT_MIN_DISTANCE_ANGSTROM * length_factor("Angstrom", length_unit)
