"""Neighbour list against a brute-force reference."""

import itertools
import math

import numpy as np
import pytest

from equiformer.data.neighbors import neighbor_list


def brute_force(positions, cutoff, cell, pbc):
    """Set of (src, dst, unit shift) with 0 < |pos[src] - pos[dst] + n @ cell| < cutoff."""
    positions = np.asarray(positions, float)
    cell = np.asarray(cell, float)
    pbc = np.asarray(pbc, bool)
    ranges = []
    for d in range(3):
        if not pbc[d]:
            ranges.append([0])
            continue
        # distance between the lattice planes spanned by the other two vectors
        a, b = cell[(d + 1) % 3], cell[(d + 2) % 3]
        normal = np.cross(a, b)
        if np.linalg.norm(normal) < 1e-12:
            height = np.linalg.norm(cell[d])
        else:
            height = abs(cell[d] @ normal) / np.linalg.norm(normal)
        k = int(math.ceil((cutoff + np.ptp(positions @ (normal / max(np.linalg.norm(normal), 1e-12))) + 1e-9) / height)) + 1
        ranges.append(range(-k, k + 1))
    out = set()
    n = len(positions)
    for shift in itertools.product(*ranges):
        s = np.array(shift, float) @ cell if pbc.any() else np.zeros(3)
        for i in range(n):
            for j in range(n):
                if i == j and not any(shift):
                    continue
                d = np.linalg.norm(positions[j] - positions[i] + s)
                if d < cutoff:
                    out.add((j, i, tuple(int(x) for x in shift)))
    return out


def ours(positions, cutoff, cell, pbc):
    edge_index, shifts, unit = neighbor_list(positions, cutoff, cell, pbc)
    assert edge_index.dtype == np.int64 and edge_index.shape[0] == 2
    assert shifts.shape == (edge_index.shape[1], 3)
    vec = positions[edge_index[0]] - positions[edge_index[1]] + shifts
    assert (np.linalg.norm(vec, axis=1) < cutoff).all()
    assert (np.linalg.norm(vec, axis=1) > 0).all()  # no self edge with zero shift
    if pbc is not None and np.any(pbc):
        np.testing.assert_allclose(shifts, unit @ np.asarray(cell), atol=1e-12)
    result = {(int(s), int(d), tuple(int(x) for x in u)) for s, d, u in zip(edge_index[0], edge_index[1], unit)}
    assert len(result) == edge_index.shape[1]  # no duplicates
    return result


RNG = np.random.default_rng(42)


def _random_positions(n, cell):
    return RNG.random((n, 3)) @ np.asarray(cell)


def test_open_boundaries():
    pos = RNG.random((12, 3)) * 6.0
    assert ours(pos, 3.0, None, None) == brute_force(pos, 3.0, np.zeros((3, 3)), [False] * 3)


def test_periodic_cubic():
    cell = np.eye(3) * 7.0
    pos = _random_positions(10, cell)
    assert ours(pos, 3.0, cell, True) == brute_force(pos, 3.0, cell, [True] * 3)


def test_periodic_triclinic():
    cell = np.array([[5.0, 0.0, 0.0], [2.0, 4.5, 0.0], [-1.0, 1.5, 4.0]])
    pos = _random_positions(8, cell)
    assert ours(pos, 3.5, cell, [True] * 3) == brute_force(pos, 3.5, cell, [True] * 3)


def test_small_cell_sees_own_images():
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 2.2, 0.0], [0.3, -0.4, 2.5]])
    pos = _random_positions(2, cell)
    got = ours(pos, 4.0, cell, True)
    assert got == brute_force(pos, 4.0, cell, [True] * 3)
    assert any(s == d for s, d, _ in got)  # self images present


def test_single_atom_in_small_cell():
    cell = np.eye(3) * 1.7
    pos = np.zeros((1, 3))
    got = ours(pos, 3.0, cell, True)
    assert got == brute_force(pos, 3.0, cell, [True] * 3)
    assert len(got) > 0


@pytest.mark.parametrize("pbc", [[True, True, False], [True, False, False], [False, True, True]])
def test_mixed_pbc(pbc):
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 3.5, 0.0], [0.5, 0.5, 6.0]])
    pos = _random_positions(6, cell)
    assert ours(pos, 3.2, cell, pbc) == brute_force(pos, 3.2, cell, pbc)


def test_mixed_pbc_with_zero_nonperiodic_vector():
    cell = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    pos = RNG.random((5, 3)) * 3.0
    got = ours(pos, 3.5, cell, [True, True, False])
    assert got == brute_force(pos, 3.5, cell, [True, True, False])


def test_bad_input_errors():
    cell = np.eye(3) * 5
    pos = RNG.random((3, 3))
    bad = pos.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"atoms \[1\].*NaN or infinite"):
        neighbor_list(bad, 3.0, cell, True)
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        neighbor_list(bad, 3.0, None, False)
    with pytest.raises(ValueError, match="empty"):
        neighbor_list(np.zeros((0, 3)), 3.0, cell, True)
    with pytest.raises(ValueError, match="zero volume.*set_cell"):
        neighbor_list(pos, 3.0, np.zeros((3, 3)), True)
    flat = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])
    with pytest.raises(ValueError, match="zero volume"):
        neighbor_list(pos, 3.0, flat, [True, True, False])
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(pos, -1.0, cell, True)


# ------------------------------------------------------------------ far-apart groups
# vesin 0.6.2 dies with SIGFPE (killing Python) on open boundaries spanning ~1e5 cutoffs:
# these used to crash the process, now they give the same pairs as the brute force.


@pytest.mark.parametrize("distance", [1e3, 1e6, 1e9])
def test_far_apart_groups_open(distance):
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [distance, 0.0, 0.0], [distance + 2.0, 1.0, 0.0],
                    [0.0, distance, distance]])
    assert ours(pos, 4.5, np.zeros((3, 3)), [False] * 3) == brute_force(pos, 4.5, np.zeros((3, 3)), [False] * 3)


def test_far_apart_groups_mixed_periodicity():
    """A slab periodic in x and y with a group 1e6 A away along z (and a tilted cell, so the
    gaps close along the normal of the periodic plane, not along z)."""
    cell = np.array([[6.0, 0.0, 0.0], [1.5, 6.0, 0.0], [0.0, 0.0, 0.0]])
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.5], [3.0, 2.0, 1e6], [3.5, 2.0, 1e6 + 1.0]])
    pbc = [True, True, False]
    assert ours(pos, 4.5, cell, pbc) == brute_force(pos, 4.5, cell, pbc)


def test_gas_wider_than_a_cell_list():
    """Thousands of isolated atoms in a row still span more than MAX_SEARCH_EXTENT cutoffs
    after the gaps close: the k-d tree takes over; pairs closer than the cutoff are found
    and pairs at exactly the cutoff are not (as in the cell list)."""
    from equiformer.data.neighbors import MAX_SEARCH_EXTENT

    n = int(MAX_SEARCH_EXTENT) // 2 + 100
    pos = np.zeros((n, 3))
    pos[:, 0] = np.arange(n) * 100.0
    pos[1] = pos[0] + [1.0, 0.0, 0.0]
    pos[3] = pos[2] + [0.0, 4.5, 0.0]  # exactly the cutoff: excluded
    edge_index, shifts, _ = neighbor_list(pos, 4.5)
    assert sorted(map(tuple, edge_index.T.tolist())) == [(0, 1), (1, 0)]
    assert not shifts.any()
