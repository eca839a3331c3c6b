"""Named keys of the graph dictionary that flows from data to model to engines.

A graph is a ``Dict[str, Tensor]``. Shapes: N atoms, E directed edges, B structures.

Edges are directed ``src -> dst``: the message from neighbour ``src`` is aggregated on the
centre atom ``dst``. The edge vector is ``positions[src] - positions[dst] + shift`` and
points from the centre to the neighbour (the official Equiformer convention).
"""

from typing import Dict

import torch

Graph = Dict[str, torch.Tensor]

# ---- inputs
POSITIONS = "positions"  # [N, 3] float, length unit of the model
SPECIES = "species"  # [N] int64, index into the model's species list (not Z)
EDGE_INDEX = "edge_index"  # [2, E] int64, row 0 = src (neighbour), row 1 = dst (centre)
SHIFTS = "shifts"  # [E, 3] float, Cartesian periodic shift added to pos[src] - pos[dst]
CELL = "cell"  # [B, 3, 3] float, lattice vectors as rows (zeros when not periodic)
PBC = "pbc"  # [B, 3] bool
BATCH = "batch"  # [N] int64, structure index of every atom
NUM_ATOMS = "num_atoms"  # [B] int64
EDGE_VECTORS = "edge_vectors"  # [E, 3] float, pos[src] - pos[dst] + shift

# ---- targets and outputs
ENERGY = "energy"  # [B] float64 total energy
ATOM_ENERGIES = "atom_energies"  # [N] float64 per-atom energies (sum = ENERGY)
FORCES = "forces"  # [N, 3] -dE/dx
VIRIAL = "virial"  # [B, 3, 3]  -sum_e r_e (x) dE/dr_e
STRESS = "stress"  # [B, 3, 3]  -virial / volume (ASE sign convention)
ATOM_VIRIAL = "atom_virial"  # [N, 3, 3] each edge term split half/half on src and dst
