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
        self.bias = torch.nn.Parameter(torch.zeros(self.num_bias))
        # forward plan: split the input once into type segments, one output piece per output
        # type segment (split/cat keep the backward pass free of full-size zero buffers)
        in_types = list(seg_in.items())
        self.in_sizes = [mul * (2 * l + 1) for (l, _), (_, mul) in in_types]
        in_index = {key: i for i, (key, _) in enumerate(in_types)}
        path_of = {out_start: (mul_in, w_start) for _, mul_in, _, out_start, _, w_start in paths}
        plan: List[Tuple[int, int, int, int, int, bool]] = []  # in segment (-1: none), mul_in, d, mul_out, w_start, bias
        for (l, p), (out_start, mul_out) in seg_out.items():
            mul_in, w_start = path_of.get(out_start, (0, 0))
            seg = in_index[(l, p)] if (l, p) in in_index else -1
            plan.append((seg, mul_in, 2 * l + 1, mul_out, w_start, (l, p) == (0, 1) and self.num_bias > 0))
        self.plan = plan

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
        parts = x.split(self.in_sizes, dim=1)
        outs: List[torch.Tensor] = []
        for seg, mul_in, d, mul_out, w_start, has_bias in self.plan:
            if seg < 0:
                y = x.new_zeros((n, mul_out * d))
            else:
                w = self.weight[w_start: w_start + mul_in * mul_out].view(mul_in, mul_out)
                if d == 1:
                    y = parts[seg] @ w
                else:
                    xi = parts[seg].reshape(n, mul_in, d).transpose(1, 2).reshape(n * d, mul_in)
                    y = (xi @ w).view(n, d, mul_out).transpose(1, 2).reshape(n, mul_out * d)
            if has_bias:
                y = y + self.bias
            outs.append(y)
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
