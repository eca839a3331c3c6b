"""One set of neighbour-search cases and one brute-force reference for the package's three
searches: vesin (`equiformer.data.neighbors`, Python routes), the TorchScript cell list
(`equiformer.openmm.neighbors`, TorchForce) and the C++ cell list
(cpp/include/equiformer/neighbors.h, OpenMM plugin). The cases are those all three support:
open boundaries, or periodic cells (triclinic too) at least one cutoff wide in every
direction, with positions given outside the cell as well.

Run as a script it writes the cases and their reference edges for the C++ test (ctest
`openmm_neighbor_list_cases`, then `openmm_neighbor_list`):

    python tests/neighbor_cases.py OUTFILE
"""

import itertools
import math
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np


@dataclass
class Case:
    positions: np.ndarray         # [N, 3]
    cell: Optional[np.ndarray]    # [3, 3], rows = box vectors; None = open boundaries
    cutoff: float


def brute_force(positions, cutoff: float, cell=None, pbc=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, unit_shifts [E, 3]) of every directed edge with
    0 < |pos[src] - pos[dst] + unit_shift @ cell| < cutoff (an atom's own images included,
    never an atom to itself without a shift), sorted by (dst, src, shift). pbc: a bool or 3
    (None: open); a direction that is not periodic has no shifts."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(False if pbc is None else pbc, dtype=bool), (3,))
    ranges = []
    for d in range(3):
        if not pbc[d]:
            ranges.append([0])
            continue
        # distance between the lattice planes spanned by the other two vectors, and how far
        # the atoms spread across them: translations beyond both cannot bring a pair closer
        normal = np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3])
        norm = np.linalg.norm(normal)
        height = abs(cell[d] @ normal) / norm if norm > 1e-12 else np.linalg.norm(cell[d])
        spread = np.ptp(positions @ (normal / max(norm, 1e-12))) if len(positions) else 0.0
        k = int(math.ceil((cutoff + spread + 1e-9) / height)) + 1
        ranges.append(range(-k, k + 1))
    n = len(positions)
    same = np.eye(n, dtype=bool)
    translations = np.array(list(itertools.product(*ranges)), dtype=np.int64)
    src, dst, shifts = [], [], []
    for chunk in np.array_split(translations, max(1, len(translations) // 64)):  # [t, 3] at a time
        d = positions[None, None, :, :] - positions[None, :, None, :] + (chunk @ cell)[:, None, None, :]  # [t, i, j]
        close = (d * d).sum(-1) < cutoff * cutoff
        close[~chunk.any(1)] &= ~same
        t, i, j = np.nonzero(close)
        src.append(j)
        dst.append(i)
        shifts.append(chunk[t])
    src, dst, shifts = np.concatenate(src), np.concatenate(dst), np.concatenate(shifts).reshape(-1, 3)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], src, dst))
    return src[order], dst[order], shifts[order]


def reference_edges(case: Case) -> Tuple[np.ndarray, np.ndarray]:
    """The brute-force answer for a case: edge_index [2, E] (src, dst) and vectors [E, 3]."""
    positions, cell = case.positions, case.cell
    if cell is None:
        cell = np.zeros((3, 3))
    else:  # moving atoms by whole lattice vectors changes no edge vector, and keeps the search small
        positions = positions - np.floor(np.linalg.solve(cell.T, positions.T).T) @ cell
    src, dst, shifts = brute_force(positions, case.cutoff, cell, case.cell is not None)
    return np.stack([src, dst]), positions[src] - positions[dst] + shifts @ cell


def canonical(edge_index, vectors) -> np.ndarray:
    """Rows (src, dst, vector) in a fixed order, to compare lists that differ in order only
    (vectors rounded to 1e-8 for the ordering; compare the rows with a tolerance)."""
    rows = np.concatenate([np.asarray(edge_index, dtype=np.float64).reshape(2, -1).T,
                           np.asarray(vectors, dtype=np.float64).reshape(-1, 3)], axis=1)
    keys = np.round(rows, 8)
    return rows[np.lexsort(keys.T[::-1])]


