"""Feed-forward network of a transformer block: linear -> gate -> linear (official
``FeedForwardNetwork``, whose tensor products with the constant 1x0e are linear maps)."""

from typing import List, Sequence, Tuple

import torch

from .activation import Gate
from .irreps import Block, gate_split, simplify
from .linear import IrrepsLinear


def e3nn_gate_input(scalars: Sequence[Block], gates: Sequence[Block], gated: Sequence[Block]) -> Tuple[List[Block], List[int]]:
    """Layout of an ``e3nn.nn.Gate`` input and the permutation to [scalars | gates | gated].

    e3nn's Gate (used by the official feed-forward network) sorts its input irreps by
    (l, p) with odd parity first, then merges neighbours; the first linear layer writes in
    that order. Returns the blocks and, for each position of [scalars | gates | gated], the
    position it comes from.
    """
    parts = list(scalars) + list(gates) + list(gated)
    starts = []
    s = 0
    for mul, l, _ in parts:
        starts.append(s)
        s += mul * (2 * l + 1)
    order = sorted(range(len(parts)), key=lambda i: (parts[i][1], parts[i][2], i))
    sorted_start = {}
    s = 0
    for i in order:
        sorted_start[i] = s
        s += parts[i][0] * (2 * parts[i][1] + 1)
    perm: List[int] = []
    for i, (mul, l, _) in enumerate(parts):
        perm.extend(range(sorted_start[i], sorted_start[i] + mul * (2 * l + 1)))
    return simplify([parts[i] for i in order]), perm


class FeedForward(torch.nn.Module):
    def __init__(self, irreps_in: Sequence[Block], irreps_mid: Sequence[Block], irreps_out: Sequence[Block]):
        super().__init__()
        scalars, gates, gated = gate_split(irreps_mid)
        gate_in, perm = e3nn_gate_input(scalars, gates, gated)
        self.fctp_1 = IrrepsLinear(irreps_in, gate_in)
        self.permute = perm != list(range(len(perm)))
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.gate = Gate(scalars, gates, gated)
        self.fctp_2 = IrrepsLinear(self.gate.irreps_out, irreps_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fctp_1(x)
        if self.permute:
            x = x.index_select(1, self.perm)
        return self.fctp_2(self.gate(x))
