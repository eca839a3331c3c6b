"""The compiled AOTInductor package (.pt2): the TorchScript file's numbers on every kind of
graph, its metadata, and clear refusals of packages that cannot be ours or cannot run here.

Every test shares the session's one compiled package (tests/conftest.py: compiled_pair)."""

import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from equiformer.calculator import EquiformerCalculator
from equiformer.export.aoti import PAD_EDGES, PAD_NODES, pad_graph
from equiformer.export.contract import open_engine_model, read_metadata
from equiformer.export.torchscript import export_model
from equiformer.model import build_model
from equiformer.model_info import ModelInfo
from package_variants import always_chunked, rewrite_metadata, without_layer_entries

KEYS = ("energy", "atom_energies", "forces", "virial", "atom_virial")


def assert_same(a, b, rel=1e-10):
    for key in KEYS:
        x, y = a[key].detach().double(), b[key].detach().double()
        scale = max(1.0, float(y.abs().max())) if y.numel() else 1.0
        assert x.shape == y.shape, key
        assert float((x - y).abs().max()) <= rel * scale if x.numel() else True, key


def graph(positions, edges, dtype=torch.float64):
    positions = np.asarray(positions, dtype=np.float64)
    index = np.asarray(edges, dtype=np.int64).reshape(-1, 2).T.copy()
    vectors = torch.tensor(positions[index[0]] - positions[index[1]], dtype=dtype).reshape(-1, 3)
    return torch.zeros(len(positions), dtype=torch.int64), torch.from_numpy(index), vectors


@pytest.fixture(scope="module")
def engines(compiled_pair):
    return open_engine_model(compiled_pair["pt"]), open_engine_model(compiled_pair["pt2"])


SMALL_CASES = ["one atom", "no edge", "one edge", "ghosts", "cluster"]


def small_graph(case):
    """(species, edge_index, edge vectors, n_local): N = 1, E = 0 (two atoms out of range),
    E = 1 (an edge into a local atom from a ghost), ghosts (n_local < N), a 20-atom cluster."""
    rng = np.random.default_rng(0)
    if case == "one atom":
        return *graph([[0, 0, 0]], []), 1
    if case == "no edge":
        return *graph([[0, 0, 0], [9, 0, 0]], []), 2
    if case == "one edge":
        return *graph([[0, 0, 0], [2.5, 0, 0]], [[1, 0]]), 1
    if case == "ghosts":
        pos = rng.uniform(0, 5, (8, 3))
        edges = [[j, i] for i in range(3) for j in range(8) if i != j and np.linalg.norm(pos[i] - pos[j]) < 4.0]
        return *graph(pos, edges), 3
    pos = rng.uniform(0, 7, (20, 3))
    edges = [[j, i] for i in range(20) for j in range(20) if i != j and np.linalg.norm(pos[i] - pos[j]) < 4.0]
    return *graph(pos, edges), 20


@pytest.mark.parametrize("case", SMALL_CASES)
def test_package_equals_torchscript_on_small_graphs(engines, case):
    """float64, 1e-10 relative."""
    ts, pt2 = engines
    species, index, vectors, n_local = small_graph(case)
    assert_same(pt2(species, index, vectors, n_local), ts(species, index, vectors, n_local))


@pytest.mark.parametrize("case", SMALL_CASES)
def test_chunked_route_equals_torchscript(engines, case):
    """The package's layer entries driven chunk by chunk (chunks of 7 edges), taken here for
    every graph, even one without edges: the TorchScript file's numbers (float64, 1e-10)."""
    ts, pt2 = engines
    species, index, vectors, n_local = small_graph(case)
    threshold, chunk = pt2.chunked_edges, pt2.chunked.edge_chunk
    try:
        pt2.chunked_edges, pt2.chunked.edge_chunk = -1, 7  # more than -1 edges: every graph
        got = pt2(species, index, vectors, n_local)
    finally:
        pt2.chunked_edges, pt2.chunked.edge_chunk = threshold, chunk
    assert_same(got, ts(species, index, vectors, n_local))


@pytest.fixture(scope="module")
def chunked_package(compiled_pair, tmp_path_factory):
    return always_chunked(compiled_pair["pt2"], str(tmp_path_factory.mktemp("chunked") / "chunked.pt2"), 20)


