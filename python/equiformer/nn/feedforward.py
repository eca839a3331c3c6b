"""Feed-forward network of a transformer block: linear -> gate -> linear (official
``FeedForwardNetwork``, whose tensor products with the constant 1x0e are linear maps)."""

from typing import Sequence

import torch

from .activation import Gate
from .irreps import Block, gate_split, simplify
from .linear import IrrepsLinear


class FeedForward(torch.nn.Module):
    def __init__(self, irreps_in: Sequence[Block], irreps_mid: Sequence[Block], irreps_out: Sequence[Block]):
        super().__init__()
        scalars, gates, gated = gate_split(irreps_mid)
        self.fctp_1 = IrrepsLinear(irreps_in, simplify(scalars + gates + gated))
        self.gate = Gate(scalars, gates, gated)
        self.fctp_2 = IrrepsLinear(self.gate.irreps_out, irreps_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fctp_2(self.gate(self.fctp_1(x)))
