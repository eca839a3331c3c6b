"""Sums and softmax over the incoming edges of each centre atom, with core torch ops only."""

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
