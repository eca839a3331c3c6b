"""Output head: final equivariant norm, then linear -> SiLU -> linear to one scalar per atom."""

from typing import Sequence

import torch

from .activation import ScaledSiLU
from .irreps import Block
from .linear import IrrepsLinear
from .norm import EquivariantLayerNorm


class EnergyHead(torch.nn.Module):
    def __init__(self, irreps_feature: Sequence[Block]):
        super().__init__()
        self.norm = EquivariantLayerNorm(irreps_feature)
        self.head = torch.nn.Sequential(
            IrrepsLinear(irreps_feature, irreps_feature), ScaledSiLU(), IrrepsLinear(irreps_feature, [(1, 0, 1)])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)).squeeze(-1)
