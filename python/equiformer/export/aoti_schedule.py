"""The chunked memory schedule (schedule.py's `ChunkedGradient`) driven through a compiled
package's layer entries (aoti_layers.py): the same order of work, each piece a compiled call,
so a `.pt2` evaluates large graphs with the memory of one chunk of edges, as the TorchScript
file does. The C++ runtime drives the same entries the same way (runtime.cpp).
"""

from typing import Callable, Dict, List, Sequence

import torch

from ..nn.features import differentiable, from_list
from ..schedule import Chunks, centre_chunks
from .aoti_layers import PAD_ROWS

Runner = Callable[..., Sequence[torch.Tensor]]


def zero_rows(t: torch.Tensor) -> torch.Tensor:
    return t.new_zeros((PAD_ROWS,) + tuple(t.shape[1:]))


def padded(t: torch.Tensor) -> torch.Tensor:
    """``t`` with `PAD_ROWS` zero rows appended."""
    return torch.cat([t, zero_rows(t)])


class CompiledChunked:
    """Per-atom energies and d(local energy)/d(edge vectors) from a package's layer entries."""

    def __init__(self, runners: Dict[str, Runner], weights: List[List[torch.Tensor]], kinds: List[int],
                 readout_edges: bool, edge_chunk: int, pad_vectors: torch.Tensor):
        self.run = runners
        self.weights = weights
        self.kinds = kinds
        self.readout_edges = readout_edges
        self.edge_chunk = edge_chunk
        self.pad_vectors = pad_vectors  # the padding edges' vectors (export/aoti.py's dimer)
        self.pad_features = list(runners["features_fwd"](pad_vectors))

    # ---------------------------------------------------------------- padding
    def edge_features(self, parts: List[torch.Tensor]) -> List[torch.Tensor]:
        return [torch.cat([p, q]) for p, q in zip(parts, self.pad_features)]

    def centres(self, dst: torch.Tensor, n: int) -> torch.Tensor:
        """A chunk's local centre index with the padding edges into the padding centres."""
        return torch.cat([dst, torch.arange(n, n + PAD_ROWS, dtype=dst.dtype, device=dst.device)])

    def features(self, vec: torch.Tensor, chunks: Chunks) -> List[torch.Tensor]:
        parts = []
        for ea, eb in zip(chunks.edges[:-1], chunks.edges[1:]):
            out = self.run["features_fwd"](torch.cat([vec[ea:eb], self.pad_vectors]))
            parts.append([t[:eb - ea] for t in out])
        return [torch.cat(p) for p in zip(*parts)]

    # ---------------------------------------------------------------- the schedule
    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int):
        """(atom energies [N] float64, gradient [E, 3]), edges in any order."""
        n = int(species.shape[0])
        order = torch.argsort(edge_index[1], stable=True)
        src, dst = edge_index[0][order], edge_index[1][order]
        vec = edge_vectors[order]
        chunks = centre_chunks(dst, n, self.edge_chunk)
        feats = self.features(vec, chunks)
        x = self.embed(species, dst, feats, chunks)
        xs = []
        for k in range(len(self.kinds)):
            xs.append(x)
            x = self.block(k, x, src, dst, feats, chunks)
        energies = self.readout(species, x, src, dst, feats)
        local = (torch.arange(n, device=species.device) < n_local).to(torch.float64)
        grad_x, grad_feats = self.readout_vjp(species, x, src, dst, feats, local)
        for k in reversed(range(len(self.kinds))):
            grad_x = self.block_vjp(k, xs[k], grad_x, src, dst, feats, grad_feats, chunks)
        self.embed_vjp(species, dst, feats, grad_x, grad_feats, chunks)
        grad = self.features_vjp(vec, grad_feats, chunks)
        return energies, torch.zeros_like(grad).index_copy_(0, order, grad)

    def embed(self, species, dst, feats, chunks: Chunks) -> torch.Tensor:
        parts = []
        for (a, b), (ea, eb) in zip(spans(chunks.nodes), spans(chunks.edges)):
            out = self.run["embed_fwd"](padded(species[a:b]), self.centres(dst[ea:eb] - a, b - a),
                                        *self.edge_features([f[ea:eb] for f in feats]))
            parts.append(out[0][:b - a])
        return torch.cat(parts)

    def block(self, k: int, x, src, dst, feats, chunks: Chunks) -> torch.Tensor:
        name, w = f"block{self.kinds[k]}", self.weights[k]
        src_side, dst_side = (t[:-PAD_ROWS] for t in self.run[name + "_inputs_fwd"](*w, padded(x)))
        parts = []
        for (a, b), (ea, eb) in zip(spans(chunks.nodes), spans(chunks.edges)):
            out = self.run[name + "_fwd"](*w, padded(x[a:b]), padded(src_side[src[ea:eb]]), padded(dst_side[a:b]),
                                         self.centres(dst[ea:eb] - a, b - a),
                                         *self.edge_features([f[ea:eb] for f in feats]))
            parts.append(out[0][:b - a])
        return torch.cat(parts)

    def readout(self, species, x, src, dst, feats) -> torch.Tensor:
        return self.run["readout_fwd"](*self.readout_args(species, x, src, dst, feats))[0][:-PAD_ROWS]

    def readout_args(self, species, x, src, dst, feats) -> List[torch.Tensor]:
        args = [padded(species), padded(x)]
        if self.readout_edges:
            n = int(species.shape[0])
            pad = torch.arange(n, n + PAD_ROWS, dtype=src.dtype, device=src.device)
            args += [torch.cat([src, pad.flip(0)]), torch.cat([dst, pad])] + self.edge_features(feats)
        return args

    # ---------------------------------------------------------------- vector-Jacobian products
    def readout_vjp(self, species, x, src, dst, feats, grad_energies):
        """(d/dx, d/d(each differentiable feature)); an MLP head has none of the latter."""
        out = self.run["readout_vjp"](*self.readout_args(species, x, src, dst, feats), padded(grad_energies))
        grad_x = out[0][:-PAD_ROWS]
        if self.readout_edges:
            return grad_x, [g[:-PAD_ROWS].clone() for g in out[1:]]
        e = int(src.shape[0])
        return grad_x, [torch.zeros((e,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
                        for p in differentiable(from_list(self.pad_features))]

    def block_vjp(self, k: int, x, grad_y, src, dst, feats, grad_feats, chunks: Chunks) -> torch.Tensor:
        name, w = f"block{self.kinds[k]}", self.weights[k]
        src_side, dst_side = (t[:-PAD_ROWS] for t in self.run[name + "_inputs_fwd"](*w, padded(x)))
        grad_x = torch.zeros_like(x)
        grad_src, grad_dst = torch.zeros_like(src_side), torch.zeros_like(dst_side)
        for (a, b), (ea, eb) in zip(spans(chunks.nodes), spans(chunks.edges)):
            out = self.run[name + "_vjp"](*w, padded(x[a:b]), padded(src_side[src[ea:eb]]), padded(dst_side[a:b]),
                                         self.centres(dst[ea:eb] - a, b - a),
                                         *self.edge_features([f[ea:eb] for f in feats]), padded(grad_y[a:b]))
            grad_x[a:b] += out[0][:b - a]
            grad_src.index_add_(0, src[ea:eb], out[1][:eb - ea])
            grad_dst[a:b] += out[2][:b - a]
            for total, part in zip(grad_feats, out[3:]):
                total[ea:eb] += part[:eb - ea]
        through = self.run[name + "_inputs_vjp"](*w, padded(x), padded(grad_src), padded(grad_dst))[0]
        return grad_x + through[:-PAD_ROWS]

    def embed_vjp(self, species, dst, feats, grad_x, grad_feats, chunks: Chunks) -> None:
        for (a, b), (ea, eb) in zip(spans(chunks.nodes), spans(chunks.edges)):
            out = self.run["embed_vjp"](padded(species[a:b]), self.centres(dst[ea:eb] - a, b - a),
                                        *self.edge_features([f[ea:eb] for f in feats]), padded(grad_x[a:b]))
            for total, part in zip(grad_feats, out):
                total[ea:eb] += part[:eb - ea]

    def features_vjp(self, vec, grad_feats, chunks: Chunks) -> torch.Tensor:
        grad = torch.zeros_like(vec)
        for ea, eb in spans(chunks.edges):
            out = self.run["features_vjp"](torch.cat([vec[ea:eb], self.pad_vectors]),
                                           *[padded(g[ea:eb]) for g in grad_feats])
            grad[ea:eb] = out[0][:eb - ea]
        return grad


def spans(bounds: List[int]):
    return zip(bounds[:-1], bounds[1:])
