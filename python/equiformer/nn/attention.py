"""Equivariant graph attention (paper Sec. 3.3; official ``GraphAttention``)."""

import math
from typing import Final, List, Optional, Sequence, Tuple

import torch

from .activation import Gate, SmoothLeakyReLU
from .irreps import Block, dim, gate_split, num_scalars, simplify, sort_even_first
from .linear import IrrepsLinear
from .radial import RadialProfile
from .segment import gather_rows, segment_sum, weighted_softmax
from .edge_frame import from_frame, to_frame
from .tensor_product import DepthwiseTensorProduct


def heads_layout(irreps_head: Sequence[Block], num_heads: int) -> List[Tuple[int, int]]:
    """(start, width per head) of each irrep block of the all-heads vector.

    The all-heads vector is irrep-major: for each block of ``irreps_head`` (mul, l), all
    heads' channels follow each other, head h owning a contiguous chunk of mul*(2l+1).
    """
    layout: List[Tuple[int, int]] = []
    start = 0
    for mul, l, _ in irreps_head:
        width = mul * (2 * l + 1)
        layout.append((start, width))
        start += width * num_heads
    return layout


def vec_to_heads(x: torch.Tensor, layout: List[Tuple[int, int]], num_heads: int) -> torch.Tensor:
    n = x.shape[0]
    blocks = x.split([w * num_heads for _, w in layout], dim=1)
    parts = [b.reshape(n, num_heads, w) for b, (_, w) in zip(blocks, layout)]
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def heads_to_vec(x: torch.Tensor, layout: List[Tuple[int, int]], num_heads: int) -> torch.Tensor:
    n = x.shape[0]
    blocks = x.split([w for _, w in layout], dim=2)
    parts = [b.reshape(n, num_heads * w) for b, (_, w) in zip(blocks, layout)]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class SeparableTP(torch.nn.Module):
    """Depthwise TP with the edge harmonics, then a linear layer and optionally a gate
    (official ``SeparableFCTP`` without norm)."""

    # per linear output type, per output row: (path, input row, coefficient index, channel offset, mul)
    frame_rows: List[List[List[Tuple[int, int, int, int, int]]]]

    def __init__(self, irreps_in: Sequence[Block], irreps_sh: Sequence[Block], irreps_out: Sequence[Block],
                 radial_channels: List[int], activation: bool):
        super().__init__()
        internal = len(radial_channels) == 0
        self.dtp = DepthwiseTensorProduct(irreps_in, irreps_sh, irreps_out, internal_weights=internal)
        self.has_radial = not internal
        if self.has_radial:
            self.dtp_rad = RadialProfile(radial_channels + [self.dtp.weight_numel])
        scalars, gates, gated = gate_split(irreps_out)
        lin_out = simplify(scalars + gates + gated) if activation else list(irreps_out)
        self.lin = IrrepsLinear(simplify(self.dtp.irreps_out), lin_out)
        self.has_gate = activation
        self.gate = Gate(scalars, gates, gated) if activation else torch.nn.Identity()
        self._plan_frame()

    def _plan_frame(self) -> None:
        """Edge-frame plan of product + linear layer (see edge_frame.py): output row m of a
        linear output type is one matrix product of the input rows its paths couple to (one
        per path, scaled by the path's weights), side by side, with the matching rows of the
        linear weight scaled by the coupling coefficients."""
        dtp = self.dtp
        src = dtp.frame_src.tolist()
        scale = dtp.frame_scale.tolist()
        frame_rows: List[List[List[Tuple[int, int, int, int, int]]]] = []
        for seg, _, d, _, _, _ in self.lin.plan:
            per_row: List[List[Tuple[int, int, int, int, int]]] = []
            for r in range(d if seg >= 0 else 0):
                entries: List[Tuple[int, int, int, int, int]] = []
                offset = 0
                for k in dtp.type_paths[seg]:
                    _, mul, row, d3, _ = dtp.frame_plan[k]
                    assert d3 == d
                    if scale[row + r] != 0.0:
                        entries.append((k, src[row + r], row + r, offset, mul))
                    offset += mul
                per_row.append(entries)
            frame_rows.append(per_row)
        self.frame_rows = frame_rows

    def forward_frame(self, xs: List[torch.Tensor], weight: Optional[torch.Tensor],
                      extra: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Product and linear layer in the edge frame: input blocks and output types are
        ``[E, 2l+1, mul]`` (to_frame). ``extra``: a second weight on the 0e input type whose
        (bias-free) outputs are appended to the 0e output's channels."""
        dtp = self.dtp
        e = xs[0].shape[0]
        coef = (dtp.cg[dtp.frame_cg_index] * dtp.frame_scale).to(xs[0].dtype)
        rows: List[List[torch.Tensor]] = []
        if weight is None:
            block_rows = [x.unbind(1) for x in xs]
            for i, _, _, _, _ in dtp.frame_plan:
                rows.append(block_rows[i])
            w_paths = dtp.weight.to(xs[0].dtype).split(dtp.w_sizes)
        else:
            # per-edge path weights scale whole input blocks: autograd keeps the shared blocks
            ws = weight.split(dtp.w_sizes, dim=1)
            for k, (i, _, _, _, _) in enumerate(dtp.frame_plan):
                rows.append((xs[i] * ws[k].unsqueeze(1)).unbind(1))
            w_paths = ws
        outs: List[torch.Tensor] = []
        for o, (seg, mul_in, d, mul_out, w_start, has_bias) in enumerate(self.lin.plan):
            if seg < 0:
                outs.append(xs[0].new_zeros((e, d, mul_out)))
                continue
            w = self.lin.weight[w_start: w_start + mul_in * mul_out].view(mul_in, mul_out)
            bias = self.lin.bias
            if o == 0 and extra is not None:
                w = torch.cat([w, extra], dim=1)
                bias = torch.cat([bias, bias.new_zeros(extra.shape[1])])
            ys: List[torch.Tensor] = []
            for entries in self.frame_rows[o]:
                if len(entries) == 0:
                    ys.append(xs[0].new_zeros((e, w.shape[1])))
                    continue
                a: List[torch.Tensor] = []
                b: List[torch.Tensor] = []
                for k, m1, c, offset, mul in entries:
                    a.append(rows[k][m1])
                    wk = w[offset: offset + mul] * coef[c]
                    if weight is None:
                        wk = wk * w_paths[k].unsqueeze(1)
                    b.append(wk)
                ys.append(torch.cat(a, dim=1) @ torch.cat(b, dim=0) if len(a) > 1 else a[0] @ b[0])
            y = torch.stack(ys, dim=1) if len(ys) > 1 else ys[0].unsqueeze(1)
            if has_bias:
                y = y + bias
            outs.append(y)
        return outs


class GraphAttention(torch.nn.Module):
    """MLP attention over edges; non-linear (gated, second TP) or linear messages."""

    nonlinear_message: Final[bool]
    envelope: Final[bool]

    def __init__(self, irreps_node: Sequence[Block], irreps_sh: Sequence[Block], irreps_out: Sequence[Block],
                 irreps_head: Sequence[Block], num_heads: int, radial_channels: List[int],
                 nonlinear_message: bool, rescale_degree: bool, envelope: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.nonlinear_message = nonlinear_message
        self.rescale_degree = rescale_degree
        self.envelope = envelope  # the cutoff weight also scales each attention weight (segment.py)
        self.irreps_node = list(irreps_node)
        heads_all = simplify(sort_even_first([(m, l, p) for _ in range(num_heads) for m, l, p in irreps_head])[0])
        mul_alpha = num_scalars(heads_all)
        self.mul_alpha_head = mul_alpha // num_heads
        self.mul_alpha = mul_alpha
        self.merge_src = IrrepsLinear(irreps_node, irreps_node, bias=True)
        self.merge_dst = IrrepsLinear(irreps_node, irreps_node, bias=False)
        alpha_irreps = [(mul_alpha, 0, 1)]
        if nonlinear_message:
            self.sep_act = SeparableTP(irreps_node, irreps_sh, irreps_node, radial_channels, activation=True)
            self.sep_alpha = IrrepsLinear(simplify(self.sep_act.dtp.irreps_out), alpha_irreps)
            self.sep_value = SeparableTP(irreps_node, irreps_sh, heads_all, [], activation=False)
            self.alpha_layout = heads_layout([(self.mul_alpha_head, 0, 1)], num_heads)
            self.value_layout = heads_layout(irreps_head, num_heads)
            self.message_types = heads_all
        else:
            self.sep = SeparableTP(irreps_node, irreps_sh, simplify(alpha_irreps + heads_all), radial_channels,
                                   activation=False)
            self.message_layout = heads_layout(simplify([(self.mul_alpha_head, 0, 1)] + list(irreps_head)), num_heads)
            self.message_types = simplify(alpha_irreps + heads_all)
        self.value_out_layout = heads_layout(irreps_head, num_heads)
        self.alpha_act = SmoothLeakyReLU(0.2)
        self.alpha_dot = torch.nn.Parameter(torch.empty(1, num_heads, self.mul_alpha_head))
        torch.nn.init.xavier_uniform_(self.alpha_dot.view(num_heads, self.mul_alpha_head))
        self.proj = IrrepsLinear(heads_all, irreps_out, bias=True)

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, edge_sh: torch.Tensor,
                edge_basis: torch.Tensor, edge_weight: torch.Tensor, frames: List[torch.Tensor]) -> torch.Tensor:
        """``frames``: the edges' Wigner D matrices (edge_frame.py) to compute in edge frames,
        or empty for the reference SO(3) products; both compute the same function."""
        src_side, dst_side = self.node_inputs(x)
        return self.edges(gather_rows(src_side, edge_src), dst_side, edge_dst, edge_sh, edge_basis, edge_weight, frames)

    def node_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom inputs of the messages: (source side, centre side)."""
        return self.merge_src(x), self.merge_dst(x)

    def edges(self, src_rows: torch.Tensor, dst_side: torch.Tensor, edge_dst: torch.Tensor, edge_sh: torch.Tensor,
              edge_basis: torch.Tensor, edge_weight: torch.Tensor, frames: List[torch.Tensor]) -> torch.Tensor:
        """Attention output of the centres ``dst_side`` indexes (a subset of atoms when whole
        centres are evaluated a chunk at a time); ``src_rows``: source side of each edge."""
        n = dst_side.shape[0]
        message = src_rows + gather_rows(dst_side, edge_dst)
        if len(frames) > 0:
            alpha, value = self._frame_messages(message, edge_basis, frames)
            return self._attend(alpha, value, edge_dst, edge_weight, n)
        if self.nonlinear_message:
            message = self.sep_act.dtp(message, edge_sh, self.sep_act.dtp_rad(edge_basis))
            alpha = vec_to_heads(self.sep_alpha(message), self.alpha_layout, self.num_heads)
            value = self.sep_act.gate(self.sep_act.lin(message))
            value = self.sep_value.lin(self.sep_value.dtp(value, edge_sh, None))
            value = vec_to_heads(value, self.value_layout, self.num_heads)
        else:
            message = self.sep.lin(self.sep.dtp(message, edge_sh, self.sep.dtp_rad(edge_basis)))
            message = vec_to_heads(message, self.message_layout, self.num_heads)
            alpha = message[:, :, : self.mul_alpha_head]
            value = message[:, :, self.mul_alpha_head:]
        return self._attend(alpha, value, edge_dst, edge_weight, n)

    def _frame_messages(self, message: torch.Tensor, edge_basis: torch.Tensor,
                        frames: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha, value) of every edge, computed in its frame; value rotated back."""
        m = to_frame(message, self.irreps_node, frames)
        e = message.shape[0]
        if self.nonlinear_message:
            # alpha reads the product's scalars: its weight rides along the first linear layer
            m = self.sep_act.forward_frame(m, self.sep_act.dtp_rad(edge_basis), self.sep_alpha.weight.view(-1, self.mul_alpha))
            scalars, alpha = m[0].split([m[0].shape[2] - self.mul_alpha, self.mul_alpha], dim=2)
            alpha = (alpha.reshape(e, self.mul_alpha) + self.sep_alpha.bias).view(e, self.num_heads, self.mul_alpha_head)
            v = self.sep_act.gate.forward_frame([scalars] + m[1:])
            v = self.sep_value.forward_frame(v, None)
            value = vec_to_heads(from_frame(v, self.message_types, frames), self.value_layout, self.num_heads)
            return alpha, value
        m = self.sep.forward_frame(m, self.sep.dtp_rad(edge_basis))
        message = vec_to_heads(from_frame(m, self.message_types, frames), self.message_layout, self.num_heads)
        return message[:, :, : self.mul_alpha_head], message[:, :, self.mul_alpha_head:]

    def _attend(self, alpha: torch.Tensor, value: torch.Tensor, edge_dst: torch.Tensor, edge_weight: torch.Tensor,
                n: int) -> torch.Tensor:
        logits = (self.alpha_act(alpha) * self.alpha_dot).sum(-1)  # [E, heads]
        attn = weighted_softmax(logits, edge_weight, edge_dst, n, self.envelope)
        out = segment_sum(value * attn.unsqueeze(-1), edge_dst, n)
        out = heads_to_vec(out, self.value_out_layout, self.num_heads)
        if self.rescale_degree:
            out = out * segment_sum(edge_weight, edge_dst, n).unsqueeze(1)
        return self.proj(out)


class DotProductAttention(torch.nn.Module):
    """Dot-product attention variant (official ``DotProductAttention``): query from the centre
    atom, key and value linear in the merged message (depthwise TP with radial weights, then a
    linear layer); each irrep block of the score scaled by 1/sqrt(#irreps of a head * (2l+1))."""

    envelope: Final[bool]

    def __init__(self, irreps_node: Sequence[Block], irreps_sh: Sequence[Block], irreps_out: Sequence[Block],
                 irreps_head: Sequence[Block], num_heads: int, radial_channels: List[int], rescale_degree: bool,
                 envelope: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.rescale_degree = rescale_degree
        self.envelope = envelope
        self.irreps_node = list(irreps_node)
        heads_all = simplify(sort_even_first([(m, l, p) for _ in range(num_heads) for m, l, p in irreps_head])[0])
        kv_all = simplify(sort_even_first([(m, l, p) for _ in range(2 * num_heads) for m, l, p in irreps_head])[0])
        self.query = IrrepsLinear(irreps_node, heads_all, bias=True)
        self.merge_src = IrrepsLinear(irreps_node, irreps_node, bias=True)
        self.merge_dst = IrrepsLinear(irreps_node, irreps_node, bias=False)
        self.key_value = SeparableTP(irreps_node, irreps_sh, kv_all, radial_channels, activation=False)
        self.q_layout = heads_layout(irreps_head, num_heads)
        self.kv_layout = heads_layout(irreps_head, 2 * num_heads)
        self.kv_types = kv_all
        num_irreps = sum(m for m, _, _ in irreps_head)
        scale: List[float] = []
        for m, l, _ in irreps_head:
            scale.extend([(1.0 / math.sqrt(num_irreps)) * (1.0 / math.sqrt(2 * l + 1))] * (m * (2 * l + 1)))
        # exact constants: kept in float64 whatever the model dtype (see _apply)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64), persistent=False)
        self.proj = IrrepsLinear(heads_all, irreps_out, bias=True)

    def _apply(self, fn, recurse=True):
        keep = self.scale
        super()._apply(fn, recurse)
        self.scale = keep.to(device=self.scale.device, dtype=torch.float64)
        return self

    def forward(self, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, edge_sh: torch.Tensor,
                edge_basis: torch.Tensor, edge_weight: torch.Tensor, frames: List[torch.Tensor]) -> torch.Tensor:
        """``frames`` as in GraphAttention.forward."""
        src_side, dst_side = self.node_inputs(x)
        return self.edges(gather_rows(src_side, edge_src), dst_side, edge_dst, edge_sh, edge_basis, edge_weight, frames)

    def node_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(source side, centre side: merged message part and query side by side)."""
        return self.merge_src(x), torch.cat([self.merge_dst(x), self.query(x)], dim=1)

    def edges(self, src_rows: torch.Tensor, dst_side: torch.Tensor, edge_dst: torch.Tensor, edge_sh: torch.Tensor,
              edge_basis: torch.Tensor, edge_weight: torch.Tensor, frames: List[torch.Tensor]) -> torch.Tensor:
        """As GraphAttention.edges."""
        n = dst_side.shape[0]
        merged, query = dst_side.split([src_rows.shape[1], dst_side.shape[1] - src_rows.shape[1]], dim=1)
        q = vec_to_heads(query, self.q_layout, self.num_heads) * self.scale.to(query.dtype)
        message = src_rows + gather_rows(merged, edge_dst)
        if len(frames) > 0:
            kv = self.key_value.forward_frame(to_frame(message, self.irreps_node, frames),
                                              self.key_value.dtp_rad(edge_basis))
            kv = from_frame(kv, self.kv_types, frames)
        else:
            kv = self.key_value.lin(self.key_value.dtp(message, edge_sh, self.key_value.dtp_rad(edge_basis)))
        kv = vec_to_heads(kv, self.kv_layout, 2 * self.num_heads)
        key, value = kv[:, : self.num_heads], kv[:, self.num_heads:]
        logits = (gather_rows(q, edge_dst) * key).sum(-1)
        attn = weighted_softmax(logits, edge_weight, edge_dst, n, self.envelope)
        out = heads_to_vec(segment_sum(value * attn.unsqueeze(-1), edge_dst, n), self.q_layout, self.num_heads)
        if self.rescale_degree:
            out = out * segment_sum(edge_weight, edge_dst, n).unsqueeze(1)
        return self.proj(out)
