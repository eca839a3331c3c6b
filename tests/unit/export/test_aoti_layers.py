"""A compiled package's layer entries and the chunked schedule that drives them
(export/aoti_layers.py, export/aoti_schedule.py), checked without compiling: the driver runs
on the entries' eager functions, and must give the eager model's energies and edge gradient.
The compiled entries are checked against these at export, and end to end in test_aoti.py and
the LAMMPS tests."""

import json
import os

import numpy as np
import pytest
import torch

from equiformer.export.aoti import EnergyGradient, pad_graph, traceable_copy
from equiformer.export.aoti_layers import (block_kinds, layer_entries, layer_weights, read_layer_weights, state_of,
                                           state_names)
from equiformer.export.aoti_schedule import CompiledChunked
from equiformer.export.torchscript import _open_graph
from equiformer.model import build_model
from model_variants import SPECIES, VARIANTS


def tiny(frames=True, **extra):
    torch.manual_seed(0)
    hp = {"preset": "tiny", "species": SPECIES, "cutoff": 4.0}
    model = traceable_copy(build_model(dict(hp, **extra), dtype=torch.float64), torch.float64, "cpu")
    model.use_edge_frames(frames)
    with torch.no_grad():  # away from the initialisation's zeros and ones
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def eager_driver(model, edge_chunk):
    """The schedule over the entries' uncompiled functions (what gets compiled)."""
    species, index, vectors = _open_graph(model, np.random.default_rng(3).uniform(0, 3.5, (9, 3)), torch.float64,
                                          "cpu")
    runners = {e.name: e.fn for e in layer_entries(model, species, index, vectors)}
    pad = pad_graph(species[:0], index[:, :0], vectors[:0], model.cutoff)[2]
    weights = [state_of(blk) for blk in model.blocks]
    return CompiledChunked(runners, weights, block_kinds(model), model.head.attention, edge_chunk, pad)


def periodic_graph(model, n, side, seed):
    """(species, edge_index, edge vectors) of n atoms in a slightly sheared cell of about
    ``side`` (images included, so a cell smaller than the cutoff gives an atom edges to
    itself; sheared so that no edge lies on an axis, where an edge's frame is degenerate)."""
    rng = np.random.default_rng(seed)
    cell = side * np.array([[1.0, 0.0, 0.0], [0.13, 0.97, 0.0], [0.07, 0.11, 1.02]])
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    shifts = np.array([[i, j, k] for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)]) @ cell
    src, dst, vec = [], [], []
    for i in range(n):
        for j in range(n):
            d = pos[j] + shifts - pos[i]
            r = np.linalg.norm(d, axis=1)
            for v in d[(r > 1e-9) & (r < model.cutoff)]:
                src.append(j)
                dst.append(i)
                vec.append(v)
    species = torch.arange(n) % len(model.species_symbols)
    return species, torch.tensor([src, dst], dtype=torch.int64).reshape(2, -1), torch.tensor(
        np.asarray(vec).reshape(-1, 3))


def cases(model):
    rng = np.random.default_rng(1)
    yield "cluster", *_open_graph(model, rng.uniform(0, 6, (30, 3)), torch.float64, "cpu"), 30
    species, index, vectors = _open_graph(model, rng.uniform(0, 6, (30, 3)), torch.float64, "cpu")
    perm = torch.from_numpy(rng.permutation(index.shape[1]))
    yield "ghosts, edges shuffled", species, index[:, perm], vectors[perm], 11
    yield "one atom, own images", *periodic_graph(model, 1, 2.6, 0), 1
    yield "small cell", *periodic_graph(model, 4, 3.6, 2), 4
    yield "no edge", *_open_graph(model, np.array([[0.0, 0, 0], [9, 0, 0]]), torch.float64, "cpu"), 2


@pytest.mark.parametrize("variant,frames", [(v, True) for v in sorted(VARIANTS)]
                         + [("se3-l2", False), ("attention-head", False)])
def test_chunked_entries_give_the_eager_gradient(variant, frames):
    """Several chunks (7 edges each): energies and edge gradient equal the one-pass eager
    model's (float64, 1e-12) for every architecture variant (an MLP head and heads that
    attend over the edges; edge frames and the reference tensor products, which have no frames)."""
    model = tiny(frames, **VARIANTS[variant])
    driver = eager_driver(model, edge_chunk=7)
    reference = EnergyGradient(model)
    for name, species, index, vectors, n_local in cases(model):
        want_e, want_g = reference(species, index, vectors, torch.tensor(n_local))
        got_e, got_g = driver(species, index, vectors, n_local)
        assert got_e.shape == want_e.shape and got_g.shape == want_g.shape, name
        assert float((got_e - want_e).abs().max()) <= 1e-12 * max(1.0, float(want_e.abs().max())), name
        if index.shape[1] > 0:
            assert float((got_g - want_g).abs().max()) <= 1e-12 * max(1.0, float(want_g.abs().max())), name


def test_blocks_of_one_shape_share_entries():
    """The tiny preset's first block keeps its width, the last one narrows to the head's: two
    kinds, each with its four entries; weights round-trip through the stored blob."""
    model = tiny()
    assert block_kinds(model) == [0, 1]
    species, index, vectors = _open_graph(model, np.random.default_rng(3).uniform(0, 3.5, (9, 3)), torch.float64,
                                          "cpu")
    names = [e.name for e in layer_entries(model, species, index, vectors)]
    assert sorted(n for n in names if n.startswith("block")) == sorted(
        f"block{k}{part}" for k in (0, 1) for part in ("_inputs_fwd", "_inputs_vjp", "_fwd", "_vjp"))
    # no name begins another (AOTInductor's loader finds a model's files by prefix)
    assert not any(a != b and b.startswith(a) for a in names for b in names)
    blob, index_text = layer_weights(model)
    stored = read_layer_weights(blob, index_text, len(model.blocks), torch.device("cpu"))
    for blk, tensors in zip(model.blocks, stored):
        want = state_of(blk)
        assert len(tensors) == len(want) == len(state_names(blk))
        assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(tensors, want))


OFFICIAL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "fixtures", "official_equiformer")


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, "official_md17_l2.ckpt.pt")),
                    reason="../shared/fixtures is not beside the checkout")
def test_official_fixture_through_the_entries():
    """The official MD17 L2 checkpoint (the shared fixture) through the entries by chunks of
    40 edges: the official code's energies and forces (1e-6, as its one-pass import)."""
    from ase.data import chemical_symbols

    from equiformer.export.contract import engine_outputs
    from equiformer.export.official import load_official

    recipe_path = os.path.join(OFFICIAL, "official_md17_l2.json")
    model = traceable_copy(load_official(os.path.join(OFFICIAL, "official_md17_l2.ckpt.pt"), recipe_path),
                           torch.float64, "cpu")
    driver = eager_driver(model, edge_chunk=40)
    recipe = json.load(open(recipe_path))
    for case in recipe["cases"]:
        pos = np.asarray(case["positions"], dtype=np.float64)
        species, index, vectors = _open_graph(model, pos, torch.float64, "cpu")
        species = torch.tensor([model.species_symbols.index(chemical_symbols[z]) for z in case["numbers"]])
        energies, grad = driver(species, index, vectors, len(pos))
        out = engine_outputs(index, vectors, grad, energies, len(pos))
        assert abs(float(out["energy"]) + float(model.energy_offset) - case["energy"]) < 1e-6, case["name"]
        assert float((out["forces"] - torch.tensor(case["forces"])).abs().max()) < 1e-6, case["name"]
