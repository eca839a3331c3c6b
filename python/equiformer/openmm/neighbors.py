"""Neighbor search in pure TorchScript (no compiled extension), used inside the TorchForce.

It exists because openmm-torch runs a TorchScript module and nothing else: the search must be
TorchScript to travel inside the TorchForce. The other routes use `equiformer.data.neighbors`
(Python) or the C++ cell list of cpp/ (native plugin); all three are checked on the same
cases against one brute-force reference (tests/neighbor_cases.py).

Both functions return a *full* directed list (both directions of every pair) in the
exported-model convention: ``edge_index[0]`` = source/neighbour j, ``edge_index[1]`` =
centre i, ``edge_vectors = x_j + shift - x_i``, only pairs closer than the cutoff, no self
edge with zero shift.

Periodic systems: a cell list in fractional coordinates, O(N) work and memory (plus an
integer argsort of the cell ids).
  * fractional coordinates s = x B^-1 (rows of B are the box vectors), wrapped into [0, 1);
  * the cell is cut into n_d = floor(h_d / rc) slabs along each box vector, h_d being the
    perpendicular width of the box across vector d, so every slab is at least rc thick.
    For a pair closer than rc, |Δs_d| <= rc / h_d <= 1 / n_d, so the image of j lies in
    one of the 27 cells around the cell of i in the *unwrapped* cell grid;
  * each of those neighbouring unwrapped cells u maps to a stored cell u mod n and a
    lattice shift floor(u / n). Distinct (cell, shift) pairs are distinct periodic images,
    so every image closer than rc is found exactly once, even when n_d is 1 or 2 (widths
    between rc and 3 rc, where an atom may see several images of a neighbour);
  * works for any triclinic cell (OpenMM's reduced form included); widths below rc are
    refused (they would need more than one shell of cells).
Non-periodic systems: all pairs for small N, and the same cell list in a box padded by
more than one cutoff (so no image can come within the cutoff) for large N.
"""

from typing import Tuple

import torch


def _half_offsets(device: torch.device) -> torch.Tensor:
    """The centre cell and the 13 neighbouring cells with a lexicographically positive offset."""
    r = torch.arange(-1, 2, dtype=torch.long, device=device)
    grid = torch.stack(torch.meshgrid([r, r, r], indexing="ij"), dim=-1).reshape(27, 3)
    return grid[13:]  # row 13 is (0, 0, 0); rows 14..26 are the positive half


def box_widths(box: torch.Tensor) -> torch.Tensor:
    """Perpendicular widths [3] of the cell spanned by the rows of ``box``."""
    device = box.device
    volume = torch.abs(torch.linalg.det(box))
    cross = torch.cross(box.index_select(0, torch.tensor([1, 2, 0], device=device)),
                        box.index_select(0, torch.tensor([2, 0, 1], device=device)), dim=1)
    return volume / torch.linalg.norm(cross, dim=1)


