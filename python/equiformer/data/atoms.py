"""ASE ``Atoms`` -> graph dictionaries, reference targets, and batching.

A single-structure graph has every key of :mod:`equiformer.data.keys` that describes the
input (``B = 1``) plus, when requested, the targets ``ENERGY`` [1], ``FORCES`` [N, 3] and
``STRESS`` [1, 3, 3], always float64. :func:`collate` joins graphs into one batched graph.
"""

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from equiformer.data import keys
from equiformer.data.neighbors import neighbor_list

__all__ = [
    "atoms_to_graph",
    "read_targets",
    "collate",
    "graph_to",
    "species_indices",
    "TARGET_KEYS",
]

TARGET_KEYS = (keys.ENERGY, keys.FORCES, keys.STRESS)


def species_indices(symbols: Sequence[str], species_symbols: Sequence[str], where: str = "") -> np.ndarray:
    """Map chemical symbols to indices into ``species_symbols``; unknown symbols -> ValueError."""
    lookup = {s: i for i, s in enumerate(species_symbols)}
    unknown = sorted({s for s in symbols if s not in lookup})
    if unknown:
        loc = f" in {where}" if where else ""
        raise ValueError(
            f"unknown species {unknown}{loc}: the model knows only {list(species_symbols)}; "
            "use a model trained with these elements or remove the structures that contain them"
        )
    return np.fromiter((lookup[s] for s in symbols), dtype=np.int64, count=len(symbols))


def _stress_to_3x3(value, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 6:  # Voigt order xx yy zz yz xz xy (ASE)
        xx, yy, zz, yz, xz, xy = arr
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if arr.size == 9:
        return arr.reshape(3, 3)
    raise ValueError(f"stress{where} must have 6 (Voigt) or 9 components, got {arr.size}")


def _lookup(atoms, key: str, per_atom: bool):
    """Value of ``key`` from the calculator results, then atoms.arrays / atoms.info."""
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    if key in results and results[key] is not None:
        return results[key]
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    other = atoms.info if per_atom else atoms.arrays
    if key in other:
        return other[key]
    return None


def _available(atoms) -> List[str]:
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    names = set(results) | set(atoms.info) | set(atoms.arrays)
    names -= {"numbers", "positions"}
    return sorted(names)


def read_targets(
    atoms,
    energy_key: Optional[str] = None,
    forces_key: Optional[str] = None,
    stress_key: Optional[str] = None,
    where: str = "",
) -> Dict[str, torch.Tensor]:
    """Reference energy/forces/stress of one structure (float64 tensors, graph shapes).

    Each key is looked up first in the attached calculator's results (what ASE's extxyz reader
    produces for ``energy``/``forces``/``stress``), then in ``atoms.info`` / ``atoms.arrays``.
    A key that is asked for (not None) but missing raises a ValueError naming ``where``
    (e.g. "file.xyz, frame 12"), the key and the keys that are present.
    """
    out: Dict[str, torch.Tensor] = {}
    loc = f" ({where})" if where else ""

    def lookup(kind: str, key: str, per_atom: bool):
        value = _lookup(atoms, key, per_atom=per_atom)
        if value is None:
            raise ValueError(
                f"{kind} key {key!r} not found{loc}; available keys: {_available(atoms)}. "
                f"Set the data.{kind}_key option to the right name, or set the {kind} loss weight to 0"
            )
        return value

    def finite(arr: np.ndarray, what: str) -> np.ndarray:
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}{loc}: NaN or infinite values")
        return arr

    n = len(atoms)
    if energy_key is not None:
        value = lookup("energy", energy_key, per_atom=False)
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.size != 1 or not np.isfinite(arr).all():
            raise ValueError(f"energy {energy_key!r}{loc} must be one finite number, got {value!r}")
        out[keys.ENERGY] = torch.tensor(arr, dtype=torch.float64)
    if forces_key is not None:
        arr = np.asarray(lookup("forces", forces_key, per_atom=True), dtype=np.float64)
        if arr.shape != (n, 3):
            raise ValueError(f"forces {forces_key!r}{loc} must have shape [{n}, 3], got {list(arr.shape)}")
        out[keys.FORCES] = torch.tensor(finite(arr, f"forces {forces_key!r}"), dtype=torch.float64)
    if stress_key is not None:
        arr = finite(_stress_to_3x3(lookup("stress", stress_key, per_atom=False), loc), f"stress {stress_key!r}")
        out[keys.STRESS] = torch.tensor(arr, dtype=torch.float64).unsqueeze(0)
    return out


