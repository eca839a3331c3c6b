"""Per-block equivariance of the network building blocks, checked against e3nn's Wigner D
matrices, plus the 3j-symbol convention and the segment softmax.

Features transform as ``x -> x @ D(R)^T`` (e3nn's convention) with ``D`` from
``o3.Irreps(...).D_from_matrix``. SE(3) irreps (every label 'e') are checked under proper
rotations only; E(3) irreps (odd labels where (-1)^l) are also checked under inversion (-I)
and an improper rotation.
"""

import pytest
import torch
from e3nn import o3

from equiformer.nn.activation import Gate
from equiformer.nn.attention import GraphAttention
from equiformer.nn.block import TransformerBlock
from equiformer.nn.features import EdgeFeatures
from equiformer.nn.edge_frame import EdgeFrame
from equiformer.nn.embedding import EdgeDegreeEmbedding
from equiformer.nn.irreps import blocks, gate_split, simplify, to_irreps
from equiformer.nn.linear import IrrepsLinear
from equiformer.nn.norm import EquivariantLayerNorm
from equiformer.nn.segment import gather_rows, segment_sum, weighted_softmax
from equiformer.nn.tensor_product import DepthwiseTensorProduct
from equiformer.nn.w3j import _FLIPPED_SINCE_0_5, wigner_3j

DT = torch.float64
TOL = 1e-10


# (name, node irreps, sh irreps, head irreps, mlp irreps, E(3)?)
VARIANTS = [
    ("se3", "8x0e+4x1e+2x2e", "1x0e+1x1e+1x2e", "4x0e+2x1e+1x2e", "16x0e+8x1e+4x2e", False),
    ("e3", "8x0e+4x1o+2x2e", "1x0e+1x1o+1x2e", "4x0e+2x1o+1x2e", "16x0e+8x1o+4x2e", True),
]
IDS = [v[0] for v in VARIANTS]


def _matrices(e3: bool):
    torch.manual_seed(1234)
    mats = [o3.rand_matrix(dtype=DT), o3.rand_matrix(dtype=DT)]
    if e3:
        mats.append(-torch.eye(3, dtype=DT))
        mats.append(-o3.rand_matrix(dtype=DT))  # improper rotation
    return mats


def _irreps(irreps) -> o3.Irreps:
    return o3.Irreps(irreps) if isinstance(irreps, str) else to_irreps(irreps)


def _D(irreps, R):
    # e3nn builds its so(3) generators in the default dtype: float32 generators make D only
    # float32-accurate (still orthogonal, but of a slightly different rotation)
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        return _irreps(irreps).D_from_matrix(R).to(DT)
    finally:
        torch.set_default_dtype(old)


def _rand(n, irreps):
    return torch.randn(n, _irreps(irreps).dim, dtype=DT)


def _close(a, b, tol=TOL):
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"max deviation {err:.3g} (scale {scale:.3g})"


def _traced_ops(fn, *args):
    """The ATen ops of ``fn`` traced as compiled export traces it (make_fx, core decompositions)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(fn, decomposition_table=core_aten_decompositions())(*args)
    return {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}


def _edges(n, dtype=DT, seed=0):
    """A small random graph: all pairs within a box, both directions, random positions."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g, dtype=dtype) * 3.0
    src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    mask = src != dst
    return pos, src[mask], dst[mask]


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_irreps_linear_equivariant(variant):
    _, node, _, _, mlp, e3 = variant
    torch.manual_seed(0)
    lin = IrrepsLinear(blocks(node), blocks(mlp)).to(DT)
    with torch.no_grad():
        lin.bias.normal_()
    x = _rand(5, node)
    for R in _matrices(e3):
        _close(lin(x @ _D(node, R).T), lin(x) @ _D(mlp, R).T)


def test_irreps_linear_mixed_parity_paths_are_separate():
    """1o inputs never feed 1e outputs (and vice versa): inversion equivariance with both."""
    irreps_in = blocks("4x0e+3x1o+2x1e")
    irreps_out = blocks("2x0e+2x1o+5x1e+1x2e")
    torch.manual_seed(0)
    lin = IrrepsLinear(irreps_in, irreps_out).to(DT)
    x = _rand(4, irreps_in)
    for R in _matrices(True):
        _close(lin(x @ _D(irreps_in, R).T), lin(x) @ _D(irreps_out, R).T)
    # the 2e output has no input: zero
    assert torch.all(lin(x)[:, -5:] == 0)


# ----------------------------------------------------------------------------- tensor product


