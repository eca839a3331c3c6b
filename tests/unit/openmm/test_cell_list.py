"""The TorchScript neighbor search of the TorchForce route on the cases shared with the vesin
and C++ searches, against their brute-force reference (tests/neighbor_cases.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from equiformer.openmm.neighbors import all_pairs_edges, cell_list_edges, open_edges  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from neighbor_cases import canonical, cases, reference_edges  # noqa: E402

cell_list = torch.jit.script(cell_list_edges)
open_list = torch.jit.script(open_edges)

CASES = cases()
PERIODIC = sorted(name for name, case in CASES.items() if case.cell is not None)
OPEN = sorted(name for name, case in CASES.items() if case.cell is None)


def assert_same_edges(got, case):
    want = canonical(*reference_edges(case))
    got = canonical(got[0].numpy(), got[1].numpy())
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", PERIODIC)
def test_periodic_cell_list(name):
    case = CASES[name]
    assert_same_edges(cell_list(torch.tensor(case.positions), torch.tensor(case.cell), case.cutoff), case)


@pytest.mark.parametrize("name", OPEN)
def test_open_boundaries(name):
    """All pairs (small systems), the padded cell list (large ones) and all_pairs_edges alone."""
    case = CASES[name]
    pos = torch.tensor(case.positions)
    for edges in (open_list(pos, case.cutoff, 256), open_list(pos, case.cutoff, 0), all_pairs_edges(pos, case.cutoff)):
        assert_same_edges(edges, case)


def test_dilute_system_caps_cells():
    """Far fewer cells than the box would hold (4 per atom); the answer does not change."""
    case = CASES["dilute-periodic"]
    args = (torch.tensor(case.positions), torch.tensor(case.cell), case.cutoff)
    assert_same_edges(cell_list(*args, 4), case)
    assert_same_edges(cell_list(*args, 1), case)


def test_too_small_box_is_refused():
    with pytest.raises(Exception, match="box too small"):
        cell_list(torch.zeros((2, 3), dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 2.0, 2.5)