def atoms_to_graph(
    atoms,
    species_symbols: Sequence[str],
    cutoff: float,
    dtype: torch.dtype = torch.float64,
    energy_key: Optional[str] = None,
    forces_key: Optional[str] = None,
    stress_key: Optional[str] = None,
    where: str = "",
) -> Dict[str, torch.Tensor]:
    """One structure as a graph dictionary (batch of one) with its neighbour list.

    ``dtype`` is the float dtype of positions, shifts and cell (the model's dtype); targets
    are float64. Targets are read only for the keys that are not None (see read_targets).
    """
    symbols = atoms.get_chemical_symbols()
    species = species_indices(symbols, species_symbols, where)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    cell = np.asarray(atoms.get_cell().array, dtype=np.float64)
    try:
        edge_index, shifts, _ = neighbor_list(atoms.get_positions(), cutoff, cell, pbc)
    except ValueError as exc:
        if where:
            raise ValueError(f"{where}: {exc}") from None
        raise
    if not pbc.any():
        cell = np.zeros((3, 3))
    n = len(atoms)
    graph = {
        keys.POSITIONS: torch.tensor(atoms.get_positions(), dtype=dtype),
        keys.SPECIES: torch.from_numpy(species),
        keys.EDGE_INDEX: torch.from_numpy(edge_index),
        keys.SHIFTS: torch.tensor(shifts, dtype=dtype),
        keys.CELL: torch.tensor(cell, dtype=dtype).unsqueeze(0),
        keys.PBC: torch.tensor(pbc, dtype=torch.bool).unsqueeze(0),
        keys.BATCH: torch.zeros(n, dtype=torch.int64),
        keys.NUM_ATOMS: torch.tensor([n], dtype=torch.int64),
    }
    graph.update(read_targets(atoms, energy_key, forces_key, stress_key, where))
    return graph


def collate(graphs: Iterable[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Join graphs (each a batch of one or more structures) into one batched graph.

    Node-level tensors are concatenated, ``EDGE_INDEX`` is offset by the atoms before it and
    ``BATCH`` by the structures before it. All graphs must carry the same keys.
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("collate needs at least one graph")
    names = set(graphs[0])
    for k, g in enumerate(graphs[1:], start=1):
        if set(g) != names:
            raise ValueError(
                f"graph {k} has keys {sorted(g)} but graph 0 has {sorted(names)}; "
                "all structures in a batch must carry the same targets"
            )
    out: Dict[str, torch.Tensor] = {}
    atom_offset = 0
    graph_offset = 0
    edge_parts, batch_parts = [], []
    for g in graphs:
        edge_parts.append(g[keys.EDGE_INDEX] + atom_offset)
        batch_parts.append(g[keys.BATCH] + graph_offset)
        atom_offset += g[keys.POSITIONS].shape[0]
        graph_offset += g[keys.NUM_ATOMS].shape[0]
    out[keys.EDGE_INDEX] = torch.cat(edge_parts, dim=1)
    out[keys.BATCH] = torch.cat(batch_parts)
    for name in names:
        if name in (keys.EDGE_INDEX, keys.BATCH):
            continue
        out[name] = torch.cat([g[name] for g in graphs], dim=0)
    return out


def graph_to(graph: Dict[str, torch.Tensor], device=None, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """Move a graph to ``device``; cast the model-input floats (not targets) to ``dtype``."""
    floats = (keys.POSITIONS, keys.SHIFTS, keys.CELL, keys.EDGE_VECTORS)
    out = {}
    for name, value in graph.items():
        if dtype is not None and name in floats:
            value = value.to(dtype)
        out[name] = value.to(device) if device is not None else value
    return out
