"""Transformer block (paper Fig. 1; official ``TransBlock``): pre-norm attention and
feed-forward, each with a residual connection.

The block is split at the two places a memory schedule needs (schedule.py): the per-atom
inputs of the attention (`attention_inputs`), the attention over a set of edges into whole
centres (`attention_edges`), and the per-atom rest (`feed_forward`)."""

from typing import Final, List, Sequence, Tuple

import torch

from .attention import DotProductAttention, GraphAttention
from .features import EdgeFeatures
from .feedforward import FeedForward
from .irreps import Block
from .linear import IrrepsLinear
from .norm import layer_norm
from .segment import gather_rows


class TransformerBlock(torch.nn.Module):
    dot_product: Final[bool]

    def __init__(self, irreps_in: Sequence[Block], irreps_sh: Sequence[Block], irreps_out: Sequence[Block],
                 irreps_head: Sequence[Block], num_heads: int, irreps_mlp: Sequence[Block],
                 radial_channels: List[int], nonlinear_message: bool, rescale_degree: bool,
                 dot_product: bool = False, norm: str = "per_block", envelope: bool = False):
        super().__init__()
        self.norm_1 = layer_norm(norm, irreps_in)
        # official attribute names: `ga` (MLP attention) or `dpa` (dot-product attention)
        self.dot_product = dot_product
        if dot_product:
            self.dpa = DotProductAttention(irreps_in, irreps_sh, irreps_in, irreps_head, num_heads, radial_channels,
                                           rescale_degree, envelope)
        else:
            self.ga = GraphAttention(irreps_in, irreps_sh, irreps_in, irreps_head, num_heads, radial_channels,
                                     nonlinear_message, rescale_degree, envelope)
        self.norm_2 = layer_norm(norm, irreps_in)
        self.ffn = FeedForward(irreps_in, irreps_mlp, irreps_out)
        self.has_shortcut = list(irreps_in) != list(irreps_out)
        self.ffn_shortcut = IrrepsLinear(irreps_in, irreps_out) if self.has_shortcut else torch.nn.Identity()

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor,
                features: EdgeFeatures) -> torch.Tensor:
        src_side, dst_side = self.attention_inputs(x)
        return self.feed_forward(x + self.attention_edges(gather_rows(src_side, edge_src), dst_side, edge_dst, features))

    @torch.jit.export
    def attention_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom inputs of the messages: (source side, centre side)."""
        if self.dot_product:
            return self.dpa.node_inputs(self.norm_1(x))
        return self.ga.node_inputs(self.norm_1(x))

    @torch.jit.export
    def attention_edges(self, src_rows: torch.Tensor, dst_side: torch.Tensor, edge_dst: torch.Tensor,
                        features: EdgeFeatures) -> torch.Tensor:
        """The attention output of the centres ``dst_side`` holds, from all their edges
        (``src_rows``: the source side of each edge; ``edge_dst`` indexes ``dst_side``)."""
        sh, basis, weight, frames = features
        if self.dot_product:
            return self.dpa.edges(src_rows, dst_side, edge_dst, sh, basis, weight, frames)
        return self.ga.edges(src_rows, dst_side, edge_dst, sh, basis, weight, frames)

    @torch.jit.export
    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the attention's residual: per atom."""
        return self.ffn_shortcut(h) + self.ffn(self.norm_2(h))
