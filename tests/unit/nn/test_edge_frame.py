"""The fast paths compute the same function as the reference ones (float64, random inputs):
edge-frame (SO(2)) products against the SO(3) products for every supported L_max, parity and
attention variant; the edge-degree embedding's scalar-path form against the full product; the
chunked, layer-by-layer recomputed gradient against one autograd pass."""

import pytest
import torch
from e3nn import o3

from equiformer.model import build_model
from equiformer.nn.edge_frame import EdgeFrame
from equiformer.nn.segment import centre_chunks

SPECIES = ["H", "C", "O"]


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


VARIANTS = {
    "se3-l2": {},
    "e3-l2": {"irreps_node": "8x0e+2x0o+2x1e+4x1o+2x2e+1x2o", "irreps_sh": "1x0e+1x1o+1x2e",
              "irreps_head": "4x0e+1x0o+1x1e+2x1o+1x2e", "irreps_mlp": "16x0e+8x1o+4x2e"},
    "se3-l1": {"irreps_node": "8x0e+4x1e", "irreps_sh": "1x0e+1x1e", "irreps_head": "4x0e+2x1e",
               "irreps_mlp": "16x0e+8x1e"},
    "se3-l3": {"irreps_node": "8x0e+4x1e+2x2e+2x3e", "irreps_sh": "1x0e+1x1e+1x2e+1x3e",
               "irreps_head": "4x0e+2x1e+1x2e+1x3e", "irreps_mlp": "16x0e+8x1e+4x2e+2x3e"},
    "e3-l3": {"irreps_node": "8x0e+4x1o+2x2e+2x3o", "irreps_sh": "1x0e+1x1o+1x2e+1x3o",
              "irreps_head": "4x0e+2x1o+1x2e+1x3o", "irreps_mlp": "16x0e+8x1o+4x2e+2x3o"},
    "linear-message": {"nonlinear_message": False},
    "dot-product": {"attention": "dot_product"},
    "attention-head": {"attention_head": True, "irreps_feature": "8x0e+2x1e"},
    "attention-head-scalars": {"attention_head": True},  # a head whose gate has nothing to gate
    "official-cutoff-rescale": {"attention_cutoff": "mask", "layer_norm": "per_block", "rescale_degree": True},
}


def random_graph(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand((n, 3), generator=g, dtype=torch.float64) * 4.0
    pos[1] = pos[0] + torch.tensor([0.0, 1.3, 0.0], dtype=torch.float64)  # an edge on the frame's pole
    src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (src != dst) & ((pos[src] - pos[dst]).norm(dim=-1) < 5.0)
    edge_index = torch.stack([src[keep], dst[keep]])
    species = torch.randint(0, len(SPECIES), (n,), generator=g)
    return species, edge_index, pos[edge_index[0]] - pos[edge_index[1]]


def energies_and_gradient(model, species, edge_index, vec, n_local):
    vec = vec.clone().requires_grad_(True)
    e = model.atom_energies(species, edge_index, vec)
    (grad,) = torch.autograd.grad(e[:n_local].sum(), vec)
    return e.detach(), grad


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
    sh, basis, weight, _ = model.edge_features(vec)
    n = len(species)
    got = emb(n, edge_index[1], sh, basis, weight)
    # reference: the generic depthwise product of the constant node input, then the projection
    constant = emb.exp(sh.new_ones((1, 1))).expand(sh.shape[0], -1)
    edge = emb.proj(emb.dw(constant, sh, emb.rad(basis))) * weight.unsqueeze(1)
    ref = torch.zeros(n, edge.shape[1], dtype=torch.float64).index_add(0, edge_index[1], edge) * emb.inv_sqrt_degree
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant,frames", [(v, True) for v in sorted(VARIANTS)]
                         + [("se3-l2", False), ("dot-product", False)])
def test_chunked_gradient_equals_one_pass(variant, frames):
    """The memory-light gradient (edges sorted, chunks of whole centres, layers recomputed)
    equals one autograd pass, with chunks smaller than one centre's edges, for any edge order."""
    torch.manual_seed(5)
    model = build_model({"preset": "tiny", "species": SPECIES, **VARIANTS[variant]}, dtype=torch.float64).eval()
    model.use_edge_frames(frames)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    species, edge_index, vec = random_graph(seed=2)
    shuffle = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    edge_index, vec = edge_index[:, shuffle], vec[shuffle]
    scripted = torch.jit.script(model)
    scripted.edge_chunk = 23
    for n_local in (len(species), 5):
        ref = energies_and_gradient(model, species, edge_index, vec, n_local)
        for chunk in (5, 23, 100000):
            model.edge_chunk = chunk
            # one scripted run (each further one re-optimises the graph: seconds)
            runs = [model, scripted] if chunk == 23 and n_local == 5 else [model]
            for m in runs:
                got = m.energies_and_gradient(species, edge_index, vec, n_local)
                for a, b in zip(got, ref):
                    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


def test_centre_chunks():
    dst = torch.tensor([0, 0, 0, 2, 2, 3, 5, 5, 5, 5, 5, 5])
    nodes, edges = centre_chunks(dst, 7, 4)
    assert nodes == [0, 2, 5, 7] and edges == [0, 3, 6, 12]
    assert centre_chunks(dst, 7, 100) == ([0, 7], [0, 12])
    assert centre_chunks(dst[:0], 3, 4) == ([0, 3], [0, 0])
    with pytest.raises(ValueError, match="edge_chunk must be a positive"):
        centre_chunks(dst, 7, 0)


def test_bad_edge_chunk_is_a_clear_error_in_the_scripted_model():
    model = build_model({"preset": "tiny", "species": SPECIES}, dtype=torch.float64)
    scripted = torch.jit.script(model)
    scripted.edge_chunk = 0
    species, edge_index, vec = random_graph(seed=2)
    with pytest.raises(Exception, match="edge_chunk must be a positive"):
        scripted.energies_and_gradient(species, edge_index, vec, len(species))
