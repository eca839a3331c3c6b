"""Neighbour list against the brute-force reference (tests/neighbor_cases.py), on the cases
shared with the TorchScript and C++ searches and on those only vesin supports (mixed
periodicity, cells narrower than the cutoff, far-apart groups); the periodic-box check."""

import sys
from pathlib import Path

import numpy as np
import pytest

from equiformer.data.neighbors import box_widths, check_box, neighbor_list

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from neighbor_cases import brute_force, canonical, cases, reference_edges  # noqa: E402

CASES = cases()


def brute_force_set(positions, cutoff, cell, pbc):
    """Set of (src, dst, unit shift) of the brute-force reference."""
    src, dst, shifts = brute_force(positions, cutoff, cell, pbc)
    return {(int(s), int(d), tuple(int(x) for x in u)) for s, d, u in zip(src, dst, shifts)}


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


@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_cases(name):
    case = CASES[name]
    periodic = case.cell is not None
    edge_index, shifts, _ = neighbor_list(case.positions, case.cutoff, case.cell, periodic)
    vectors = case.positions[edge_index[0]] - case.positions[edge_index[1]] + shifts
    want = canonical(*reference_edges(case))
    got = canonical(edge_index, vectors)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


def test_open_boundaries():
    pos = RNG.random((12, 3)) * 6.0
    assert ours(pos, 3.0, None, None) == brute_force_set(pos, 3.0, np.zeros((3, 3)), [False] * 3)


def test_periodic_cubic():
    cell = np.eye(3) * 7.0
    pos = _random_positions(10, cell)
    assert ours(pos, 3.0, cell, True) == brute_force_set(pos, 3.0, cell, [True] * 3)


def test_periodic_triclinic():
    cell = np.array([[5.0, 0.0, 0.0], [2.0, 4.5, 0.0], [-1.0, 1.5, 4.0]])
    pos = _random_positions(8, cell)
    assert ours(pos, 3.5, cell, [True] * 3) == brute_force_set(pos, 3.5, cell, [True] * 3)


def test_small_cell_sees_own_images():
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 2.2, 0.0], [0.3, -0.4, 2.5]])
    pos = _random_positions(2, cell)
    got = ours(pos, 4.0, cell, True)
    assert got == brute_force_set(pos, 4.0, cell, [True] * 3)
    assert any(s == d for s, d, _ in got)  # self images present


def test_single_atom_in_small_cell():
    cell = np.eye(3) * 1.7
    pos = np.zeros((1, 3))
    got = ours(pos, 3.0, cell, True)
    assert got == brute_force_set(pos, 3.0, cell, [True] * 3)
    assert len(got) > 0


@pytest.mark.parametrize("pbc", [[True, True, False], [True, False, False], [False, True, True]])
def test_mixed_pbc(pbc):
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 3.5, 0.0], [0.5, 0.5, 6.0]])
    pos = _random_positions(6, cell)
    assert ours(pos, 3.2, cell, pbc) == brute_force_set(pos, 3.2, cell, pbc)


def test_mixed_pbc_with_zero_nonperiodic_vector():
    cell = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    pos = RNG.random((5, 3)) * 3.0
    got = ours(pos, 3.5, cell, [True, True, False])
    assert got == brute_force_set(pos, 3.5, cell, [True, True, False])


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
    assert ours(pos, 4.5, np.zeros((3, 3)), [False] * 3) == brute_force_set(pos, 4.5, np.zeros((3, 3)), [False] * 3)


def test_far_apart_groups_mixed_periodicity():
    """A slab periodic in x and y with a group 1e6 A away along z (and a tilted cell, so the
    gaps close along the normal of the periodic plane, not along z)."""
    cell = np.array([[6.0, 0.0, 0.0], [1.5, 6.0, 0.0], [0.0, 0.0, 0.0]])
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.5], [3.0, 2.0, 1e6], [3.5, 2.0, 1e6 + 1.0]])
    pbc = [True, True, False]
    assert ours(pos, 4.5, cell, pbc) == brute_force_set(pos, 4.5, cell, pbc)


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


# ------------------------------------------------------------------ the periodic-box check

def test_box_widths():
    box = np.diag([2.0, 3.0, 4.0])
    np.testing.assert_allclose(box_widths(box), [2.0, 3.0, 4.0])
    c, s = np.cos(0.7), np.sin(0.7)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    np.testing.assert_allclose(box_widths(box @ rotation.T), [2.0, 3.0, 4.0])
    # shearing c along a and b keeps the planes spanned by a and b: the width across c stays
    sheared = np.array([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [0.5, -1.0, 4.0]])
    assert box_widths(sheared)[2] == pytest.approx(4.0)
    assert (box_widths(sheared)[:2] < [2.0, 3.0]).all()  # tilted: narrower than the vectors' lengths


def test_check_box():
    box = np.array([[2.0, 0.0, 0.0], [0.5, 3.0, 0.0], [0.0, 0.0, 1.5]])  # widths 1.97, 3, 1.5
    np.testing.assert_array_equal(check_box(box.tolist(), 1.49), box)
    with pytest.raises(ValueError, match=r"across box vector c is 1\.5 nm, smaller than the model cutoff 1\.6 nm"):
        check_box(box, 1.6, "nm")
    with pytest.raises(ValueError, match="invalid periodic box"):
        check_box(np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]), 0.5)
    with pytest.raises(ValueError, match="invalid periodic box"):
        check_box(np.diag([1.0, np.nan, 1.0]), 0.5)
