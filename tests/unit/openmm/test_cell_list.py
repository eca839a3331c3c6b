"""The TorchScript neighbor search of the TorchForce route against vesin and brute force."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
vesin = pytest.importorskip("vesin")

from equiformer.openmm.neighbors import all_pairs_edges, cell_list_edges, open_edges  # noqa: E402

cell_list = torch.jit.script(cell_list_edges)
open_list = torch.jit.script(open_edges)


def canonical(edge_index, vectors):
    rows = np.concatenate([np.asarray(edge_index).T, np.round(np.asarray(vectors), 8)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def vesin_edges(pos, box, cutoff, periodic=True):
    i, j, d = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(pos, box, periodic, "ijD")
    return np.stack([j, i]).astype(np.int64), d


@pytest.mark.parametrize("seed", range(6))
def test_periodic_cell_list_matches_vesin(seed):
    rng = np.random.default_rng(seed)
    cutoff = 2.5
    # reduced triclinic boxes from barely > 1 cutoff wide (1 cell, self images) to many cells
    a = rng.uniform(1.05, 5.0) * cutoff
    b = rng.uniform(1.05, 5.0) * cutoff
    c = rng.uniform(1.05, 5.0) * cutoff
    box = np.array([[a, 0, 0], [rng.uniform(-0.5, 0.5) * a, b, 0],
                    [rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.5, 0.5) * b, c]])
    heights = abs(np.linalg.det(box)) / np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]), axis=1)
    box *= max(1.0, 1.01 * cutoff / heights.min())
    n = int(rng.integers(1, 60))
    pos = rng.random((n, 3)) @ box + rng.integers(-3, 4, (n, 3)) @ box  # unwrapped
    got = cell_list(torch.tensor(pos), torch.tensor(box), cutoff)
    ref = vesin_edges(pos, box, cutoff)
    assert got[0].shape[1] == ref[0].shape[1]
    np.testing.assert_allclose(canonical(*got), canonical(*ref), atol=1e-7)


def test_dilute_system_caps_cells():
    rng = np.random.default_rng(1)
    box = np.diag([80.0, 75.0, 90.0])
    pos = rng.random((30, 3)) @ box
    pos[1] = pos[0] + [1.0, 0.5, 0]
    got = cell_list(torch.tensor(pos), torch.tensor(box), 2.0, 4)
    np.testing.assert_allclose(canonical(*got), canonical(*vesin_edges(pos, box, 2.0)), atol=1e-7)


def test_too_small_box_is_refused():
    with pytest.raises(Exception, match="box too small"):
        cell_list(torch.zeros((2, 3), dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 2.0, 2.5)


@pytest.mark.parametrize("n", [1, 2, 40, 300])
def test_open_boundaries(n):
    rng = np.random.default_rng(n)
    pos = rng.random((n, 3)) * 12.0 - 40.0
    ref = vesin_edges(pos, np.zeros((3, 3)), 3.0, periodic=False)
    for edges in (open_list(torch.tensor(pos), 3.0, 256), open_list(torch.tensor(pos), 3.0, 0),
                  all_pairs_edges(torch.tensor(pos), 3.0)):
        assert edges[0].shape[1] == ref[0].shape[1]
        if n > 1:
            np.testing.assert_allclose(canonical(*edges), canonical(*ref), atol=1e-7)