@pytest.mark.parametrize("internal", [True, False], ids=["internal", "external"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_depthwise_tensor_product_equivariant(variant, internal):
    _, node, sh, _, _, e3 = variant
    torch.manual_seed(0)
    tp = DepthwiseTensorProduct(blocks(node), blocks(sh), blocks(node), internal_weights=internal).to(DT)
    e = 6
    x = _rand(e, node)
    y = _rand(e, sh)
    w = None if internal else torch.randn(e, tp.weight_numel, dtype=DT)
    out_irreps = tp.irreps_out  # sorted by l, even parity first
    assert [(l, -p) for _, l, p in out_irreps] == sorted((l, -p) for _, l, p in out_irreps)
    assert tp(x, y, w).shape == (e, to_irreps(out_irreps).dim)
    for R in _matrices(e3):
        got = tp(x @ _D(node, R).T, y @ _D(sh, R).T, w)
        _close(got, tp(x, y, w) @ _D(out_irreps, R).T)


def test_depthwise_tensor_product_with_true_harmonics():
    """Harmonics of rotated vectors (not just D applied to harmonics) give the same result."""
    torch.manual_seed(0)
    node, sh_irreps = "8x0e+4x1o+2x2e", "1x0e+1x1o+1x2e"
    tp = DepthwiseTensorProduct(blocks(node), blocks(sh_irreps), blocks(node), internal_weights=True).to(DT)
    sh = o3.SphericalHarmonics(o3.Irreps(sh_irreps), normalize=True, normalization="component")
    vec = torch.randn(7, 3, dtype=DT)
    x = _rand(7, node)
    for R in _matrices(True):
        got = tp(x @ _D(node, R).T, sh(vec @ R.T))
        _close(got, tp(x, sh(vec)) @ _D(tp.irreps_out, R).T)


# ----------------------------------------------------------------------------- gate, norm


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_gate_equivariant(variant):
    _, node, _, _, mlp, e3 = variant
    scalars, gates, gated = gate_split(blocks(mlp))
    gate = Gate(scalars, gates, gated)
    irreps_in = simplify(scalars + gates + gated)
    irreps_out = gate.irreps_out
    torch.manual_seed(0)
    x = _rand(5, irreps_in)
    for R in _matrices(e3):
        _close(gate(x @ _D(irreps_in, R).T), gate(x) @ _D(irreps_out, R).T)


def test_gate_odd_scalars_are_gated_not_activated():
    """A 0o input is a gated irrep (odd under inversion), not a SiLU scalar."""
    scalars, gates, gated = gate_split(blocks("3x0e+2x0o+1x1o"))
    assert scalars == [(3, 0, 1)] and gated == [(2, 0, -1), (1, 1, -1)] and gates == [(3, 0, 1)]
    gate = Gate(scalars, gates, gated)
    irreps_in = simplify(scalars + gates + gated)
    x = _rand(4, irreps_in)
    for R in _matrices(True):
        _close(gate(x @ _D(irreps_in, R).T), gate(x) @ _D(gate.irreps_out, R).T)


@pytest.mark.parametrize("irreps", ["16x0e+8x1e+4x2e", "3x0e+2x0o+1x1o", "2x0e+2x1e+1x0o+3x1e"])
def test_gate_matches_per_channel_gates_and_traces_without_index_ops(irreps):
    """gated channel c (all its 2l+1 components) times sigmoid(gate c), gate c scaled as
    e3nn's normalize2mom; in value, gradient, and with no index op in the traced gradient
    (an index_select's gradient is an atomic index_add in compiled code)."""
    scalars, gates, gated = gate_split(blocks(irreps))
    gate = Gate(scalars, gates, gated)
    n_s = sum(m for m, _, _ in scalars)
    n_g = sum(m for m, _, _ in gates)
    # gate of each gated component: channel g owns 2l+1 consecutive components
    index = [g for g, d in enumerate(2 * l + 1 for m, l, _ in gated for _ in range(m)) for _ in range(d)]
    torch.manual_seed(0)
    x = _rand(6, simplify(scalars + gates + gated)).requires_grad_(True)
    s_, g_, v_ = x.split([n_s, n_g, x.shape[1] - n_s - n_g], dim=1)
    want = torch.cat([torch.nn.functional.silu(s_) * 1.6791767923989418,
                      v_ * (torch.sigmoid(g_) * 1.8467055342154763)[:, index]], dim=1)
    got = gate(x)
    _close(got, want, 1e-14)
    grad_out = torch.randn_like(want)
    _close(torch.autograd.grad(got, x, grad_out)[0], torch.autograd.grad(want, x, grad_out)[0], 1e-14)

    def value_and_gradient(x):
        with torch.enable_grad():
            x = x.requires_grad_(True)
            return torch.autograd.grad(gate(x).pow(2).sum(), x)

    targets = _traced_ops(value_and_gradient, x.detach())
    assert not {t for t in targets if "index" in t}, targets


def test_edge_degree_embedding_matches_the_generic_product():
    """The embedding's plan (only the paths from the constant 0e input, order-major per edge)
    equals its definition with the generic depthwise product, in value and gradient."""
    node, sh_irreps = blocks("8x0e+4x1e+2x2e"), blocks("1x0e+1x1e+1x2e")
    torch.manual_seed(0)
    emb = EdgeDegreeEmbedding(node, sh_irreps, [6, 8], avg_degree=3.0).to(DT)
    for p in emb.parameters():  # non-zero biases so that every term is checked
        torch.nn.init.normal_(p)
    pos, src, dst = _edges(5)
    pos.requires_grad_(True)
    sh = o3.SphericalHarmonics(_irreps(sh_irreps), normalize=True, normalization="component")
    vec = pos[src] - pos[dst]
    basis = torch.sin(vec.norm(dim=1, keepdim=True) * torch.arange(1, 7, dtype=DT))
    weight = torch.sigmoid(vec.norm(dim=1))
    got = emb(5, dst, sh(vec), basis, weight)
    x = emb.exp(torch.ones(len(src), 1, dtype=DT))
    edge = emb.proj(emb.dw(x, sh(vec), emb.rad(basis))) * weight.unsqueeze(1)
    want = torch.zeros(5, edge.shape[1], dtype=DT).index_add(0, dst, edge) / 3.0 ** 0.5
    _close(got, want, 1e-13)
    grad_out = torch.randn_like(want)
    _close(torch.autograd.grad(got, pos, grad_out, retain_graph=True)[0], torch.autograd.grad(want, pos, grad_out)[0], 1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_equivariant_layer_norm(variant):
    _, node, _, _, _, e3 = variant
    torch.manual_seed(0)
    norm = EquivariantLayerNorm(blocks(node)).to(DT)
    with torch.no_grad():
        norm.affine_weight.uniform_(0.5, 1.5)
        norm.affine_bias.normal_()
    x = _rand(5, node) * 3.0
    for R in _matrices(e3):
        _close(norm(x @ _D(node, R).T), norm(x) @ _D(node, R).T)
    # with unit affine parameters each irrep block has unit mean square (0e blocks centred)
    plain = EquivariantLayerNorm(blocks(node), eps=0.0).to(DT)
    y = plain(x)
    start = 0
    for mul, l, p in blocks(node):
        field = y[:, start: start + mul * (2 * l + 1)]
        start += mul * (2 * l + 1)
        _close(field.pow(2).mean(dim=1), torch.ones(5, dtype=DT), 1e-9)
        if l == 0 and p == 1:
            _close(field.mean(dim=1), torch.zeros(5, dtype=DT), 1e-9)


# ----------------------------------------------------------------------------- attention, block


def _graph_inputs(sh_irreps, num_basis=8, n=6, seed=0):
    pos, src, dst = _edges(n, seed=seed)
    vec = pos[src] - pos[dst]
    sh = o3.SphericalHarmonics(o3.Irreps(sh_irreps), normalize=True, normalization="component")
    g = torch.Generator().manual_seed(seed + 1)
    basis = torch.rand(vec.shape[0], num_basis, generator=g, dtype=DT)
    weight = torch.rand(vec.shape[0], generator=g, dtype=DT)
    weight[::5] = 0.0  # some edges outside the cutoff
    return vec, src, dst, sh, basis, weight


def _frames(node, vec):
    return EdgeFrame(max(l for _, l, _ in blocks(node)))(vec)


def _attention_case(variant, nonlinear=True, rescale=False):
    """A graph attention of the variant's irreps (seeded), node features of 6 atoms, and
    the graph inputs (vec, src, dst, sh, basis, weight)."""
    _, node, sh_irreps, head, _, _ = variant
    torch.manual_seed(0)
    ga = GraphAttention(blocks(node), blocks(sh_irreps), blocks(node), blocks(head), 2, [8, 8, 8],
                        nonlinear, rescale).to(DT)
    inputs = _graph_inputs(sh_irreps)
    return ga, _rand(6, node), inputs


@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "rescale_degree"])
@pytest.mark.parametrize("nonlinear", [True, False], ids=["nonlinear", "linear"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_graph_attention_equivariant(variant, nonlinear, rescale):
    _, node, sh_irreps, head, _, e3 = variant
    ga, x, (vec, src, dst, sh, basis, weight) = _attention_case(variant, nonlinear, rescale)
    ref = ga(x, src, dst, sh(vec), basis, weight, [])
    assert ref.shape == x.shape
    # the edge-frame path is the same function
    _close(ga(x, src, dst, sh(vec), basis, weight, _frames(node, vec)), ref)
    for R in _matrices(e3):
        D = _D(node, R)
        sh_rot = sh(vec) @ _D(sh_irreps, R).T
        _close(ga(x @ D.T, src, dst, sh_rot, basis, weight, []), ref @ D.T)
        if torch.det(R) > 0:
            _close(ga(x @ D.T, src, dst, sh(vec @ R.T), basis, weight, []), ref @ D.T)
            _close(ga(x @ D.T, src, dst, sh(vec @ R.T), basis, weight, _frames(node, vec @ R.T)), ref @ D.T)


def test_graph_attention_permutation_equivariant():
    ga, x, (vec, src, dst, sh, basis, weight) = _attention_case(VARIANTS[1])
    ref = ga(x, src, dst, sh(vec), basis, weight, [])
    perm = torch.randperm(6)
    inv = torch.argsort(perm)  # new index of old atom i is inv[i]
    eperm = torch.randperm(vec.shape[0])
    got = ga(x[perm], inv[src][eperm], inv[dst][eperm], sh(vec)[eperm], basis[eperm], weight[eperm], [])
    _close(got, ref[perm])


def test_graph_attention_zero_weight_edges_are_ignored():
    """An edge with cutoff weight 0 has no effect, whatever its features."""
    ga, x, (vec, src, dst, sh, basis, weight) = _attention_case(VARIANTS[0])
    keep = weight > 0
    full = ga(x, src, dst, sh(vec), basis, weight, [])
    pruned = ga(x, src[keep], dst[keep], sh(vec[keep]), basis[keep], weight[keep], [])
    _close(full, pruned)


@pytest.mark.parametrize("last", [False, True], ids=["node_out", "feature_out"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_transformer_block_equivariant(variant, last):
    _, node, sh_irreps, head, mlp, e3 = variant
    out = "8x0e" if last else node
    torch.manual_seed(0)
    blk = TransformerBlock(blocks(node), blocks(sh_irreps), blocks(out), blocks(head), 2, blocks(mlp), [8, 8, 8],
                           True, False).to(DT)
    assert blk.has_shortcut == last
    vec, src, dst, sh, basis, weight = _graph_inputs(sh_irreps)
    x = _rand(6, node)
    ref = blk(x, src, dst, EdgeFeatures(sh(vec), basis, weight, []))
    for R in _matrices(e3):
        got = blk(x @ _D(node, R).T, src, dst, EdgeFeatures(sh(vec) @ _D(sh_irreps, R).T, basis, weight, []))
        _close(got, ref @ _D(out, R).T)
        if torch.det(R) > 0:
            got = blk(x @ _D(node, R).T, src, dst, EdgeFeatures(sh(vec @ R.T), basis, weight, _frames(node, vec @ R.T)))
            _close(got, ref @ _D(out, R).T)


# ----------------------------------------------------------------------------- 3j symbols


def _triples(lmax):
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                yield l1, l2, l3


@pytest.mark.parametrize("l1,l2,l3", list(_triples(4)))
def test_wigner_3j_matches_e3nn_up_to_documented_flips(l1, l2, l3):
    ours = wigner_3j(l1, l2, l3)
    theirs = o3.wigner_3j(l1, l2, l3, dtype=DT)
    sign = -1.0 if (l1, l2, l3) in _FLIPPED_SINCE_0_5 else 1.0
    assert ours.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    assert ours.dtype == DT
    _close(ours, sign * theirs, 1e-12)


def test_wigner_3j_flipped_high_l_and_refusal():
    for triple in [(3, 4, 6), (4, 3, 6), (4, 4, 5)]:
        _close(wigner_3j(*triple), -o3.wigner_3j(*triple, dtype=DT), 1e-12)
    with pytest.raises(NotImplementedError, match="only l <= 4"):
        wigner_3j(2, 3, 5)
    # l = 0 paths never need the table
    assert wigner_3j(0, 5, 5).shape == (1, 11, 11)
    assert wigner_3j(2, 2, 1, dtype=torch.float32).dtype == torch.float32


def test_wigner_3j_flipped_symbols_are_still_invariant():
    """The flipped symbols are still 3j symbols: invariant under D1 x D2 x D3."""
    R = o3.rand_matrix(dtype=DT)
    for l1, l2, l3 in sorted(_FLIPPED_SINCE_0_5):
        c = wigner_3j(l1, l2, l3)
        D1, D2, D3 = (_D(f"1x{l}e", R) for l in (l1, l2, l3))
        _close(torch.einsum("ijk,ai,bj,ck->abc", c, D1, D2, D3), c, 1e-10)


# ----------------------------------------------------------------------------- segment sums and softmax


@pytest.mark.parametrize("shape", [(), (4,), (3, 5)])
@pytest.mark.parametrize("edges", [0, 1, 9])
def test_segment_sum_and_gather_rows_match_indexing(shape, edges):
    torch.manual_seed(edges)
    index = torch.randint(0, 4, (edges,))
    x = torch.randn((edges,) + shape, dtype=DT, requires_grad=True)
    nodes = torch.randn((4,) + shape, dtype=DT, requires_grad=True)
    grad_out = torch.randn((4,) + shape, dtype=DT)
    grad_rows = torch.randn((edges,) + shape, dtype=DT)
    got = (segment_sum(x, index, 4), gather_rows(nodes, index))
    want = (torch.zeros((4,) + shape, dtype=DT).index_add(0, index, x), nodes[index])
    for g, w, leaf, go in zip(got, want, (x, nodes), (grad_out, grad_rows)):
        torch.testing.assert_close(g, w, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(torch.autograd.grad(g, leaf, go)[0], torch.autograd.grad(w, leaf, go)[0],
                                   rtol=1e-14, atol=1e-14)


def test_segment_sum_and_gather_rows_trace_without_accumulating_index_put():
    """Their gradients must be scatter_adds over a broadcast index (which compiled code hands
    to ATen): an accumulating index_put or index_add becomes atomic adds in AOTInductor code."""

    def energy_gradient(x, nodes, index):
        with torch.enable_grad():
            x, nodes = x.requires_grad_(True), nodes.requires_grad_(True)
            y = segment_sum(x * gather_rows(nodes, index), index, nodes.shape[0])
            return torch.autograd.grad(y.pow(2).sum(), [x, nodes])

    targets = _traced_ops(energy_gradient, torch.randn(6, 3, dtype=DT), torch.randn(4, 3, dtype=DT),
                          torch.tensor([0, 1, 1, 2, 3, 3]))
    assert not {t for t in targets if "index_put" in t or "index_add" in t}, targets
    assert "aten.scatter_add.default" in targets and "aten.gather.default" in targets


def test_weighted_softmax_sums_to_one_and_matches_softmax():
    torch.manual_seed(0)
    num_segments, heads = 5, 3
    index = torch.tensor([0, 0, 1, 1, 1, 3, 4, 4, 4, 4, 0], dtype=torch.long)  # centre 2 has no edges
    logits = torch.randn(index.shape[0], heads, dtype=DT) * 10.0
    ones = torch.ones(index.shape[0], dtype=DT)
    alpha = weighted_softmax(logits, ones, index, num_segments)
    sums = torch.zeros(num_segments, heads, dtype=DT).index_add(0, index, alpha)
    present = torch.tensor([True, True, False, True, True])
    _close(sums[present], torch.ones(int(present.sum()), heads, dtype=DT), 1e-12)
    assert torch.all(sums[~present] == 0)
    for s in range(num_segments):
        sel = index == s
        if sel.any():
            _close(alpha[sel], torch.softmax(logits[sel], dim=0), 1e-12)


def test_weighted_softmax_weights():
    torch.manual_seed(0)
    index = torch.tensor([0, 0, 0, 1, 1], dtype=torch.long)
    logits = torch.randn(5, 2, dtype=DT)
    w = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0], dtype=DT)
    alpha = weighted_softmax(logits, w, index, 2)
    e = w.unsqueeze(1) * torch.exp(logits)
    _close(alpha[:3], e[:3] / e[:3].sum(0), 1e-12)
    # zero-weight edges get exactly zero, a centre with only such edges gets no NaN
    assert torch.all(alpha[[1, 3, 4]] == 0)
    assert torch.isfinite(alpha).all()
    # huge logits on a zero-weight edge do not overflow or change the others
    logits2 = logits.clone()
    logits2[1] = 1e4
    _close(weighted_softmax(logits2, w, index, 2), alpha, 1e-12)
    # gradients are finite
    lg = logits.clone().requires_grad_(True)
    weighted_softmax(lg, w, index, 2).sum().backward()
    assert torch.isfinite(lg.grad).all()