@pytest.mark.parametrize("structure", ["molecule", "triclinic", "small cell"])
def test_calculator_gives_the_same_numbers(compiled_pair, chunked_package, structure):
    """The ASE calculator on the package (one graph, and its chunked route by the package's
    own metadata) and on the TorchScript file: a molecule, a triclinic periodic cell, and a
    cell smaller than two cutoffs (atoms see their own images)."""
    rng = np.random.default_rng(1)
    if structure == "molecule":
        atoms = Atoms("Cu7", positions=rng.uniform(0, 5, (7, 3)))
    elif structure == "triclinic":
        cell = np.array([[8.0, 0, 0], [1.5, 7.5, 0], [0.7, 1.1, 7.8]])
        atoms = Atoms("Cu24", scaled_positions=rng.uniform(0, 1, (24, 3)), cell=cell, pbc=True)
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=2)
    results = []
    for path in (compiled_pair["pt"], compiled_pair["pt2"], chunked_package):
        a = atoms.copy()
        a.calc = EquiformerCalculator(model=path)
        props = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.any() else [])
        results.append({k: np.asarray(a.calc.get_property(k, a)) for k in props})
    for got in results[1:]:
        for key, want in results[0].items():
            scale = max(1.0, np.abs(want).max())
            assert np.abs(got[key] - want).max() <= 1e-10 * scale, key


def test_metadata_travels_in_the_package(compiled_pair):
    pt, pt2 = ModelInfo.read(compiled_pair["pt"]), ModelInfo.read(compiled_pair["pt2"])
    for field in ("cutoff", "num_layers", "interaction_range", "species_symbols", "atomic_numbers", "length_unit",
                  "energy_unit", "dtype", "energy_offset", "min_distance", "hyperparameters"):
        assert getattr(pt2, field) == getattr(pt, field), field
    files = read_metadata(compiled_pair["pt2"])
    assert files["container"] == "aoti"
    assert files["inputs"] == "species edge_index edge_vectors n_local"
    assert files["outputs"] == "atom_energies edge_gradient"
    assert files["torch_version"] == torch.__version__.split("+")[0]


def test_threads_are_not_baked_in(compiled_pair):
    """The compiled kernels take their thread count from the caller at run time (Inductor's
    default bakes in the compile machine's count as `num_threads(K)`)."""
    with zipfile.ZipFile(compiled_pair["pt2"]) as archive:
        sources = [archive.read(n).decode() for n in archive.namelist() if n.endswith(".cpp")]
    assert sources
    assert not any(re.search(r"num_threads\(\d+\)", s) for s in sources)
    ts, pt2 = open_engine_model(compiled_pair["pt"]), open_engine_model(compiled_pair["pt2"])
    species, index, vectors = graph([[0, 0, 0], [2.2, 0, 0], [0, 2.4, 0]], [[1, 0], [0, 1], [2, 0], [0, 2]])
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert_same(pt2(species, index, vectors, 3), ts(species, index, vectors, 3))
    finally:
        torch.set_num_threads(old)


