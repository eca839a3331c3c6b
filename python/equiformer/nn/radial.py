"""Radial bases of the edge length and the radial network that turns them into
per-edge tensor-product weights."""

import math
from typing import List

import torch


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi r / rc) + 1) inside the cutoff, 0 outside; C1 at the cutoff."""
    return torch.where(r < cutoff, 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0), torch.zeros_like(r))


class ExpNormalBasis(torch.nn.Module):
    """exp-normal smearing (TorchMD-Net; the MD17 models): f_cut(r) exp(-beta_k (exp(-a r) - mu_k)^2)."""

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.alpha = 5.0 / cutoff
        start = math.exp(-cutoff)
        self.register_buffer("means", torch.linspace(start, 1.0, num_basis))
        self.register_buffer("betas", torch.full((num_basis,), (2.0 / num_basis * (1.0 - start)) ** -2))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return cosine_cutoff(r, self.cutoff) * torch.exp(-self.betas * (torch.exp(-self.alpha * r) - self.means) ** 2)


class GaussianBasis(torch.nn.Module):
    """Trainable Gaussians of r / cutoff (Graphormer style; the official default basis)."""

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.mean = torch.nn.Parameter(torch.empty(1, num_basis).uniform_(0.0, 1.0))
        self.std = torch.nn.Parameter(torch.empty(1, num_basis).uniform_(1.0 / num_basis, 1.0))
        self.weight = torch.nn.Parameter(torch.ones(1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(1, 1))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.cutoff).unsqueeze(-1) * self.weight + self.bias
        std = self.std.abs() + 1e-5
        # the official code (after Graphormer) uses pi = 3.14159 here
        return torch.exp(-0.5 * ((x - self.mean) / std) ** 2) / (math.sqrt(2.0 * 3.14159) * std)


class BesselBasis(torch.nn.Module):
    """sqrt(2/rc^3) sin(f_n r/rc) / (r/rc) with trainable frequencies (init n pi), times the
    polynomial envelope 1 - 21 u^5 + 35 u^6 - 15 u^7 (u = r/rc; exponent 5), as ocpmodels'
    spherical-Bessel radial basis used by the official *_bessel_* models."""

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.norm = math.sqrt(2.0 / cutoff ** 3)
        self.frequencies = torch.nn.Parameter(math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        u = (r * (1.0 / self.cutoff)).unsqueeze(-1)
        envelope = 1.0 - 21.0 * u ** 5 + 35.0 * u ** 6 - 15.0 * u ** 7
        envelope = torch.where(u < 1.0, envelope, torch.zeros_like(u))
        return envelope * self.norm * torch.sin(self.frequencies * u) / u


class RadialProfile(torch.nn.Module):
    """Linear -> LayerNorm -> SiLU (repeated) -> Linear without bias, plus a learned offset."""

    def __init__(self, channels: List[int]):
        super().__init__()
        layers: List[torch.nn.Module] = []
        for i in range(1, len(channels)):
            last = i == len(channels) - 1
            layers.append(torch.nn.Linear(channels[i - 1], channels[i], bias=not last))
            if not last:
                layers.append(torch.nn.LayerNorm(channels[i]))
                layers.append(torch.nn.SiLU())
        self.net = torch.nn.Sequential(*layers)
        bound = 1.0 / math.sqrt(channels[-2])
        self.offset = torch.nn.Parameter(torch.empty(channels[-1]).uniform_(-bound, bound))

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        return self.net(basis) + self.offset