def _unwrapped(rng, n, cell, spread):
    """n positions inside the cell, each then moved by up to `spread` lattice vectors."""
    return rng.random((n, 3)) @ cell + rng.integers(-spread, spread + 1, (n, 3)) @ cell


def _random_reduced_cell(rng, cutoff):
    """A triclinic cell in OpenMM's reduced form, from barely over one cutoff wide to 5."""
    a, b, c = rng.uniform(1.05, 5.0, 3) * cutoff
    cell = np.array([[a, 0, 0], [rng.uniform(-0.5, 0.5) * a, b, 0],
                     [rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.5, 0.5) * b, c]])
    widths = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return cell * max(1.0, 1.01 * cutoff / widths.min())


def cases() -> Dict[str, Case]:
    """Every case, by name (deterministic)."""
    out = {}
    for n in (1, 2, 40, 300):
        out[f"open-{n}"] = Case(np.random.default_rng(n).random((n, 3)) * 12.0 - 40.0, None, 3.0)
    rng = np.random.default_rng(7)
    clusters = rng.random((60, 3)) * 2.5
    clusters[1::2] += 1000.0  # two groups 1000 cutoffs apart: the cell grid must be capped
    out["open-two-distant-clusters"] = Case(clusters, None, 1.0)
    # {a, bx, by, cx, cy, cz} of reduced cells
    for name, (a, bx, by, cx, cy, cz) in {
        "orthorhombic-several-cells": (3.7, 0, 3.1, 0, 0, 4.2),
        "orthorhombic-barely-wider-than-cutoff": (1.05, 0, 1.2, 0, 0, 1.6),
        "triclinic-two-cells-per-axis": (2.2, 0.9, 2.1, -1.0, 0.7, 2.4),
        "triclinic-strongly-skewed": (4.5, 2.2, 3.9, 2.0, -1.9, 3.3),
        "triclinic-skewed-and-thin": (1.3, 0.6, 1.25, 0.5, 0.6, 1.1),
    }.items():
        cell = np.array([[a, 0, 0], [bx, by, 0], [cx, cy, cz]], dtype=np.float64)
        out[name] = Case(_unwrapped(rng, 24, cell, 1), cell, 1.0)
    for seed in range(6):
        r = np.random.default_rng(seed)
        cell = _random_reduced_cell(r, 2.5)
        out[f"triclinic-random-{seed}"] = Case(_unwrapped(r, int(r.integers(1, 60)), cell, 3), cell, 2.5)
    r = np.random.default_rng(1)
    dilute = np.diag([80.0, 75.0, 90.0])
    pos = r.random((30, 3)) @ dilute
    pos[1] = pos[0] + [1.0, 0.5, 0.0]  # one pair in a box far wider than the cell budget
    out["dilute-periodic"] = Case(pos, dilute, 2.0)
    return out


def write_cases(path: str) -> None:
    """All cases with their reference edges, as text for the C++ test:
        case NAME / N PERIODIC CUTOFF / 9 box numbers / 3N positions / E / E lines 'src dst vx vy vz'"""
    with open(path, "w") as out:
        for name, case in cases().items():
            edge_index, vectors = reference_edges(case)
            box = np.zeros((3, 3)) if case.cell is None else case.cell
            out.write(f"case {name}\n{len(case.positions)} {int(case.cell is not None)} {case.cutoff!r}\n")
            out.write(" ".join(repr(float(v)) for v in box.ravel()) + "\n")
            out.write(" ".join(repr(float(v)) for v in case.positions.ravel()) + "\n")
            out.write(f"{edge_index.shape[1]}\n")
            for (s, d), v in zip(edge_index.T, vectors):
                out.write(f"{s} {d} " + " ".join(repr(float(x)) for x in v) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/neighbor_cases.py OUTFILE")
    write_cases(sys.argv[1])
