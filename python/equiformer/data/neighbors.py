"""Neighbour lists for Python-side use (data preparation, training, the ASE calculator, the
OpenMM PythonForce, the export's probe structures), and the periodic-box check of every
Python engine route.

Edges follow the convention of :mod:`equiformer.data.keys`: ``edge_index[0]`` is the source
(neighbour *j*), ``edge_index[1]`` the destination (centre *i*), and the edge vector is
``positions[src] - positions[dst] + shift`` with ``shift = unit_shift @ cell`` (Cartesian).

The list is *full* (both directions of every pair), includes periodic images of an atom
itself when the cutoff exceeds the cell (non-zero shift), and never contains an edge from
an atom to itself with zero shift. Pairs at exactly the cutoff distance are excluded.

The work is done by `vesin <https://github.com/Luthaf/vesin>`_, which handles open and
periodic boundaries, triclinic cells, mixed periodicity and cutoffs longer than the cell.
The engines' own cell lists (TorchScript in `equiformer.openmm.neighbors`, C++ in
cpp/include/equiformer/neighbors.h) need every width of a periodic box to be at least the
cutoff; `check_box` refuses other boxes for the Python routes of those engines.
"""

from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["box_widths", "check_box", "neighbor_list", "validate_structure"]


def _as_pbc(pbc: Union[None, bool, Sequence[bool], np.ndarray]) -> np.ndarray:
    if pbc is None:
        return np.zeros(3, dtype=bool)
    arr = np.asarray(pbc, dtype=bool).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise ValueError(f"pbc must be a bool or 3 bools, got {pbc!r}")
    return arr


def validate_structure(
    positions: np.ndarray, cell: Optional[np.ndarray], pbc: np.ndarray, cutoff: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Check inputs; return (positions [N,3] float64, cell [3,3] float64). Raises ValueError."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {list(positions.shape)}")
    if positions.shape[0] == 0:
        raise ValueError("the structure is empty (0 atoms); remove empty frames from the data")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        idx = np.nonzero(bad)[0][:10].tolist()
        raise ValueError(
            f"positions of atoms {idx} are NaN or infinite; fix or drop this structure "
            "(a diverged simulation or a corrupt file is the usual cause)"
        )
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3], got {list(cell.shape)}")
    if not np.isfinite(cell).all():
        raise ValueError("the cell contains NaN or infinite values; fix the cell of this structure")
    if pbc.any():
        # the periodic lattice vectors must be linearly independent (non-zero, non-collinear)
        periodic_rows = cell[pbc]
        if np.linalg.matrix_rank(periodic_rows, tol=1e-8 * max(1.0, np.abs(cell).max())) < pbc.sum():
            raise ValueError(
                f"the cell has zero volume along its periodic directions (pbc={pbc.tolist()}, "
                f"cell={cell.tolist()}); set a proper cell with atoms.set_cell(...) or turn "
                "periodicity off with atoms.pbc = False"
            )
        if pbc.all() and abs(np.linalg.det(cell)) < 1e-10:
            raise ValueError(
                f"the periodic cell has zero volume (cell={cell.tolist()}); set a proper cell "
                "with atoms.set_cell(...) or turn periodicity off with atoms.pbc = False"
            )
    return positions, cell


def box_widths(box) -> np.ndarray:
    """Perpendicular widths [3] of the cell spanned by the rows of ``box``: the distances
    between its opposite faces."""
    box = np.asarray(box, dtype=np.float64)
    volume = abs(np.linalg.det(box))
    return volume / np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]), axis=1)


def check_box(box, cutoff: float, unit: str = "") -> np.ndarray:
    """``box`` [3, 3] (rows = box vectors) as float64, after refusing (ValueError) a box the
    engines' cell lists cannot search: non-finite, degenerate, or narrower than ``cutoff``
    across one of its vectors (the cell lists look one cell, at least a cutoff thick, in
    every direction). ``unit`` names the length unit of both in the message."""
    box = np.asarray(box, dtype=np.float64).reshape(3, 3)
    u = f" {unit}" if unit else ""
    if not np.all(np.isfinite(box)) or abs(np.linalg.det(box)) <= 0.0:
        raise ValueError(f"invalid periodic box vectors {box.tolist()}{u}: they must be finite and span a volume")
    widths = box_widths(box)
    k = int(np.argmin(widths))
    if not widths[k] >= cutoff:
        raise ValueError(
            f"periodic box too small for the model: its width across box vector {'abc'[k]} is {widths[k]:.6g}{u}, "
            f"smaller than the model cutoff {cutoff:.6g}{u}; every width of the box must be >= the cutoff "
            "(use a larger box or more replicas)"
        )
    return box


