"""Atom embedding and edge-degree embedding (paper Sec. 3.4; official
``NodeEmbeddingNetwork`` and ``EdgeDegreeEmbeddingNetwork``)."""

import math
from typing import List, Sequence, Tuple

import torch

from .irreps import Block, dim, num_scalars, simplify
from .linear import IrrepsLinear
from .radial import RadialProfile
from .segment import segment_sum
from .tensor_product import DepthwiseTensorProduct


class AtomEmbedding(torch.nn.Module):
    """A learned 0e vector (plus bias) per species; higher degrees start at zero."""

    def __init__(self, num_species: int, irreps_node: Sequence[Block]):
        super().__init__()
        self.num_scalars = num_scalars(irreps_node)
        self.dim = dim(irreps_node)
        # one-hot input through a rescaled linear layer, as the official init (N(0,1) rows)
        self.weight = torch.nn.Parameter(torch.randn(num_species, self.num_scalars))
        self.bias = torch.nn.Parameter(torch.zeros(self.num_scalars))

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        scalars = self.weight[species] + self.bias
        return torch.nn.functional.pad(scalars, (0, self.dim - self.num_scalars))


class EdgeDegreeEmbedding(torch.nn.Module):
    """Sum over neighbours of DTP(constant, harmonics; radial weights), projected and scaled
    by 1/sqrt(average degree): how l > 0 features first appear."""

    # per output type of `proj`: (path, harmonic block, channel offset, mul, cg start, d_sh, d_out)
    scalar_plan: List[List[Tuple[int, int, int, int, int, int, int]]]

    def __init__(self, irreps_node: Sequence[Block], irreps_sh: Sequence[Block], radial_channels: List[int],
                 avg_degree: float):
        super().__init__()
        self.exp = IrrepsLinear([(1, 0, 1)], irreps_node)
        self.dw = DepthwiseTensorProduct(irreps_node, irreps_sh, irreps_node, internal_weights=False)
        self.rad = RadialProfile(radial_channels + [self.dw.weight_numel])
        self.proj = IrrepsLinear(simplify(self.dw.irreps_out), irreps_node)
        self.inv_sqrt_degree = 1.0 / math.sqrt(avg_degree)
        # the node input is the constant 1 through `exp`, whose only non-zero block is 0e (block
        # 0): only the paths from it contribute, the others multiply exact zeros
        if tuple(irreps_node[0][1:]) != (0, 1):
            raise ValueError("irreps_node must start with 0e")
        self.num_scalars = irreps_node[0][0]
        plan: List[List[Tuple[int, int, int, int, int, int, int]]] = []
        for seg, _, _, _, _, _ in self.proj.plan:
            entries: List[Tuple[int, int, int, int, int, int, int]] = []
            offset = 0
            for k in self.dw.type_paths[seg] if seg >= 0 else []:
                i, j, mul, d1, d2, d3, cg_start, _ = self.dw.plan[k]
                if i == 0:
                    entries.append((k, j, offset, mul, cg_start, d2, d3))
                offset += mul
            plan.append(entries)
        self.scalar_plan = plan

    def forward(self, num_atoms: int, edge_dst: torch.Tensor, edge_sh: torch.Tensor, edge_basis: torch.Tensor,
                edge_weight: torch.Tensor) -> torch.Tensor:
        e = edge_sh.shape[0]
        x0 = self.exp(edge_sh.new_ones((1, 1)))[:, : self.num_scalars]
        ws = self.rad(edge_basis).split(self.dw.w_sizes, dim=1)
        shs = edge_sh.split(self.dw.sh_sizes, dim=1)
        # per edge, each output type is built order-major [E, 2l+1, mul] and turned into the
        # channel-major layout only after the sum over edges. The gradient's sums over
        # channels (into the harmonics) then run over contiguous rows; over the channel-major
        # layout Inductor (torch 2.9) gave them one parallel region per edge (8% of a
        # two-block model's call), as its loop planner counts a 3- or 5-wide order loop as no
        # vector steps at all
        parts: List[torch.Tensor] = []
        shapes: List[Tuple[int, int]] = []
        for o, (seg, mul_in, d, mul_out, w_start, has_bias) in enumerate(self.proj.plan):
            y = edge_sh.new_zeros((e, d, mul_out))
            w = self.proj.weight[w_start: w_start + mul_in * mul_out].view(mul_in, mul_out)
            for k, j, offset, mul, cg_start, d2, d3 in self.scalar_plan[o]:
                # path (0e x Y_l2 -> l_out), then its rows of the projection
                sh = shs[j] @ self.dw.cg[cg_start: cg_start + d2 * d3].view(d2, d3).to(edge_sh.dtype)
                y = y + sh.unsqueeze(2) * ((ws[k] * x0) @ w[offset: offset + mul]).unsqueeze(1)
            if has_bias:
                y = y + self.proj.bias
            parts.append(y.reshape(e, d * mul_out))
            shapes.append((d, mul_out))
        edge = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        atoms = segment_sum(edge * edge_weight.unsqueeze(1), edge_dst, num_atoms) * self.inv_sqrt_degree
        n = atoms.shape[0]
        out: List[torch.Tensor] = []
        for block, (d, mul_out) in zip(atoms.split([d * m for d, m in shapes], dim=1), shapes):
            out.append(block.view(n, d, mul_out).transpose(1, 2).reshape(n, d * mul_out))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]
