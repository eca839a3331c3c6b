"""Equivariant layer norm (official ``EquivariantLayerNormV2``, 'component' normalisation)."""

from typing import List, Sequence, Tuple

import torch

from .irreps import Block


class EquivariantLayerNorm(torch.nn.Module):
    """Per irrep block: centre 0e channels, divide by the RMS over channels and components,
    scale per channel, shift 0e channels."""

    def __init__(self, irreps: Sequence[Block], eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        layout: List[Tuple[int, int, int, bool, int, int]] = []  # start, mul, d, scalar, w_start, b_start
        start = w = b = 0
        for mul, l, p in irreps:
            scalar = l == 0 and p == 1
            layout.append((start, mul, 2 * l + 1, scalar, w, b))
            start += mul * (2 * l + 1)
            w += mul
            b += mul if scalar else 0
        self.layout = layout
        self.sizes = [mul * d for _, mul, d, _, _, _ in layout]
        self.affine_weight = torch.nn.Parameter(torch.ones(w))
        self.affine_bias = torch.nn.Parameter(torch.zeros(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        fields: List[torch.Tensor] = []
        parts = x.split(self.sizes, dim=1)
        for k, (start, mul, d, scalar, w, b) in enumerate(self.layout):
            field = parts[k].reshape(n, mul, d)
            if scalar:
                field = field - field.mean(dim=1, keepdim=True)
            norm = field.pow(2).mean(-1).mean(dim=1, keepdim=True)  # [n, 1]
            norm = (norm + self.eps).pow(-0.5) * self.affine_weight[w: w + mul]
            field = field * norm.unsqueeze(-1)
            if scalar:
                field = field + self.affine_bias[b: b + mul].unsqueeze(-1)
            fields.append(field.reshape(n, mul * d))
        return torch.cat(fields, dim=1)
