"""Datasets of precomputed graphs and a small deterministic batch loader.

Structures are read with ASE (extxyz or any format ``ase.io.read`` understands), turned into
graphs once (neighbour lists included) and kept in memory. :class:`GraphLoader` batches them
with an optional shuffle whose order depends only on ``(seed, epoch)``, so an interrupted
training run resumes on exactly the same batches.
"""

import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from equiformer.data import keys
from equiformer.data.atoms import atoms_to_graph, collate
from equiformer.files import sha256_of

__all__ = [
    "read_structures",
    "infer_species",
    "GraphDataset",
    "GraphLoader",
    "split_indices",
    "file_fingerprint",
]

PathLike = Union[str, os.PathLike]


def read_structures(path: PathLike, index: str = ":", format: Optional[str] = None) -> list:
    """All frames of ``path`` (``index`` is ASE's frame selection, e.g. ``":"`` or ``"::10"``)."""
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as exc:
        raise ValueError(
            f"cannot read structures from {path} with ASE ({type(exc).__name__}: {exc}); "
            "use an extxyz file or another ASE-readable format (set data.format if the "
            "extension does not tell ASE the format)"
        ) from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{path} contains no structures (index {index!r})")
    return frames


def infer_species(frames: Sequence) -> List[str]:
    """Chemical symbols present in ``frames``, ordered by atomic number."""
    from ase.data import atomic_numbers

    symbols = set()
    for atoms in frames:
        symbols.update(atoms.get_chemical_symbols())
    return sorted(symbols, key=lambda s: atomic_numbers[s])


def file_fingerprint(path: PathLike) -> Dict[str, object]:
    """Provenance record of a data file: absolute path, size and SHA-256."""
    path = os.fspath(path)
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": sha256_of(path)}


class GraphDataset:
    """A list of single-structure graphs (with targets) kept in memory."""

    def __init__(self, graphs: List[Dict[str, torch.Tensor]], sources: Optional[List[str]] = None):
        self.graphs = list(graphs)
        self.sources = list(sources) if sources is not None else [f"structure {i}" for i in range(len(graphs))]

    @classmethod
    def from_atoms(
        cls,
        frames: Sequence,
        species_symbols: Sequence[str],
        cutoff: float,
        dtype: torch.dtype = torch.float64,
        energy_key: Optional[str] = None,
        forces_key: Optional[str] = None,
        stress_key: Optional[str] = None,
        sources: Optional[Sequence[str]] = None,
    ) -> "GraphDataset":
        """Graphs of ``frames``; ``sources[i]`` names frame i in error messages."""
        if sources is None:
            sources = [f"structure {i}" for i in range(len(frames))]
        graphs = [
            atoms_to_graph(
                atoms, species_symbols, cutoff, dtype,
                energy_key=energy_key, forces_key=forces_key, stress_key=stress_key, where=src,
            )
            for atoms, src in zip(frames, sources)
        ]
        return cls(graphs, list(sources))

    @classmethod
    def from_file(cls, path: PathLike, species_symbols: Sequence[str], cutoff: float, **kwargs) -> "GraphDataset":
        index = kwargs.pop("index", ":")
        fmt = kwargs.pop("format", None)
        frames = read_structures(path, index, fmt)
        sources = [f"{os.fspath(path)}, frame {i}" for i in range(len(frames))]
        return cls.from_atoms(frames, species_symbols, cutoff, sources=sources, **kwargs)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return self.graphs[i]

    def subset(self, indices: Sequence[int]) -> "GraphDataset":
        return GraphDataset([self.graphs[i] for i in indices], [self.sources[i] for i in indices])

    def has(self, key: str) -> bool:
        return len(self.graphs) > 0 and all(key in g for g in self.graphs)

    def num_atoms(self) -> np.ndarray:
        return np.array([int(g[keys.NUM_ATOMS].sum()) for g in self.graphs], dtype=np.int64)

    def num_edges(self) -> np.ndarray:
        return np.array([int(g[keys.EDGE_INDEX].shape[1]) for g in self.graphs], dtype=np.int64)


def split_indices(
    n: int,
    val_fraction: float,
    seed: int,
    n_train: Optional[int] = None,
    n_val: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of ``range(n)``, reproducible from ``seed``.

    ``n_val`` (else ``round(val_fraction * n)``, at least 1 when n > 1 and the fraction is
    positive) structures go to validation; ``n_train`` caps the training structures (the
    rest is unused, e.g. the MD17 recipe of 950 + 50 out of a long trajectory).
    """
    if n_val is None:
        n_val = int(round(val_fraction * n))
        if val_fraction > 0 and n > 1:
            n_val = max(n_val, 1)
    if n_train is None:
        n_train = n - n_val
    if n_train < 1 or n_val < 0 or n_train + n_val > n:
        raise ValueError(
            f"cannot split {n} structures into {n_train} training and {n_val} validation structures; "
            "lower data.n_train / data.n_val / data.val_fraction or provide more data"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_val])


class GraphLoader:
    """Batches of collated graphs.

    With ``shuffle`` the order of epoch ``e`` is a permutation drawn from
    ``numpy.random.default_rng([seed, e])``: it depends on nothing else, so resuming at
    (epoch, batch) reproduces the remaining batches exactly. Call :meth:`set_epoch` before
    iterating (the trainer does).
    """

    def __init__(self, dataset: GraphDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        n = len(self.dataset)
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return np.arange(n)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, start: int = 0) -> Iterator[Dict[str, torch.Tensor]]:
        """Batches of the current epoch, skipping the first ``start``."""
        order = self.order()
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield collate([self.dataset[int(i)] for i in idx])

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        return self.batches(0)
