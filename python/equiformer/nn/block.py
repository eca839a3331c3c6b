"""Transformer block (paper Fig. 1; official ``TransBlock``): pre-norm attention and
feed-forward, each with a residual connection."""

from typing import Final, List, Sequence

import torch

from .attention import DotProductAttention, GraphAttention
from .feedforward import FeedForward
from .irreps import Block
from .linear import IrrepsLinear
from .norm import EquivariantLayerNorm


class TransformerBlock(torch.nn.Module):
    dot_product: Final[bool]

    def __init__(self, irreps_in: Sequence[Block], irreps_sh: Sequence[Block], irreps_out: Sequence[Block],
                 irreps_head: Sequence[Block], num_heads: int, irreps_mlp: Sequence[Block],
                 radial_channels: List[int], nonlinear_message: bool, rescale_degree: bool,
                 dot_product: bool = False):
        super().__init__()
        self.norm_1 = EquivariantLayerNorm(irreps_in)
        # official attribute names: `ga` (MLP attention) or `dpa` (dot-product attention)
        self.dot_product = dot_product
        if dot_product:
            self.dpa = DotProductAttention(irreps_in, irreps_sh, irreps_in, irreps_head, num_heads, radial_channels,
                                           rescale_degree)
        else:
            self.ga = GraphAttention(irreps_in, irreps_sh, irreps_in, irreps_head, num_heads, radial_channels,
                                     nonlinear_message, rescale_degree)
        self.norm_2 = EquivariantLayerNorm(irreps_in)
        self.ffn = FeedForward(irreps_in, irreps_mlp, irreps_out)
        self.has_shortcut = list(irreps_in) != list(irreps_out)
        self.ffn_shortcut = IrrepsLinear(irreps_in, irreps_out) if self.has_shortcut else torch.nn.Identity()

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, edge_sh: torch.Tensor,
                edge_basis: torch.Tensor, edge_weight: torch.Tensor, frames: List[torch.Tensor]) -> torch.Tensor:
        if self.dot_product:
            x = x + self.dpa(self.norm_1(x), edge_src, edge_dst, edge_sh, edge_basis, edge_weight, frames)
        else:
            x = x + self.ga(self.norm_1(x), edge_src, edge_dst, edge_sh, edge_basis, edge_weight, frames)
        return self.ffn_shortcut(x) + self.ffn(self.norm_2(x))
