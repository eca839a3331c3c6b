"""Equivariant linear layer (the official ``LinearRS`` / ``FullyConnectedTensorProductRescale``
with the constant ``1x0e`` second input): one dense matrix per irrep type, bias on 0e.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch

from .irreps import Block, dim


def _type_segments(bs: Sequence[Block], what: str) -> Dict[Tuple[int, int], Tuple[int, int]]:
    """(l, p) -> (start offset, total multiplicity); blocks of one type must be adjacent."""
    segments: Dict[Tuple[int, int], Tuple[int, int]] = {}
    offset = 0
    previous = None
    for mul, l, p in bs:
        key = (l, p)
        if key in segments and previous != key:
            raise ValueError(f"{what}: blocks of irrep l={l} p={p} are not adjacent in {list(bs)}")
        if key in segments:
            start, total = segments[key]
            segments[key] = (start, total + mul)
        else:
            segments[key] = (offset, mul)
        offset += mul * (2 * l + 1)
        previous = key
    return segments


class IrrepsLinear(torch.nn.Module):
    """y_l = x_l W_l (+ b on 0e) for every irrep type present in both input and output.

    Weights are stored flat, one row-major ``[mul_in, mul_out]`` matrix per output irrep type
    in output order. Output types without a matching input are zero, as in the official code.
    """

    def __init__(self, irreps_in: Sequence[Block], irreps_out: Sequence[Block], bias: bool = True):
        super().__init__()
        self.irreps_in = list(irreps_in)
        self.irreps_out = list(irreps_out)
        self.dim_in = dim(irreps_in)
        self.dim_out = dim(irreps_out)
        seg_in = _type_segments(irreps_in, "linear input")
        seg_out = _type_segments(irreps_out, "linear output")
        paths: List[Tuple[int, int, int, int, int, int]] = []  # in_start, mul_in, d, out_start, mul_out, w_start
        w = 0
        for (l, p), (out_start, mul_out) in seg_out.items():
            if (l, p) not in seg_in:
                continue
            in_start, mul_in = seg_in[(l, p)]
            paths.append((in_start, mul_in, 2 * l + 1, out_start, mul_out, w))
            w += mul_in * mul_out
        self.paths = paths
        self.weight = torch.nn.Parameter(torch.empty(w))
        for in_start, mul_in, d, out_start, mul_out, w_start in paths:
            torch.nn.init.normal_(self.weight[w_start: w_start + mul_in * mul_out], std=1.0 / math.sqrt(mul_in))
        self.num_bias = seg_out[(0, 1)][1] if bias and (0, 1) in seg_out else 0
        self.bias_start = seg_out[(0, 1)][0] if self.num_bias > 0 else 0
        self.bias = torch.nn.Parameter(torch.zeros(self.num_bias))

    @torch.jit.unused
    def type_slice(self, l: int, p: int) -> Tuple[int, int, int]:
        """(offset in `weight`, mul_in, mul_out) of the matrix of irrep type (l, p)."""
        out_start = _type_segments(self.irreps_out, "linear output")[(l, p)][0]
        for _, mul_in, _, start, mul_out, w_start in self.paths:
            if start == out_start:
                return w_start, mul_in, mul_out
        raise KeyError((l, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = x.new_zeros((n, self.dim_out))
        for in_start, mul_in, d, out_start, mul_out, w_start in self.paths:
            w = self.weight[w_start: w_start + mul_in * mul_out].view(mul_in, mul_out)
            xi = x[:, in_start: in_start + mul_in * d]
            if d == 1:
                y = xi @ w
            else:
                y = torch.matmul(xi.reshape(n, mul_in, d).transpose(1, 2), w).transpose(1, 2).reshape(n, mul_out * d)
            out[:, out_start: out_start + mul_out * d] = y
        if self.num_bias > 0:
            out[:, self.bias_start: self.bias_start + self.num_bias] += self.bias
        return out
