"""Transformer block (paper Fig. 1; official ``TransBlock``): pre-norm attention and
feed-forward, each with a residual connection."""

from typing import Final, List, Optional, Sequence, Tuple

import torch

from .attention import DotProductAttention, GraphAttention
from .feedforward import FeedForward
from .irreps import Block
from .linear import IrrepsLinear
from .norm import layer_norm
from .segment import Chunks, EdgeFeatures, feature_list, slice_features


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

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, edge_sh: torch.Tensor,
                edge_basis: torch.Tensor, edge_weight: torch.Tensor, frames: List[torch.Tensor]) -> torch.Tensor:
        src_side, dst_side = self.attention_inputs(x)
        h = x + self.attention_edges(src_side[edge_src], dst_side, edge_dst, edge_sh, edge_basis, edge_weight, frames)
        return self.feed_forward(h)

    def attention_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.dot_product:
            return self.dpa.node_inputs(self.norm_1(x))
        return self.ga.node_inputs(self.norm_1(x))

    def attention_edges(self, src_rows: torch.Tensor, dst_side: torch.Tensor, edge_dst: torch.Tensor,
                        edge_sh: torch.Tensor, edge_basis: torch.Tensor, edge_weight: torch.Tensor,
                        frames: List[torch.Tensor]) -> torch.Tensor:
        if self.dot_product:
            return self.dpa.edges(src_rows, dst_side, edge_dst, edge_sh, edge_basis, edge_weight, frames)
        return self.ga.edges(src_rows, dst_side, edge_dst, edge_sh, edge_basis, edge_weight, frames)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.ffn_shortcut(h) + self.ffn(self.norm_2(h))

    # ---------------------------------------------------------------- by chunks of centres
    def attention_chunked(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor,
                          features: EdgeFeatures, chunks: Chunks) -> torch.Tensor:
        """``x`` plus the attention (the feed-forward's input) on edges sorted by centre atom, a
        chunk of whole centres at a time: each softmax over a centre's edges stays inside a
        chunk, and no per-edge tensor exceeds a chunk's size."""
        src_side, dst_side = self.attention_inputs(x)
        nodes, edges = chunks
        parts: List[torch.Tensor] = []
        for c in range(len(nodes) - 1):
            a, ea, eb = nodes[c], edges[c], edges[c + 1]
            sh, basis, weight, frames = slice_features(features, ea, eb)
            parts.append(self.attention_edges(src_side[edge_src[ea:eb]], dst_side[a:nodes[c + 1]],
                                              edge_dst[ea:eb] - a, sh, basis, weight, frames))
        return x + torch.cat(parts, dim=0)

    def backward_chunked(self, x: torch.Tensor, h: torch.Tensor, grad_out: torch.Tensor, edge_src: torch.Tensor,
                         edge_dst: torch.Tensor, features: EdgeFeatures, chunks: Chunks,
                         grad_features: List[torch.Tensor]) -> torch.Tensor:
        """Vector-Jacobian product of the block at input ``x`` (``h``: its `attention_chunked`):
        returns the gradient with respect to ``x`` and adds those with respect to the edge
        features to ``grad_features`` (as `feature_list`), recomputing one chunk's edges at a
        time, so memory stays that of a chunk."""
        h = h.detach().requires_grad_(True)
        seed: List[Optional[torch.Tensor]] = [grad_out]
        grad_h = torch.autograd.grad([self.feed_forward(h)], [h], seed)[0]
        assert grad_h is not None
        x, src_side, dst_side = self.chunk_inputs(x)
        grad_src = torch.zeros_like(src_side)
        grad_dst = torch.zeros_like(dst_side)
        nodes, edges = chunks
        for c in range(len(nodes) - 1):
            att, leaves = self.chunk_attention(c, src_side, dst_side, edge_src, edge_dst, features, chunks)
            seed_c: List[Optional[torch.Tensor]] = [grad_h[nodes[c]:nodes[c + 1]]]
            grads = torch.autograd.grad([att], leaves, seed_c, allow_unused=True)
            self.chunk_accumulate(c, grads, grad_src, grad_dst, grad_features, edge_src, chunks)
        return self.chunk_finish(x, src_side, dst_side, grad_h, grad_src, grad_dst)

    # the steps of a chunked vector-Jacobian product (also used with the energy head fused in)
    def chunk_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x as a leaf, its source and centre sides with their graph)."""
        x = x.detach().requires_grad_(True)
        src_side, dst_side = self.attention_inputs(x)
        return x, src_side, dst_side

    def chunk_attention(self, c: int, src_side: torch.Tensor, dst_side: torch.Tensor, edge_src: torch.Tensor,
                        edge_dst: torch.Tensor, features: EdgeFeatures,
                        chunks: Chunks) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The attention output of chunk c's centres from fresh leaves: (output, leaves =
        source rows, centre rows, the chunk's `feature_list`)."""
        nodes, edges = chunks
        a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
        leaves = [src_side[edge_src[ea:eb]], dst_side[a:b]] + feature_list(slice_features(features, ea, eb))
        leaves = [t.detach().requires_grad_(True) for t in leaves]
        frames = [features[3][0][ea:eb]] + leaves[5:] if len(leaves) > 5 else leaves[5:]
        att = self.attention_edges(leaves[0], leaves[1], edge_dst[ea:eb] - a, leaves[2], leaves[3], leaves[4], frames)
        return att, leaves

    def chunk_accumulate(self, c: int, grads: List[Optional[torch.Tensor]], grad_src: torch.Tensor,
                         grad_dst: torch.Tensor, grad_features: List[torch.Tensor], edge_src: torch.Tensor,
                         chunks: Chunks) -> None:
        """Adds the gradients with respect to `chunk_attention`'s leaves to the running sums."""
        nodes, edges = chunks
        a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
        g = grads[0]
        if g is not None:
            grad_src.index_add_(0, edge_src[ea:eb], g)
        g = grads[1]
        if g is not None:
            grad_dst[a:b] += g
        for i in range(len(grad_features)):
            g = grads[2 + i]
            if g is not None:
                grad_features[i][ea:eb] += g

    def chunk_finish(self, x: torch.Tensor, src_side: torch.Tensor, dst_side: torch.Tensor, grad_h: torch.Tensor,
                     grad_src: torch.Tensor, grad_dst: torch.Tensor) -> torch.Tensor:
        """The gradient with respect to x: through the residual (``grad_h``) and the attention inputs."""
        seeds: List[Optional[torch.Tensor]] = [grad_src, grad_dst]
        g = torch.autograd.grad([src_side, dst_side], [x], seeds)[0]
        assert g is not None
        return grad_h + g
