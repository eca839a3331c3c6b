"""Activations normalised to unit second moment (e3nn's normalize2mom constants, identical in
e3nn 0.4.4 and 0.6.0) and the equivariant gate."""

from typing import List, Sequence

import torch

from .irreps import Block, dim, simplify

SILU_NORM = 1.6791767923989418
SIGMOID_NORM = 1.8467055342154763
SMOOTH_LEAKY_RELU_NORM = 1.531320475574866


class ScaledSiLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = SILU_NORM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.norm


class SmoothLeakyReLU(torch.nn.Module):
    """((1+a)/2) x + ((1-a)/2) x (2 sigmoid(x) - 1), normalised; a = 0.2."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.a = negative_slope
        self.norm = SMOOTH_LEAKY_RELU_NORM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 0.5 * (1 + self.a) * x + 0.5 * (1 - self.a) * x * (2 * torch.sigmoid(x) - 1)
        return y * self.norm


class Gate(torch.nn.Module):
    """[scalars | gates | gated] -> [SiLU(scalars) | gated * sigmoid(gates)]."""

    gated_muls: List[int]  # channels of each gated irrep type (may be empty)
    gated_dims: List[int]  # 2l+1 of each gated irrep type

    def __init__(self, scalars: Sequence[Block], gates: Sequence[Block], gated: Sequence[Block]):
        super().__init__()
        self.silu_norm = SILU_NORM
        self.sigmoid_norm = SIGMOID_NORM
        self.num_scalars = dim(scalars)
        self.num_gates = dim(gates)
        self.irreps_out = list(scalars) + list(gated)
        self.gated_muls = [mul for mul, _, _ in simplify(gated)]
        self.gated_dims = [2 * l + 1 for _, l, _ in simplify(gated)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_gates == 0:
            return torch.nn.functional.silu(x) * self.silu_norm
        scalars, gates, gated = x.split([self.num_scalars, self.num_gates, x.shape[1] - self.num_scalars - self.num_gates], 1)
        n = x.shape[0]
        # each gate scales the 2l+1 components of its channel: a broadcast per gated type (an
        # index_select over channels has an atomic-add gradient in compiled code)
        gates = (torch.sigmoid(gates) * self.sigmoid_norm).split(self.gated_muls, dim=1)
        blocks = gated.split([m * d for m, d in zip(self.gated_muls, self.gated_dims)], dim=1)
        out = [torch.nn.functional.silu(scalars) * self.silu_norm]
        for block, g, mul, d in zip(blocks, gates, self.gated_muls, self.gated_dims):
            out.append((block.reshape(n, mul, d) * g.unsqueeze(2)).reshape(n, mul * d))
        return torch.cat(out, dim=1)

    def forward_frame(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """The same map on per-type order-major tensors: ``xs[0]`` is the 0e type [E, 1, scalars
        + gates], then one ``[E, 2l+1, mul]`` tensor per gated type."""
        if self.num_gates == 0:
            return [torch.nn.functional.silu(x) * self.silu_norm for x in xs]
        scalars, gates = xs[0].split([self.num_scalars, self.num_gates], dim=2)
        gates = (torch.sigmoid(gates) * self.sigmoid_norm).split(self.gated_muls, dim=2)
        out = [torch.nn.functional.silu(scalars) * self.silu_norm]
        for x, g in zip(xs[1:], gates):
            out.append(x * g)
        return out
