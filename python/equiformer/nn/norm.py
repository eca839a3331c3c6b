"""Equivariant layer norms over a node's irrep blocks ('component' normalisation).

Two variants with the same parameters (one scale per channel, one shift per 0e channel):

* `EquivariantLayerNorm` (official ``EquivariantLayerNormV2``): every irrep block divided by
  its own RMS. Degree l > 0 features vanish at sites of high symmetry (any atom of a perfect
  cubic lattice, a planar molecule's pseudo-scalars), where x / sqrt(|x|^2 + eps) has slope
  1 / sqrt(eps): the energy then changes on a length scale of about 1e-4 Angstrom.
* `JointEquivariantLayerNorm` (default of this package's models): one RMS per node over all
  its blocks, each block weighted equally (as EquiformerV2's RMS norm over all degrees).
  The centred scalars keep it away from zero, so a vanishing block passes through linearly
  and the energy is smooth on the scale of the atoms' own features.
"""

from typing import List, Sequence, Tuple

import torch

from .irreps import Block

LAYER_NORMS = ("joint", "per_block")


class EquivariantLayerNorm(torch.nn.Module):
    """Per irrep block: centre 0e channels, divide by the block's RMS over channels and
    components, scale per channel, shift 0e channels."""

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

    def fields(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The blocks as [n, mul, 2l+1], 0e channels centred."""
        n = x.shape[0]
        out: List[torch.Tensor] = []
        parts = x.split(self.sizes, dim=1)
        for k, (_, mul, d, scalar, _, _) in enumerate(self.layout):
            field = parts[k].reshape(n, mul, d)
            if scalar:
                field = field - field.mean(dim=1, keepdim=True)
            out.append(field)
        return out

    def affine(self, fields: List[torch.Tensor], inv_rms: List[torch.Tensor]) -> torch.Tensor:
        """Blocks times their 1/RMS [n, 1] and channel scale, 0e shifted; back to [n, dim]."""
        n = fields[0].shape[0] if len(fields) > 0 else 0
        out: List[torch.Tensor] = []
        for k, (_, mul, d, scalar, w, b) in enumerate(self.layout):
            scale = inv_rms[k] * self.affine_weight[w: w + mul]
            field = fields[k] * scale.unsqueeze(-1)
            if scalar:
                field = field + self.affine_bias[b: b + mul].unsqueeze(-1)
            out.append(field.reshape(n, mul * d))
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fields = self.fields(x)
        inv_rms = [(f.pow(2).mean(-1).mean(dim=1, keepdim=True) + self.eps).pow(-0.5) for f in fields]
        return self.affine(fields, inv_rms)


class JointEquivariantLayerNorm(EquivariantLayerNorm):
    """One RMS per node over all irrep blocks (the mean of the blocks' mean squares), 0e
    channels centred first; then the same per-channel scale and 0e shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fields = self.fields(x)
        ms = [f.pow(2).mean(-1).mean(dim=1, keepdim=True) for f in fields]
        inv_rms = (torch.stack(ms, dim=0).mean(0) + self.eps).pow(-0.5)
        return self.affine(fields, [inv_rms for _ in fields])


def layer_norm(kind: str, irreps: Sequence[Block]) -> EquivariantLayerNorm:
    if kind == "joint":
        return JointEquivariantLayerNorm(irreps)
    if kind == "per_block":
        return EquivariantLayerNorm(irreps)
    raise ValueError(f"'layer_norm' must be one of {', '.join(LAYER_NORMS)}, got {kind!r}")
