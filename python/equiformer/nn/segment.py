"""Sums and softmax over the incoming edges of each centre atom, with core torch ops only."""

from typing import List, Tuple

import torch


def segment_sum(x: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    out = x.new_zeros((num_segments,) + x.shape[1:])
    return out.index_add(0, index, x)


def weighted_softmax(logits: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, num_segments: int,
                     envelope: bool = False) -> torch.Tensor:
    """alpha_e = w_e exp(a_e) / sum_{e' -> same centre} w_e' exp(a_e') per head, times w_e
    again with ``envelope``.

    logits [E, H], weights [E] in [0, 1] (the cutoff envelope, or a 0/1 mask). With 0/1
    weights this is the ordinary softmax over the edges inside the cutoff (PyG's epsilon
    1e-16 in the denominator). With a smooth envelope inside the softmax alone an edge enters
    and leaves the sum continuously while the centre has other neighbours, but an atom's
    only neighbour gets weight ~1 however small w is (the energy jumps when the first
    neighbour enters). The factor w_e outside (``envelope``) takes every weight, and so the
    attention output, continuously to zero as the last neighbours leave.
    """
    heads = logits.shape[1]
    valid = (weights > 0).unsqueeze(1)
    masked = torch.where(valid, logits, torch.full_like(logits, float("-inf")))
    idx = index.unsqueeze(1).expand(-1, heads)
    amax = logits.new_full((num_segments, heads), float("-inf"))
    amax = amax.scatter_reduce(0, idx, masked, reduce="amax", include_self=True)
    amax = torch.where(torch.isinf(amax), torch.zeros_like(amax), amax).detach()
    e = torch.exp(torch.where(valid, logits - amax[index], torch.full_like(logits, float("-inf"))))
    e = e * weights.unsqueeze(1)
    denom = segment_sum(e, index, num_segments)
    alpha = e / (denom[index] + 1e-16)
    if envelope:
        alpha = alpha * weights.unsqueeze(1)
    return alpha


# Evaluation a chunk of whole centre atoms at a time (edges sorted by centre):
# (node boundaries, edge boundaries), chunk c = centres nodes[c]:nodes[c+1], edges edges[c]:edges[c+1]
Chunks = Tuple[List[int], List[int]]
# per-edge inputs of the layers: (harmonics, radial basis, cutoff weight, frame rotations per degree)
EdgeFeatures = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[torch.Tensor]]


def centre_chunks(edge_dst: torch.Tensor, num_nodes: int, chunk_edges: int) -> Chunks:
    """Chunks of consecutive centres with about ``chunk_edges`` edges each (more only where
    one centre has more); ``edge_dst`` sorted."""
    if chunk_edges < 1:
        raise ValueError("edge_chunk must be a positive number of edges per chunk, got " + str(chunk_edges)
                         + "; set model.edge_chunk to e.g. 2048")
    ends = torch.cumsum(torch.bincount(edge_dst, minlength=num_nodes), 0)
    num_chunks = max(1, (edge_dst.shape[0] + chunk_edges - 1) // chunk_edges)
    targets = torch.arange(1, num_chunks, device=edge_dst.device) * chunk_edges
    cuts = torch.searchsorted(ends, targets, right=True)
    zero = torch.zeros(1, dtype=cuts.dtype, device=cuts.device)
    nodes = torch.unique_consecutive(torch.cat([zero, cuts, zero + num_nodes]))
    edges = torch.cat([zero, ends[nodes[1:] - 1]]) if num_nodes > 0 else zero.repeat(2)
    node_list: List[int] = nodes.tolist()
    edge_list: List[int] = edges.tolist()
    return node_list, edge_list


def slice_features(features: EdgeFeatures, start: int, end: int) -> EdgeFeatures:
    sh, basis, weight, frames = features
    return sh[start:end], basis[start:end], weight[start:end], [f[start:end] for f in frames]


def feature_list(features: EdgeFeatures) -> List[torch.Tensor]:
    """The differentiable edge features as one list: sh, basis, weight, frames[1:]
    (frames[0], the identity of degree 0, is a constant)."""
    sh, basis, weight, frames = features
    return [sh, basis, weight] + frames[1:]
