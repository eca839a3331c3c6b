"""Edge-aligned frames: the exact SO(2) form of the depthwise tensor products.

Every edge gets a rotation R_e that takes its direction onto +y, e3nn's polar axis. There the
unit-vector harmonics of degree l have one non-zero component (m = 0, value sqrt(2l+1)), so a
depthwise product with them couples order m only to +-m: per path and output row, one input
row times one constant. Attention rotates each edge's message into its frame once (Wigner D
matrices of R_e), runs products, linear layers and gates there (all commute with rotations)
and rotates the values back: the same function as the SO(3) products, with elementwise work in
place of per-edge Clebsch-Gordan contractions. Features inside a frame are kept per irrep type
as ``[E, 2l+1, mul]`` (order-major), so linear layers are plain matrix products.
"""

from typing import List, Tuple

import torch
from e3nn import o3


def _sample_points(count: int) -> torch.Tensor:
    """A fixed, well-spread set of unit vectors (Fibonacci sphere)."""
    k = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / count
    phi = k * torch.pi * (3.0 - 5.0 ** 0.5)
    rho = torch.sqrt(1.0 - z * z)
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], dim=1)


class EdgeFrame(torch.nn.Module):
    """Wigner D matrices ``D^l(R_e)`` (l = 0..lmax, each ``[E, 2l+1, 2l+1]``) of the rotation
    taking each edge vector onto +y, in the basis of e3nn's real spherical harmonics.

    ``D^l`` comes from the harmonics themselves: ``Y_l(R p) = D^l(R) Y_l(p)`` for a fixed set of
    points p, solved by least squares (the pseudo-inverse is a constant). R_e is the smallest
    rotation taking the direction to +y or to -y, whichever is nearer, followed in the second
    case by a half turn about x: it is smooth in the edge vector on each side, and the
    frame's jump across the equator changes no output (every product is rotation-equivariant).
    """

    def __init__(self, lmax: int):
        super().__init__()
        self.lmax = lmax
        irreps = o3.Irreps([(1, (l, 1)) for l in range(lmax + 1)])
        self.sh = o3.SphericalHarmonics(irreps, normalize=False, normalization="component")
        points = _sample_points(4 * lmax + 4)
        y = o3.spherical_harmonics(irreps, points, normalize=False, normalization="component")
        pinv: List[torch.Tensor] = []
        start = 0
        for l in range(lmax + 1):
            d = 2 * l + 1
            pinv.append(torch.linalg.pinv(y[:, start: start + d]).T)  # [K, d]
            start += d
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("pinv_t", torch.cat(pinv, dim=1), persistent=False)

    def _apply(self, fn, recurse=True):
        # constants stay float64 whatever the model dtype; cast at use
        keep = (self.points, self.pinv_t)
        super()._apply(fn, recurse)
        self.points = keep[0].to(device=self.points.device, dtype=torch.float64)
        self.pinv_t = keep[1].to(device=self.pinv_t.device, dtype=torch.float64)
        return self

    def rotations(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """R_e [E, 3, 3] with R_e u_e = +y for the unit direction u_e."""
        u = edge_vectors / torch.linalg.vector_norm(edge_vectors, dim=1, keepdim=True)
        s = torch.where(u[:, 1] >= 0, torch.ones_like(u[:, 1]), -torch.ones_like(u[:, 1]))
        # Rodrigues' rotation taking u to t = s*y: I + [k]x + [k]x^2 / (1 + c), k = u x t, c = u.t >= 0
        c = u[:, 1] * s
        kx = -u[:, 2] * s
        kz = u[:, 0] * s
        zero = torch.zeros_like(c)
        k_cross = torch.stack([zero, -kz, zero, kz, zero, -kx, zero, kx, zero], dim=1).view(-1, 3, 3)
        eye = torch.eye(3, dtype=u.dtype, device=u.device).expand(u.shape[0], 3, 3)
        r = eye + k_cross + (k_cross @ k_cross) / (1.0 + c).view(-1, 1, 1)
        # -y to +y: a half turn about x, diag(1, -1, -1)
        flip = torch.stack([torch.ones_like(s), s, s], dim=1).unsqueeze(2)
        return r * flip

    def forward(self, edge_vectors: torch.Tensor) -> List[torch.Tensor]:
        r = self.rotations(edge_vectors)
        pts = self.points.to(edge_vectors.dtype)
        rotated = torch.einsum("eij,kj->eki", r, pts)  # [E, K, 3]
        y = self.sh(rotated)  # [E, K, sum(2l+1)]
        pinv_t = self.pinv_t.to(edge_vectors.dtype)
        out: List[torch.Tensor] = [torch.ones_like(edge_vectors[:, :1]).unsqueeze(2)]
        start = 1
        for l in range(1, self.lmax + 1):
            d = 2 * l + 1
            # Y(R P) = Y(P) D^T  =>  D = Y(R P)^T pinv(Y(P))^T
            out.append(y[:, :, start: start + d].transpose(1, 2) @ pinv_t[:, start: start + d])
            start += d
        return out


def to_frame(x: torch.Tensor, irreps: List[Tuple[int, int, int]], frames: List[torch.Tensor]) -> List[torch.Tensor]:
    """Flat global-frame features [E, dim] to per-block edge-frame tensors [E, 2l+1, mul]."""
    e = x.shape[0]
    out: List[torch.Tensor] = []
    blocks = x.split([mul * (2 * l + 1) for mul, l, _ in irreps], dim=1)
    for block, (mul, l, _) in zip(blocks, irreps):
        if l == 0:
            out.append(block.unsqueeze(1))
        else:
            out.append(torch.bmm(frames[l], block.reshape(e, mul, 2 * l + 1).transpose(1, 2)))
    return out


def from_frame(xs: List[torch.Tensor], irreps: List[Tuple[int, int, int]], frames: List[torch.Tensor]) -> torch.Tensor:
    """Per-type edge-frame tensors [E, 2l+1, mul] back to flat global-frame features [E, dim]."""
    e = xs[0].shape[0]
    parts: List[torch.Tensor] = []
    for x, (mul, l, _) in zip(xs, irreps):
        if l == 0:
            parts.append(x.reshape(e, mul))
        else:
            parts.append(torch.bmm(frames[l].transpose(1, 2), x).transpose(1, 2).reshape(e, mul * (2 * l + 1)))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
