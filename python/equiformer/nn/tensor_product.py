"""Depthwise tensor product of node features with edge spherical harmonics (official
``DepthwiseTensorProduct``): every (input block, harmonic degree, output irrep) path keeps the
input's channels ('uvu') and writes its own output block; output blocks are sorted by l with
even parity first. Per-edge weights (from a radial network) or shared internal weights.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .irreps import Block, dim, sort_even_first
from .w3j import wigner_3j


def depthwise_paths(irreps_in: Sequence[Block], irreps_sh: Sequence[Block], irreps_filter: Sequence[Block]):
    """Paths in the official instruction order: (i_in, i_sh, (l_out, p_out))."""
    allowed = {(l, p) for _, l, p in irreps_filter}
    paths = []
    for i, (mul, l1, p1) in enumerate(irreps_in):
        for j, (_, l2, p2) in enumerate(irreps_sh):
            for l3 in range(abs(l1 - l2), l1 + l2 + 1):
                p3 = p1 * p2
                if (l3, p3) in allowed or (l3, p3) == (0, 1):
                    paths.append((i, j, (l3, p3)))
    return paths


class DepthwiseTensorProduct(torch.nn.Module):
    # edge-frame plan (may be empty): per path (in block, mul, row start, d3, weight start), and
    # the paths of each output irrep type
    frame_plan: List[Tuple[int, int, int, int, int]]
    type_paths: List[List[int]]

    def __init__(self, irreps_in: Sequence[Block], irreps_sh: Sequence[Block], irreps_filter: Sequence[Block],
                 internal_weights: bool):
        super().__init__()
        paths = depthwise_paths(irreps_in, irreps_sh, irreps_filter)
        out_unsorted = [(irreps_in[i][0], l3, p3) for i, _, (l3, p3) in paths]
        self.irreps_out, position = sort_even_first(out_unsorted)
        self.dim_out = dim(self.irreps_out)
        self.triples: List[Tuple[int, int, int]] = []
        cg: List[torch.Tensor] = []
        cg_start = 0
        # forward plan over the split inputs: in block, sh block, mul, d1, d2, d3, cg_start, output position
        plan: List[Tuple[int, int, int, int, int, int, int, int]] = []
        for k, (i, j, (l3, _)) in enumerate(paths):
            mul, l1, _ = irreps_in[i]
            l2 = irreps_sh[j][1]
            d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
            # e3nn 'component' normalisation, no path normalisation: sqrt(2 l_out + 1) * 3j
            cg.append((math.sqrt(d3) * wigner_3j(l1, l2, l3)).reshape(-1))
            self.triples.append((l1, l2, l3))
            plan.append((i, j, mul, d1, d2, d3, cg_start, position[k]))
            cg_start += d1 * d2 * d3
        self.plan = plan
        # paths sharing an input block and a harmonic degree (consecutive in `paths`) are
        # computed together: one contraction with their stacked coefficients
        groups: List[Tuple[int, int, int, int, int, int, int]] = []  # i, j, mul, d1, d2, first path, count
        for k, (i, j, mul, d1, d2, _, _, _) in enumerate(plan):
            if groups and groups[-1][0] == i and groups[-1][1] == j:
                g = groups[-1]
                groups[-1] = (g[0], g[1], g[2], g[3], g[4], g[5], g[6] + 1)
            else:
                groups.append((i, j, mul, d1, d2, k, 1))
        self.groups = groups
        self.path_d3 = [p[5] for p in plan]
        self.path_cg = [p[6] for p in plan]
        self.path_pos = [p[7] for p in plan]
        self.in_sizes = [mul * (2 * l + 1) for mul, l, _ in irreps_in]
        self.sh_sizes = [mul * (2 * l + 1) for mul, l, _ in irreps_sh]
        self.w_sizes = [irreps_in[i][0] for i, _, _ in paths]
        w_start = sum(self.w_sizes)
        self.num_paths = len(plan)
        self.weight_numel = w_start
        # coupling coefficients, kept in float64 whatever the model dtype (see _apply)
        self.register_buffer("cg", torch.cat(cg) if cg else torch.zeros(0, dtype=torch.float64))
        self.internal_weights = internal_weights
        self.weight = torch.nn.Parameter(torch.randn(w_start) if internal_weights else torch.zeros(0))
        self._plan_edge_frame(paths, irreps_in, irreps_sh, position)

    def _plan_edge_frame(self, paths, irreps_in, irreps_sh, position) -> None:
        """The edge-frame form (see edge_frame.py): with harmonics along +y, output row m3 of a
        path reads the single input row m1 = +-m3 that its 3j symbol couples at m2 = 0, times
        sqrt(2 l2 + 1) * cg[m1, m2=0, m3] (the structure comes from this package's symbols; the
        values are read from the `cg` buffer at run time, so imported symbols are honoured)."""
        src: List[int] = []
        cg_index: List[int] = []
        scale: List[float] = []
        frame_plan: List[Tuple[int, int, int, int, int]] = []  # in block, mul, row start, d3, weight start
        w_offset = 0
        for k, (i, j, (l3, _)) in enumerate(paths):
            mul, l1, _ = irreps_in[i]
            l2 = irreps_sh[j][1]
            d2, d3 = 2 * l2 + 1, 2 * l3 + 1
            c = wigner_3j(l1, l2, l3)[:, l2, :]  # [d1, d3] at m2 = 0
            frame_plan.append((i, mul, len(src), d3, w_offset))
            w_offset += mul
            for m3 in range(d3):
                rows = (c[:, m3].abs() > 1e-12).nonzero().flatten().tolist()
                if len(rows) > 1:
                    raise AssertionError(f"3j ({l1},{l2},{l3}) couples m3={m3} to several m1 at m2=0")
                m1 = rows[0] if rows else 0
                src.append(m1)
                cg_index.append(self.path_cg[k] + (m1 * d2 + l2) * d3 + m3)
                scale.append(math.sqrt(d2) if rows else 0.0)
        self.frame_plan = frame_plan
        # output types (adjacent sorted blocks of one irrep) and their paths in sorted order
        by_position = sorted(range(len(paths)), key=lambda k: position[k])
        type_paths: List[List[int]] = []
        previous = None
        for k in by_position:
            key = paths[k][2]
            if key != previous:
                type_paths.append([])
                previous = key
            type_paths[-1].append(k)
        self.type_paths = type_paths
        self.register_buffer("frame_src", torch.tensor(src, dtype=torch.long), persistent=False)
        self.register_buffer("frame_cg_index", torch.tensor(cg_index, dtype=torch.long), persistent=False)
        self.register_buffer("frame_scale", torch.tensor(scale, dtype=torch.float64), persistent=False)

    def _apply(self, fn, recurse=True):
        keep = (self.cg, self.frame_scale)
        super()._apply(fn, recurse)
        self.cg = keep[0].to(device=self.cg.device, dtype=torch.float64)
        self.frame_scale = keep[1].to(device=self.frame_scale.device, dtype=torch.float64)
        return self

    @torch.jit.unused
    def coefficients(self, w3j: Dict[Tuple[int, int, int], torch.Tensor]) -> torch.Tensor:
        """The `cg` buffer built from given 3j symbols (those absent: this package's own)."""
        parts = []
        for (l1, l2, l3) in self.triples:
            c = w3j.get((l1, l2, l3))
            c = wigner_3j(l1, l2, l3) if c is None else c.to(torch.float64)
            parts.append((math.sqrt(2 * l3 + 1) * c).reshape(-1))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        e = x.shape[0]
        if weight is None:
            w_all = self.weight.unsqueeze(0)
        else:
            w_all = weight
        xs = x.split(self.in_sizes, dim=1)
        ys = sh.split(self.sh_sizes, dim=1)
        ws = w_all.split(self.w_sizes, dim=1)
        results: List[torch.Tensor] = [x] * self.num_paths
        for i, j, mul, d1, d2, first, count in self.groups:
            cs: List[torch.Tensor] = []
            d3s: List[int] = []
            for k in range(first, first + count):
                d3 = self.path_d3[k]
                cs.append(self.cg[self.path_cg[k]: self.path_cg[k] + d1 * d2 * d3].view(d1, d2, d3))
                d3s.append(d3)
            c = torch.cat(cs, dim=2).to(x.dtype) if count > 1 else cs[0].to(x.dtype)
            x1 = xs[i].reshape(e, mul, d1)
            if d1 == 1:
                out = x1 * (ys[j] @ c.view(d2, -1)).unsqueeze(1)
            else:
                out = torch.bmm(x1, torch.einsum("ej,ijk->eik", ys[j], c))
            pieces = out.split(d3s, dim=2) if count > 1 else [out]
            for n_, k in enumerate(range(first, first + count)):
                results[self.path_pos[k]] = (pieces[n_] * ws[k].unsqueeze(-1)).reshape(e, mul * d3s[n_])
        return torch.cat(results, dim=1)
