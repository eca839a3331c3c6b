"""The per-edge inputs of the layers, computed once from the edge vectors: everything the
blocks know about the geometry."""

from typing import List, NamedTuple

import torch


class EdgeFeatures(NamedTuple):
    """Per-edge features ([E, ...] each). A part the evaluation path does not use may be an
    empty tensor (harmonics on the edge-frame path) or an empty list (frames on the SO(3)
    reference path)."""

    harmonics: torch.Tensor  # spherical harmonics of the edge direction [E, (L+1)^2]
    basis: torch.Tensor  # radial basis of the edge length [E, num_basis]
    weight: torch.Tensor  # cutoff weight: envelope or 0/1 mask [E]
    frames: List[torch.Tensor]  # Wigner D matrices per degree of the edge-frame rotation [E, 2l+1, 2l+1]


def slice_features(features: EdgeFeatures, start: int, end: int) -> EdgeFeatures:
    """The features of edges start:end."""
    return EdgeFeatures(features.harmonics[start:end], features.basis[start:end], features.weight[start:end],
                        [f[start:end] for f in features.frames])


def differentiable(features: EdgeFeatures) -> List[torch.Tensor]:
    """The features that depend on the edge vectors, as one list: harmonics, basis, weight,
    frames[1:] (frames[0], the degree-0 rotation, is the constant 1)."""
    return [features.harmonics, features.basis, features.weight] + features.frames[1:]


def with_differentiable(features: EdgeFeatures, parts: List[torch.Tensor]) -> EdgeFeatures:
    """``features`` with the tensors of `differentiable` replaced by ``parts`` (same order)."""
    frames = features.frames[:1] + parts[3:] if len(features.frames) > 0 else parts[3:]
    return EdgeFeatures(parts[0], parts[1], parts[2], frames)


def as_list(features: EdgeFeatures) -> List[torch.Tensor]:
    """All features as one list (harmonics, basis, weight, frames...): how engines hold them."""
    return [features.harmonics, features.basis, features.weight] + features.frames


def from_list(parts: List[torch.Tensor]) -> EdgeFeatures:
    return EdgeFeatures(parts[0], parts[1], parts[2], parts[3:])


def all_features_gradient(features: EdgeFeatures, grads: List[torch.Tensor]) -> List[torch.Tensor]:
    """Gradients of `differentiable` features laid out as `as_list` (zero for the constant)."""
    constant = [torch.zeros_like(features.frames[0])] if len(features.frames) > 0 else []
    return grads[:3] + constant + grads[3:]