# vesin 0.6 dies with SIGFPE (killing Python) on open boundaries spanning about 1e5 cutoffs;
# after `close_gaps` only a gas of thousands of isolated atoms in a row comes near this
MAX_SEARCH_EXTENT = 1.0e4


def close_gaps(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """Positions for the search only: along each direction perpendicular to every periodic
    lattice vector, gaps wider than two cutoffs between consecutive atoms are closed down to
    two cutoffs. No pair closer than the cutoff changes (atoms on one side keep their
    relative positions, across a gap they stay two cutoffs apart, and periodic shifts have
    no component along these directions); the box to search stays small however far apart
    groups of atoms are."""
    periodic = cell[pbc]
    if periodic.shape[0] == 3 or positions.shape[0] < 2:
        return positions
    if periodic.shape[0] == 0:
        directions = np.eye(3)
    else:  # orthonormal basis of the complement of the periodic vectors' span
        _, _, vt = np.linalg.svd(periodic)
        directions = vt[periodic.shape[0]:]
    out = positions.copy()
    for u in directions:
        t = positions @ u
        order = np.argsort(t, kind="stable")
        gaps = np.diff(t[order])
        excess = np.concatenate([[0.0], np.cumsum(np.maximum(gaps - 2.0 * cutoff, 0.0))])
        shift = np.empty_like(t)
        shift[order] = excess
        out -= shift[:, None] * u[None, :]
    return out


def _tree_pairs(positions: np.ndarray, cutoff: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, zero shifts) of every ordered pair closer than the cutoff, by a k-d tree: open
    boundaries too wide for a cell list."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(positions).query_pairs(cutoff, output_type="ndarray")
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    pairs = pairs[d < cutoff]  # query_pairs includes the cutoff distance itself
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    return i, j, np.zeros((len(i), 3), dtype=np.int64)


def neighbor_list(
    positions: np.ndarray,
    cutoff: float,
    cell: Optional[np.ndarray] = None,
    pbc: Union[None, bool, Sequence[bool], np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff``.

    Args:
        positions: [N, 3] Cartesian positions.
        cutoff: radial cutoff (same length unit as positions).
        cell: [3, 3] lattice vectors as rows, or None for an open system.
        pbc: periodicity per direction (bool or 3 bools); None means open.

    Returns:
        ``edge_index`` [2, E] int64 (row 0 = src/neighbour, row 1 = dst/centre),
        ``shifts`` [E, 3] float64 Cartesian shifts and ``unit_shifts`` [E, 3] int64 (multiples
        of the lattice vectors), sorted by (dst, src).
    """
    import vesin

    pbc_arr = _as_pbc(pbc)
    positions, cell = validate_structure(positions, cell, pbc_arr, float(cutoff))
    box = cell.copy()
    if not pbc_arr.any():
        box = np.zeros((3, 3))
    search = close_gaps(positions, cell, pbc_arr, float(cutoff))
    if not pbc_arr.any() and np.ptp(search, axis=0).max(initial=0.0) > MAX_SEARCH_EXTENT * cutoff:
        i, j, S = _tree_pairs(search, float(cutoff))
    else:
        nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
        i, j, S = nl.compute(search, box, pbc_arr.tolist() if pbc_arr.any() else False, "ijS")
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    S = np.asarray(S, dtype=np.int64).reshape(-1, 3)
    # defensive: never an atom to itself with zero shift
    keep = ~((i == j) & (S == 0).all(axis=1))
    i, j, S = i[keep], j[keep], S[keep]
    order = np.lexsort((j, i))
    i, j, S = i[order], j[order], S[order]
    # vesin: vector = pos[j] - pos[i] + S @ box, so src = j (neighbour), dst = i (centre)
    edge_index = np.stack([j, i]).astype(np.int64)
    shifts = S.astype(np.float64) @ box if pbc_arr.any() else np.zeros((len(i), 3))
    return edge_index, shifts, S