def test_padding_matches_the_format_doc():
    species, index, vectors = pad_graph(torch.zeros(3, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.int64),
                                        torch.zeros(0, 3, dtype=torch.float64), 4.0)
    assert species.tolist() == [0] * (3 + PAD_NODES)
    assert index.tolist() == [[3, 4], [4, 3]] and PAD_EDGES == 2
    assert vectors.tolist() == [[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]


def test_refuses_a_package_from_another_torch(compiled_pair, tmp_path):
    path = str(tmp_path / "old.pt2")
    rewrite_metadata(compiled_pair["pt2"], path, lambda m: dict(m, torch_version="2.7.0"))
    ModelInfo.read(path)  # the description is readable...
    with pytest.raises(ValueError, match=r"compiled with torch 2\.7\.0.*runs only with the torch it was compiled"):
        open_engine_model(path)  # ...but its code is not loaded


def test_refuses_a_package_for_another_cpu(compiled_pair, tmp_path):
    path = str(tmp_path / "isa.pt2")
    rewrite_metadata(compiled_pair["pt2"], path, lambda m: dict(m, cpu_capability="SVE256"))
    with pytest.raises(ValueError, match="compiled for SVE256 CPUs.*CPU family it runs on"):
        open_engine_model(path)


def test_refuses_a_pt2_that_is_not_ours(compiled_pair, tmp_path):
    foreign = str(tmp_path / "foreign.pt2")
    rewrite_metadata(compiled_pair["pt2"], foreign, lambda m: {"AOTI_DEVICE_KEY": "cpu"})
    with pytest.raises(ValueError, match="a .pt2 archive but not an exported Equiformer model"):
        ModelInfo.read(foreign)
    bare = str(tmp_path / "bare.pt2")
    rewrite_metadata(compiled_pair["pt2"], bare, lambda m: None)
    with pytest.raises(ValueError, match="not a compiled model package"):
        EquiformerCalculator(model=bare)


def test_damaged_package_is_refused(compiled_pair, tmp_path):
    path = tmp_path / "damaged.pt2"
    shutil.copy(compiled_pair["pt2"], path)
    data = bytearray(path.read_bytes())
    at = data.find(b"equiformer-model")
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        ModelInfo.read(str(path))


def test_layer_entries_are_described(compiled_pair):
    """Default export: the chunked route above the TorchScript file's threshold (the same rule,
    measured at each export: equal within the measurement's scatter), its layer entries and
    the blocks' weights in the package."""
    files = read_metadata(compiled_pair["pt2"])
    threshold = torch.jit.load(compiled_pair["pt"]).chunked_edges
    assert threshold > 0 and abs(int(files["chunked_edges"]) - threshold) <= 0.01 * threshold
    assert files["edge_chunk"] == "2048" and files["block_kinds"] == "0 1" and files["readout_edges"] == "0"
    with zipfile.ZipFile(compiled_pair["pt2"]) as archive:
        names = archive.namelist()
    for entry in ("features_fwd", "embed_vjp", "block0_inputs_fwd", "block1_vjp", "readout_vjp"):
        assert any(f"/data/aotinductor/{entry}/" in n for n in names), entry
    assert any(n.endswith("/equiformer/layer_weights.bin") for n in names)


def test_package_without_layer_entries(compiled_pair, tmp_path, engines):
    """--chunked-above -1: one graph for every size (same numbers); a package that names
    layer entries but lost their weights is refused with the fix."""
    bare = without_layer_entries(compiled_pair["pt2"], str(tmp_path / "one-graph.pt2"))
    engine = open_engine_model(bare)
    assert engine.chunked is None
    species, index, vectors, n_local = small_graph("cluster")
    assert_same(engine(species, index, vectors, n_local), engines[0](species, index, vectors, n_local))
    lost = str(tmp_path / "lost.pt2")
    with zipfile.ZipFile(compiled_pair["pt2"]) as zin, zipfile.ZipFile(lost, "w") as zout:
        for item in zin.infolist():
            if "/equiformer/" not in item.filename:
                zout.writestr(item.filename, zin.read(item.filename))
    with pytest.raises(ValueError, match="holds no layer weights.*re-export"):
        open_engine_model(lost)


def test_bad_edge_chunk_is_refused_before_compiling(tmp_path):
    model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 4.0})
    with pytest.raises(ValueError, match="edge_chunk must be a positive number"):
        export_model(model, str(tmp_path / "m.pt2"), edge_chunk=0)
    assert not (tmp_path / "m.pt2").exists()


def test_torchforce_refuses_a_package(compiled_pair):
    pytest.importorskip("openmm")
    from equiformer.openmm.torchforce import build_module

    class Setup:
        model_path = compiled_pair["pt2"]

    with pytest.raises(ValueError, match="TorchForce carries TorchScript only"):
        build_module(compiled_pair["pt2"], Setup())


def test_format_follows_the_extension_unless_given():
    from equiformer.export.torchscript import format_of

    assert format_of("model.pt2") == "aoti" and format_of("model.pt") == "torchscript"
    assert format_of("model.bin", "aoti") == "aoti"
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        format_of("model.pt", "onnx")


def test_openmm_ml_picks_the_native_route_for_a_package(compiled_pair):
    pytest.importorskip("openmmml")
    from equiformer.openmm.mlpotential import EquiformerPotentialImpl

    assert EquiformerPotentialImpl("equiformer", compiled_pair["pt2"]).implementation == "native"
    assert EquiformerPotentialImpl("equiformer", compiled_pair["pt"]).implementation == "torchforce"
