"""Atom embedding and edge-degree embedding (paper Sec. 3.4; official
``NodeEmbeddingNetwork`` and ``EdgeDegreeEmbeddingNetwork``)."""

import math
from typing import List, Sequence

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

    def __init__(self, irreps_node: Sequence[Block], irreps_sh: Sequence[Block], radial_channels: List[int],
                 avg_degree: float):
        super().__init__()
        self.exp = IrrepsLinear([(1, 0, 1)], irreps_node)
        self.dw = DepthwiseTensorProduct(irreps_node, irreps_sh, irreps_node, internal_weights=False)
        self.rad = RadialProfile(radial_channels + [self.dw.weight_numel])
        self.proj = IrrepsLinear(simplify(self.dw.irreps_out), irreps_node)
        self.inv_sqrt_degree = 1.0 / math.sqrt(avg_degree)

    def forward(self, num_atoms: int, edge_dst: torch.Tensor, edge_sh: torch.Tensor, edge_basis: torch.Tensor,
                edge_weight: torch.Tensor) -> torch.Tensor:
        # the node input is the constant 1, so every edge sees the same features
        constant = self.exp(edge_sh.new_ones((1, 1))).expand(edge_sh.shape[0], -1)
        edge = self.proj(self.dw(constant, edge_sh, self.rad(edge_basis)))
        edge = edge * edge_weight.unsqueeze(1)
        return segment_sum(edge, edge_dst, num_atoms) * self.inv_sqrt_degree
