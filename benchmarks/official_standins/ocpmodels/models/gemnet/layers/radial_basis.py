"""Re-implementation (not a copy) of ocpmodels 0.0.3 (fairchem commit d2aaaeb) RadialBasis.

Only the pieces Equiformer reaches: RadialBasis(num_radial, cutoff, rbf={'name': 'spherical_bessel'})
with the default envelope {'name': 'polynomial', 'exponent': 5}.
Module/parameter names mirror ocpmodels so state_dict keys match: `rbf.frequencies`
(the envelope has no parameters).
"""
import math
import numpy as np
import torch


class PolynomialEnvelope(torch.nn.Module):
    # u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2) for d < 1, else 0
    def __init__(self, exponent):
        super().__init__()
        assert exponent > 0
        self.p = exponent
        self.a = -(self.p + 1) * (self.p + 2) / 2
        self.b = self.p * (self.p + 2)
        self.c = -self.p * (self.p + 1) / 2

    def forward(self, d_scaled):
        val = 1 + self.a * d_scaled ** self.p + self.b * d_scaled ** (self.p + 1) \
            + self.c * d_scaled ** (self.p + 2)
        return torch.where(d_scaled < 1, val, torch.zeros_like(d_scaled))


class ExponentialEnvelope(torch.nn.Module):
    def forward(self, d_scaled):
        val = torch.exp(-(d_scaled ** 2) / ((1 - d_scaled) * (1 + d_scaled)))
        return torch.where(d_scaled < 1, val, torch.zeros_like(d_scaled))


class SphericalBesselBasis(torch.nn.Module):
    # sqrt(2/c^3) * sin(f_n * d_scaled) / d_scaled, f_n initialised to n*pi (trainable)
    def __init__(self, num_radial, cutoff):
        super().__init__()
        self.norm_const = math.sqrt(2 / (cutoff ** 3))
        # ocpmodels computes pi * n in float32 arithmetic (numpy float32 array times python float)
        freqs = np.pi * np.arange(1, num_radial + 1, dtype=np.float32)
        self.frequencies = torch.nn.Parameter(torch.tensor(freqs), requires_grad=True)

    def forward(self, d_scaled):
        return self.norm_const / d_scaled[:, None] * torch.sin(self.frequencies * d_scaled[:, None])


class RadialBasis(torch.nn.Module):
    def __init__(self, num_radial, cutoff, rbf={'name': 'gaussian'},
                 envelope={'name': 'polynomial', 'exponent': 5}):
        super().__init__()
        self.inv_cutoff = 1 / cutoff
        env = dict(envelope); env_name = env.pop('name').lower()
        if env_name == 'polynomial':
            self.envelope = PolynomialEnvelope(**env)
        elif env_name == 'exponential':
            self.envelope = ExponentialEnvelope(**env)
        else:
            raise ValueError(env_name)
        r = dict(rbf); rbf_name = r.pop('name').lower()
        if rbf_name == 'spherical_bessel':
            self.rbf = SphericalBesselBasis(num_radial=num_radial, cutoff=cutoff, **r)
        elif rbf_name == 'gaussian':
            from torch_geometric.nn.models.schnet import GaussianSmearing
            self.rbf = GaussianSmearing(start=0, stop=1, num_gaussians=num_radial, **r)
        else:
            raise NotImplementedError(rbf_name)

    def forward(self, d):
        d_scaled = d * self.inv_cutoff
        env = self.envelope(d_scaled)
        return env[:, None] * self.rbf(d_scaled)
