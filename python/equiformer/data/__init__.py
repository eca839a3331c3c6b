"""Data: graph keys, neighbour lists, ASE conversion, batching and datasets."""

from equiformer.data import keys
from equiformer.data.atoms import atoms_to_graph, collate, graph_to, read_targets, species_indices
from equiformer.data.dataset import (
    GraphDataset,
    GraphLoader,
    file_fingerprint,
    infer_species,
    read_structures,
    split_indices,
)
from equiformer.data.neighbors import neighbor_list

__all__ = [
    "keys",
    "atoms_to_graph",
    "collate",
    "graph_to",
    "read_targets",
    "species_indices",
    "GraphDataset",
    "GraphLoader",
    "file_fingerprint",
    "infer_species",
    "read_structures",
    "split_indices",
    "neighbor_list",
]
