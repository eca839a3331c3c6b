"""Memory schedules: how the gradient of the energy with respect to the edge vectors is
evaluated. The model (model.py) is the function; a schedule decides what is kept and what is
recomputed, and calls the model's pieces (`edge_features`, `embed`, the blocks'
`attention_inputs` / `attention_edges` / `feed_forward`, `readout`).

One autograd pass (`single_pass` in export/contract.py) keeps every layer's per-edge
intermediates: about 125 kB per edge at the paper's L2 settings. `ChunkedGradient` keeps none:

* Edges are sorted by centre atom and cut into chunks of whole centres (about `edge_chunk`
  edges each). A centre's softmax sees only its own edges, so attention evaluated a chunk at
  a time is exact; norms and feed-forward are per atom.
* Forward without a graph, a chunk at a time, keeping the edge features and each block's
  input (a few kB per atom).
* Backward, block by block in reverse, a chunk at a time: the chunk's attention, residual and
  feed-forward are recomputed with their graph and differentiated at once; gradients with
  respect to the edge features are summed over layers and taken back to the edge vectors
  once at the end, also by chunks. With an MLP head, the last block and the head run only
  there (never in the forward).

The same per-layer pieces serve engines that exchange node features between layers (LAMMPS
`mode layer`, the C++ runtime): `layer`, `layer_by_chunks`, `layer_vjp`, `features_vjp`.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch

from .model import Equiformer
from .nn.features import EdgeFeatures, differentiable, slice_features, with_differentiable


class Chunks(NamedTuple):
    """Chunk c holds centres nodes[c]:nodes[c+1] and their edges edges[c]:edges[c+1]."""

    nodes: List[int]
    edges: List[int]


def centre_chunks(edge_dst: torch.Tensor, num_nodes: int, chunk_edges: int) -> Chunks:
    """Chunks of consecutive centres with about ``chunk_edges`` edges each (more only where
    one centre has more); ``edge_dst`` sorted."""
    if chunk_edges < 1:
        raise ValueError("edge_chunk must be a positive number of edges per chunk, got " + str(chunk_edges)
                         + "; set it to e.g. 2048")
    ends = torch.cumsum(torch.bincount(edge_dst, minlength=num_nodes), 0)
    num_chunks = max(1, (edge_dst.shape[0] + chunk_edges - 1) // chunk_edges)
    targets = torch.arange(1, num_chunks, device=edge_dst.device) * chunk_edges
    cuts = torch.searchsorted(ends, targets, right=True)
    zero = torch.zeros(1, dtype=cuts.dtype, device=cuts.device)
    nodes = torch.unique_consecutive(torch.cat([zero, cuts, zero + num_nodes]))
    edges = torch.cat([zero, ends[nodes[1:] - 1]]) if num_nodes > 0 else zero.repeat(2)
    node_list: List[int] = nodes.tolist()
    edge_list: List[int] = edges.tolist()
    return Chunks(node_list, edge_list)


class SortedGraph(NamedTuple):
    """Edges sorted by centre (stable), the permutation that sorted them, and the chunks."""

    order: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    chunks: Chunks


def zeros_like_all(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    return [torch.zeros_like(t) for t in tensors]


def add_rows(total: List[torch.Tensor], parts: List[Optional[torch.Tensor]], start: int, end: int) -> None:
    """total[i][start:end] += parts[i] where a gradient exists."""
    for i in range(len(total)):
        g = parts[i]
        if g is not None:
            total[i][start:end] += g


def features_in_order(features: EdgeFeatures, order: torch.Tensor) -> EdgeFeatures:
    return EdgeFeatures(features.harmonics[order], features.basis[order], features.weight[order],
                        [f[order] for f in features.frames])


def edge_ranges(num_edges: int, chunk: int) -> List[int]:
    """Boundaries of consecutive ranges of ``chunk`` edges (the last one shorter)."""
    bounds = list(range(0, num_edges, max(1, chunk)))
    bounds.append(num_edges)
    return bounds


class ChunkedBlock(torch.nn.Module):
    """One transformer block evaluated a chunk of centres at a time, without a graph
    (`by_chunks`) or with its gradient (`vjp`). It holds the model for the fused head of the
    last block. (A schedule's loops live here, not in functions taking the block as an
    argument: torch.jit.freeze, which openmm-torch applies, cannot follow such calls.)"""

    def __init__(self, model: Equiformer, block: torch.nn.Module):
        super().__init__()
        self.model = model
        self.block = block

    def by_chunks(self, x: torch.Tensor, g: SortedGraph, features: EdgeFeatures) -> torch.Tensor:
        """The block's output without a graph, a chunk of centres at a time."""
        src_side, dst_side = self.block.attention_inputs(x)
        nodes, edges = g.chunks
        parts: List[torch.Tensor] = []
        for c in range(len(nodes) - 1):
            a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
            att = self.block.attention_edges(src_side[g.src[ea:eb]], dst_side[a:b], g.dst[ea:eb] - a,
                                      slice_features(features, ea, eb))
            parts.append(self.block.feed_forward(x[a:b] + att))
        return torch.cat(parts, dim=0)

    def vjp(self, x: torch.Tensor, grad_out: torch.Tensor, species: torch.Tensor,
            g: SortedGraph, features: EdgeFeatures, grad_features: List[torch.Tensor],
            with_head: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(atom energies or an empty tensor, gradient with respect to the block's input
        ``x``) from the gradient with respect to its output; adds the edge features'
        gradients to ``grad_features``. ``with_head``: the head runs on the block's output a
        chunk at a time, ``grad_out`` is then the gradient with respect to the energies."""
        x = x.detach().requires_grad_(True)
        src_side, dst_side = self.block.attention_inputs(x)
        grad_x = torch.zeros_like(x)
        grad_src = torch.zeros_like(src_side)
        grad_dst = torch.zeros_like(dst_side)
        energies: List[torch.Tensor] = []
        nodes, edges = g.chunks
        no_edges = g.src[:0]
        for c in range(len(nodes) - 1):
            a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
            chunk = slice_features(features, ea, eb)
            leaves = [x[a:b].detach(), src_side[g.src[ea:eb]].detach(), dst_side[a:b].detach()] + differentiable(chunk)
            leaves = [t.requires_grad_(True) for t in leaves]
            att = self.block.attention_edges(leaves[1], leaves[2], g.dst[ea:eb] - a, with_differentiable(chunk, leaves[3:]))
            out = self.block.feed_forward(leaves[0] + att)
            if with_head:
                empty = slice_features(chunk, 0, 0)
                out = self.model.readout(species[a:b], out, no_edges, no_edges, empty)
                energies.append(out.detach())
            seed: List[Optional[torch.Tensor]] = [grad_out[a:b].to(out.dtype)]
            grads = torch.autograd.grad([out], leaves, seed, allow_unused=True)
            first = grads[0]
            if first is not None:
                grad_x[a:b] += first
            rows = grads[1]
            if rows is not None:
                grad_src.index_add_(0, g.src[ea:eb], rows)
            centres = grads[2]
            if centres is not None:
                grad_dst[a:b] += centres
            add_rows(grad_features, grads[3:], ea, eb)
        seeds: List[Optional[torch.Tensor]] = [grad_src, grad_dst]
        through = torch.autograd.grad([src_side, dst_side], [x], seeds)[0]
        assert through is not None
        e = torch.cat(energies, dim=0) if len(energies) > 0 else grad_x.new_zeros(0, dtype=torch.float64)
        return e, grad_x + through


class ChunkedGradient(torch.nn.Module):
    """Per-atom energies and their gradient with respect to the edge vectors of an
    `Equiformer`, with the memory of one chunk of edges (module docstring)."""

    edge_chunk: int

    def __init__(self, model: Equiformer, edge_chunk: int = 2048):
        super().__init__()
        self.model = model
        self.edge_chunk = int(edge_chunk)
        self.blocks = torch.nn.ModuleList([ChunkedBlock(model, blk) for blk in model.blocks])
        # the same, last first, for the backward sweep: TorchScript indexes a ModuleList only
        # with a literal, and torch.jit.freeze (openmm-torch) refuses any other access
        self.blocks_last_first = torch.nn.ModuleList(list(self.blocks)[::-1])

    def sort(self, edge_index: torch.Tensor, num_nodes: int) -> SortedGraph:
        order = torch.argsort(edge_index[1], stable=True)
        src, dst = edge_index[0][order], edge_index[1][order]
        return SortedGraph(order, src, dst, centre_chunks(dst, num_nodes, self.edge_chunk))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-atom energies [N] float64, gradient of the first ``n_local`` atoms' energy
        with respect to the edge vectors [E, 3])."""
        model = self.model
        g = self.sort(edge_index, species.shape[0])
        vec = edge_vectors.detach().to(model.energy_dtype())[g.order]
        # an MLP head is per atom, like all of the last block after its attention: both then
        # run a chunk at a time in the backward sweep, with their gradient, and never before
        fused = not model.head.attention and model.num_layers > 0
        xs: List[torch.Tensor] = []  # each block's input
        with torch.no_grad():
            features = model.edge_features(vec)
            x = self.embed_by_chunks(species, g, features)
            for i, blk in enumerate(self.blocks):
                xs.append(x)
                if not fused or i < model.num_layers - 1:
                    x = blk.by_chunks(x, g, features)
        grad_features = zeros_like_all(differentiable(features))
        local = (torch.arange(species.shape[0], device=species.device) < n_local).to(torch.float64)
        e_atoms, g_x = local, local
        if not fused:
            e_atoms, g_x = self.readout_vjp(species, x, local, g, features, grad_features)
        k = model.num_layers - 1
        for blk in self.blocks_last_first:
            with_head = fused and k == model.num_layers - 1
            e, g_x = blk.vjp(xs[k], local if with_head else g_x, species, g, features, grad_features, with_head)
            if with_head:
                e_atoms = e
            k -= 1
        self.embed_vjp(species, g_x, g, features, grad_features)
        grad = self.features_vjp(vec, grad_features, g.chunks.edges)
        return e_atoms.detach(), torch.zeros_like(grad).index_copy_(0, g.order, grad)

    # ---------------------------------------------------------------- one layer at a time (engines)
    # Layer s: 0 the embedding, 1..num_layers the blocks, num_layers + 1 the readout. The edges
    # may come in any order; features are the model's `edge_features` of them.
    def layer_by_chunks(self, s: int, species: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                        features: EdgeFeatures) -> torch.Tensor:
        """Layer s's output without a graph, a chunk of centres at a time."""
        g = self.sort(edge_index, species.shape[0])
        features = features_in_order(features, g.order)
        with torch.no_grad():
            if s == 0:
                return self.embed_by_chunks(species, g, features)
            for i, blk in enumerate(self.blocks):
                if i == s - 1:
                    return blk.by_chunks(x, g, features)
            return self.model.readout(species, x, g.src, g.dst, features)

    def layer_vjp(self, s: int, species: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor,
                  edge_index: torch.Tensor, features: EdgeFeatures) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(gradient with respect to layer s's input x, gradients with respect to the
        `differentiable` edge features) from the gradient with respect to its output,
        recomputing the layer a chunk at a time."""
        g = self.sort(edge_index, species.shape[0])
        features = features_in_order(features, g.order)
        grad_features = zeros_like_all(differentiable(features))
        if s == 0:
            self.embed_vjp(species, grad_out, g, features, grad_features)
            grad_x = torch.zeros_like(x)
        elif s <= self.model.num_layers:
            grad_x = torch.zeros_like(x)
            for i, blk in enumerate(self.blocks):
                if i == s - 1:
                    grad_x = blk.vjp(x, grad_out, species, g, features, grad_features, False)[1]
        else:
            grad_x = self.readout_vjp(species, x, grad_out, g, features, grad_features)[1]
        return grad_x, [torch.zeros_like(t).index_copy_(0, g.order, t) for t in grad_features]

    # ---------------------------------------------------------------- forward, no graph
    def embed_by_chunks(self, species: torch.Tensor, g: SortedGraph, features: EdgeFeatures) -> torch.Tensor:
        nodes, edges = g.chunks
        parts: List[torch.Tensor] = []
        for c in range(len(nodes) - 1):
            a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
            parts.append(self.model.embed(species[a:b], g.dst[ea:eb] - a, slice_features(features, ea, eb)))
        return torch.cat(parts, dim=0)

    # ---------------------------------------------------------------- vector-Jacobian products
    def readout_vjp(self, species: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor, g: SortedGraph,
                    features: EdgeFeatures, grad_features: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(atom energies, gradient with respect to the head's input); the features' go to
        ``grad_features`` (an attention head looks at every edge once: one pass, not chunked)."""
        leaves = [x.detach()] + differentiable(features)
        leaves = [t.detach().requires_grad_(True) for t in leaves]
        out = self.model.readout(species, leaves[0], g.src, g.dst, with_differentiable(features, leaves[1:]))
        seed: List[Optional[torch.Tensor]] = [grad_out.to(out.dtype)]
        grads = torch.autograd.grad([out], leaves, seed, allow_unused=True)
        add_rows(grad_features, grads[1:], 0, g.src.shape[0])
        first = grads[0]
        return out.detach(), first if first is not None else torch.zeros_like(x)

    def embed_vjp(self, species: torch.Tensor, grad_x: torch.Tensor, g: SortedGraph, features: EdgeFeatures,
                  grad_features: List[torch.Tensor]) -> None:
        """Adds the embedding's gradient with respect to the edge features (species have none)."""
        nodes, edges = g.chunks
        for c in range(len(nodes) - 1):
            a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
            chunk = slice_features(features, ea, eb)
            leaves = [t.detach().requires_grad_(True) for t in differentiable(chunk)]
            out = self.model.embed(species[a:b], g.dst[ea:eb] - a, with_differentiable(chunk, leaves))
            seed: List[Optional[torch.Tensor]] = [grad_x[a:b]]
            add_rows(grad_features, torch.autograd.grad([out], leaves, seed, allow_unused=True), ea, eb)

    def features_vjp(self, vec: torch.Tensor, grad_features: List[torch.Tensor], edges: List[int]) -> torch.Tensor:
        """Edge features -> edge vectors, edges edges[c]:edges[c+1] at a time."""
        grad = torch.zeros_like(vec)
        for c in range(len(edges) - 1):
            ea, eb = edges[c], edges[c + 1]
            v = vec[ea:eb].clone().requires_grad_(True)
            outs = differentiable(self.model.edge_features(v))
            used: List[torch.Tensor] = []
            seeds: List[Optional[torch.Tensor]] = []
            for f, gf in zip(outs, grad_features):
                if f.requires_grad:
                    used.append(f)
                    seeds.append(gf[ea:eb])
            if len(used) > 0:
                gv = torch.autograd.grad(used, [v], seeds, allow_unused=True)[0]
                if gv is not None:
                    grad[ea:eb] += gv
        return grad
