"""The chunked memory schedule (schedule.py): the same energies and gradient as one autograd
pass, for every attention variant, any edge order and any chunk size."""

import pytest
import torch

from equiformer.model import build_model
from equiformer.schedule import ChunkedGradient, centre_chunks, edge_ranges

from model_variants import SPECIES, VARIANTS, energies_and_gradient, random_graph


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
    schedule = ChunkedGradient(model)
    scripted = torch.jit.script(ChunkedGradient(model, 23))
    for n_local in (len(species), 5):
        ref = energies_and_gradient(model, species, edge_index, vec, n_local)
        for chunk in (5, 23, 100000):
            schedule.edge_chunk = chunk
            # one scripted run (each further one re-optimises the graph: seconds)
            runs = [schedule, scripted] if chunk == 23 and n_local == 5 else [schedule]
            for m in runs:
                got = m(species, edge_index, vec, n_local)
                for a, b in zip(got, ref):
                    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


def test_centre_chunks():
    dst = torch.tensor([0, 0, 0, 2, 2, 3, 5, 5, 5, 5, 5, 5])
    nodes, edges = centre_chunks(dst, 7, 4)
    assert nodes == [0, 2, 5, 7] and edges == [0, 3, 6, 12]
    assert tuple(centre_chunks(dst, 7, 100)) == ([0, 7], [0, 12])
    assert tuple(centre_chunks(dst[:0], 3, 4)) == ([0, 3], [0, 0])
    with pytest.raises(ValueError, match="edge_chunk must be a positive"):
        centre_chunks(dst, 7, 0)


def test_bad_edge_chunk_is_a_clear_error_in_the_scripted_model():
    model = build_model({"preset": "tiny", "species": SPECIES}, dtype=torch.float64)
    scripted = torch.jit.script(ChunkedGradient(model))
    scripted.edge_chunk = 0
    species, edge_index, vec = random_graph(seed=2)
    with pytest.raises(Exception, match="edge_chunk must be a positive"):
        scripted(species, edge_index, vec, len(species))


def test_edge_ranges():
    assert edge_ranges(10, 4) == [0, 4, 8, 10]
    assert edge_ranges(8, 4) == [0, 4, 8]
    assert edge_ranges(0, 4) == [0]  # no range: nothing to do


@pytest.mark.parametrize("attention_head", [False, True])
def test_frozen_schedule_gives_the_same_numbers(attention_head):
    """openmm-torch applies torch.jit.freeze to the module it is given, which refuses a
    ModuleList indexed by a variable and calls through module-typed arguments, and deletes
    `detach`: the frozen schedule must script, freeze and agree with one pass."""
    torch.manual_seed(3)
    model = build_model({"preset": "tiny", "species": SPECIES, "attention_head": attention_head},
                        dtype=torch.float64).eval()
    species, edge_index, vec = random_graph(seed=4)
    frozen = torch.jit.freeze(torch.jit.script(ChunkedGradient(model, 7).eval()))
    got = frozen(species, edge_index, vec.clone().requires_grad_(True), 5)
    for a, b in zip(got, energies_and_gradient(model, species, edge_index, vec, 5)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))
