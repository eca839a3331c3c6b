"""Output head: final equivariant norm, then one scalar per atom."""

from typing import Final, List, Sequence

import torch

from .activation import ScaledSiLU
from .attention import GraphAttention
from .features import EdgeFeatures
from .irreps import Block
from .linear import IrrepsLinear
from .norm import layer_norm


class EnergyHead(torch.nn.Module):
    """Norm, then an MLP (the paper's head) or a graph-attention layer to one scalar per atom
    (official ``use_attn_head``)."""

    attention: Final[bool]

    def __init__(self, irreps_feature: Sequence[Block], attention: bool = False, irreps_sh: Sequence[Block] = (),
                 irreps_head: Sequence[Block] = (), num_heads: int = 1, radial_channels: List[int] = (),
                 norm: str = "per_block", envelope: bool = False):
        super().__init__()
        self.norm = layer_norm(norm, irreps_feature)
        self.attention = attention
        if attention:
            self.head = GraphAttention(irreps_feature, irreps_sh, [(1, 0, 1)], irreps_head, num_heads,
                                       list(radial_channels), True, False, envelope)
        else:
            self.head = torch.nn.Sequential(
                IrrepsLinear(irreps_feature, irreps_feature), ScaledSiLU(), IrrepsLinear(irreps_feature, [(1, 0, 1)])
            )

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor,
                features: EdgeFeatures) -> torch.Tensor:
        """One scalar per atom; an MLP head uses no edge (any may be given)."""
        if self.attention:
            sh, basis, weight, frames = features
            return self.head(self.norm(x), edge_src, edge_dst, sh, basis, weight, frames).squeeze(-1)
        return self.head(self.norm(x)).squeeze(-1)