def cell_list_edges(positions: torch.Tensor, box: torch.Tensor, cutoff: float,
                    max_cells_per_atom: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Periodic neighbor list. positions [N,3] and box [3,3] (rows = box vectors) in one
    length unit and dtype (float64 recommended); returns (edge_index [2,E], edge_vectors [E,3]).

    Half stencil: pairs are searched once (centre cell with j > i, 13 positive offsets) and
    mirrored; the reverse of an image pair at cell offset d has offset -d, so each directed
    edge appears exactly once."""
    device = positions.device
    n_atoms = positions.shape[0]
    heights = box_widths(box)
    min_height = float(heights.min().item())
    if not min_height >= cutoff:
        raise RuntimeError(
            "equiformer: periodic box too small for the model: a width of the box is "
            + str(min_height) + " (model length unit), smaller than the cutoff " + str(cutoff)
            + "; every width must be >= the cutoff"
        )
    n = torch.clamp(torch.floor(heights / cutoff), min=1.0).to(torch.long)
    # keep the number of cells O(N) for dilute systems (thicker cells stay correct)
    max_cells = max_cells_per_atom * n_atoms + 27
    while int(n.prod().item()) > max_cells and int(n.max().item()) > 1:
        k = int(torch.argmax(n).item())
        n[k] = (n[k] + 1) // 2
    n0, n1, n2 = int(n[0].item()), int(n[1].item()), int(n[2].item())
    num_cells = n0 * n1 * n2

    frac = positions @ torch.linalg.inv(box)
    frac = frac - torch.floor(frac)
    wrapped = frac @ box
    cell = torch.floor(frac * n.to(frac.dtype)).to(torch.long)
    cell = torch.minimum(torch.clamp(cell, min=0), n - 1)
    cell_id = (cell[:, 0] * n1 + cell[:, 1]) * n2 + cell[:, 2]
    order = torch.argsort(cell_id)
    counts = torch.bincount(cell_id, minlength=num_cells)
    starts = torch.cumsum(counts, 0) - counts

    offsets = _half_offsets(device)
    num_offsets = offsets.shape[0]
    unwrapped = cell.unsqueeze(1) + offsets.unsqueeze(0)             # [N, 14, 3]
    stored = torch.remainder(unwrapped, n)
    shifts = torch.div(unwrapped - stored, n, rounding_mode="floor")  # lattice shifts of j's image
    stored_id = (stored[:, :, 0] * n1 + stored[:, :, 1]) * n2 + stored[:, :, 2]
    # x_i - shift @ box per (i, offset): edge vector = x_j - that
    origin = (wrapped.unsqueeze(1) - shifts.to(box.dtype) @ box).reshape(-1, 3)
    block_len = counts[stored_id].reshape(-1)                       # [N*14]
    block_start = starts[stored_id].reshape(-1)
    block = torch.repeat_interleave(torch.arange(n_atoms * num_offsets, device=device), block_len)
    first = torch.cumsum(block_len, 0) - block_len
    j = order[torch.arange(block.shape[0], device=device) - first[block] + block_start[block]]

    vectors = wrapped.index_select(0, j) - origin.index_select(0, block)
    d2 = (vectors * vectors).sum(1)
    keep = d2 < cutoff * cutoff
    # centre cell (offset 0, never a shifted image): each unordered pair once, no self edge
    i = torch.div(block, num_offsets, rounding_mode="floor")
    keep = keep & ((block % num_offsets != 0) | (j > i))
    i, j, vectors = i[keep], j[keep], vectors[keep]
    edge_index = torch.cat([torch.stack([j, i]), torch.stack([i, j])], dim=1)
    return edge_index, torch.cat([vectors, -vectors], dim=0)


def all_pairs_edges(positions: torch.Tensor, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-periodic neighbor list over all N^2 pairs (small systems)."""
    n_atoms = positions.shape[0]
    vectors = positions.unsqueeze(0) - positions.unsqueeze(1)   # [i, j] = x_j - x_i
    d2 = (vectors * vectors).sum(2)
    mask = d2 < cutoff * cutoff
    mask.fill_diagonal_(False)
    pairs = mask.nonzero()
    i, j = pairs[:, 0], pairs[:, 1]
    edge_index = torch.stack([j, i])
    return edge_index, vectors[i, j]


def open_edges(positions: torch.Tensor, cutoff: float, all_pairs_max_atoms: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-periodic neighbor list: all pairs up to `all_pairs_max_atoms` atoms, above that the
    cell list in an orthorhombic box padded by 1.5 cutoffs (images are then >= 1.5 cutoffs away
    and never pass the distance test)."""
    n_atoms = positions.shape[0]
    if n_atoms <= all_pairs_max_atoms:
        return all_pairs_edges(positions, cutoff)
    lo = positions.min(0).values
    hi = positions.max(0).values
    extent = hi - lo + 1.5 * cutoff
    box = torch.diag(extent)
    return cell_list_edges(positions - lo, box, cutoff)
