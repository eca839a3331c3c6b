"""No tensor of a hot path is made on a hard-coded device (docs/gpu.md).

Without a GPU, a tensor created on the CPU by mistake (``torch.zeros(n)`` without
``device=``, a ``.cpu()`` in the middle) goes unnoticed: everything is on the CPU anyway. So
the model and the force assembly run here on PyTorch's ``meta`` device (shapes and dtypes,
no data) under a dispatch mode that records every ATen operation whose output is not on
``meta``: any such tensor is one that would have landed on the CPU while the model ran on a
GPU. This sees what runs (TorchScript included), not what the source looks like.

The neighbour search of the TorchForce is data-dependent (sizes from the data), which
``meta`` cannot run; it runs on the CPU under a function mode that records every factory
call without a ``device=`` and every move to the CPU. The calculator and the PythonForce
build their neighbour lists in numpy by design; what they hand to the network must be on the
route's device, checked by running them with the network on ``meta``.
"""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from equiformer.export.torchscript import EquiformerEngineModel, _open_graph
from equiformer.forces import forces_and_virial
from equiformer.model import build_model

META = torch.device("meta")


class OffDevice(TorchDispatchMode):
    """Records every ATen operation that returns a tensor off the meta device."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.found.append(f"{func} -> {t.device} {tuple(t.shape)}")
        return out


def run_on_meta(fn, *args, **kwargs):
    """fn(*args) with every tensor op watched; fails naming the ops that left the device."""
    watch = OffDevice()
    # without TorchScript's graph optimisations (e3nn's scripted parts, the exported module):
    # its fusers know no `meta` device, and which executor runs depends on the tests before
    # (load_engine_model selects the legacy one)
    with watch, torch.jit.optimized_execution(False):
        out = fn(*args, **kwargs)
    assert not watch.found, "tensors created off the model's device:\n" + "\n".join(watch.found[:20])
    return out


def all_on_meta(tree):
    tensors = [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device == META for t in tensors), [t.device for t in tensors]


@pytest.fixture(scope="module", params=["float64", "float32"])
def meta_model(request):
    dtype = getattr(torch, request.param)
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["H", "C", "O"], "cutoff": 3.0}, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    positions = np.random.default_rng(1).uniform(0.0, 3.2, size=(9, 3))
    graph = _open_graph(model, positions, dtype, "cpu")
    assert graph[1].shape[1] > 10
    return model.to(META), tuple(t.to(META) for t in graph)


def test_the_watch_sees_a_hidden_cpu_tensor():
    """The check itself: a CPU tensor made inside a function is caught (as it is on a GPU)."""
    def careless(x):
        return x + torch.zeros(3, dtype=x.dtype).sum()  # a 0-d CPU tensor mixes silently

    with pytest.raises(AssertionError, match="aten.zeros"):
        run_on_meta(careless, torch.ones(3, device=META))

    def careful(x):
        return x + torch.zeros(3, dtype=x.dtype, device=x.device).sum()

    run_on_meta(careful, torch.ones(3, device=META))


def test_model_energy_and_forces(meta_model):
    model, (species, edge_index, vectors) = meta_model
    engine = EquiformerEngineModel(model)
    out = run_on_meta(engine, species, edge_index, vectors, species.shape[0])
    all_on_meta(out)
    assert out["forces"].shape == (species.shape[0], 3) and out["forces"].dtype == torch.float64


@pytest.mark.parametrize("meta_model", ["float64"], indirect=True)  # scripting takes ~20 s
def test_scripted_engine(meta_model):
    """The TorchScript the engines run (the exported .pt's code)."""
    model, (species, edge_index, vectors) = meta_model
    scripted = torch.jit.script(EquiformerEngineModel(model))
    all_on_meta(run_on_meta(scripted, species, edge_index, vectors, 5))


def test_layers_on_meta(meta_model):
    """The per-layer protocol LAMMPS' mode layer calls: edge features once, then the layers
    on the whole graph (the chunked parts are data-dependent: test_chunked_routes)."""
    model, (species, edge_index, vectors) = meta_model
    engine = EquiformerEngineModel(model)

    def layers():
        features = engine.edge_features(vectors)
        x = engine.layer(0, species, torch.empty(0, device=META), edge_index, features)
        for s in range(1, model.num_layers + 1):
            x = engine.layer(s, species, x, edge_index, features)
        return engine.layer(model.num_layers + 1, species, x, edge_index, features)

    all_on_meta(run_on_meta(layers))


def test_training_forward_with_stress(meta_model):
    """model(graph): energies, forces, virial and stress of a batch of two structures (the
    training and equiformer-eval path)."""
    from equiformer.data import keys

    model, (species, edge_index, vectors) = meta_model
    n, e = species.shape[0], edge_index.shape[1]
    dtype = model.energy_dtype()
    graph = {keys.POSITIONS: torch.empty((n, 3), dtype=dtype, device=META), keys.SPECIES: species,
             keys.EDGE_INDEX: edge_index, keys.SHIFTS: torch.empty((e, 3), dtype=dtype, device=META),
             keys.CELL: torch.empty((2, 3, 3), dtype=dtype, device=META),
             keys.BATCH: torch.empty(n, dtype=torch.long, device=META),
             keys.NUM_ATOMS: torch.empty(2, dtype=torch.long, device=META)}
    out = run_on_meta(model, graph, compute_forces=True, compute_stress=True)
    all_on_meta(out)
    assert out[keys.STRESS].shape == (2, 3, 3)


def test_force_assembly():
    n, e = 7, 20
    edge_index = torch.empty((2, e), dtype=torch.long, device=META)
    vectors = torch.empty((e, 3), dtype=torch.float32, device=META)
    grad = torch.empty((e, 3), dtype=torch.float32, device=META)
    structure = torch.empty(e, dtype=torch.long, device=META)
    all_on_meta(run_on_meta(forces_and_virial, edge_index, vectors, grad, n, structure, 2, per_atom=True))


def test_compiled_package_glue(meta_model):
    """The .pt2 route's Python around the compiled code: padding, and the traced function
    (energy and edge gradient) that is compiled."""
    from equiformer.export.aoti import EnergyGradient, pad_graph

    model, (species, edge_index, vectors) = meta_model
    padded = run_on_meta(pad_graph, species, edge_index, vectors, model.cutoff)
    all_on_meta(padded)
    n_local = torch.empty((), dtype=torch.long, device=META)
    all_on_meta(run_on_meta(EnergyGradient(model), *padded, n_local))


# -------------------------------------------------- data-dependent code: on the CPU, watched

FACTORIES = {torch.tensor, torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.eye,
             torch.linspace, torch.rand, torch.randn, torch.randint, torch.as_tensor, torch.scalar_tensor}
# (the *_like factories follow their argument's device)


class HardCodedDevice(TorchFunctionMode):
    """Records factory calls without ``device=`` and explicit moves to the CPU."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            self.found.append(f"{getattr(func, '__name__', func)}(...) without device=")
        if func is torch.Tensor.cpu or func is torch.Tensor.numpy:
            self.found.append(f"Tensor.{func.__name__}()")
        if func is torch.Tensor.to:
            target = list(args[1:]) + [kwargs.get("device")]
            if any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in target
                   if not isinstance(t, torch.dtype) and t is not None):
                self.found.append("Tensor.to(cpu)")
        return func(*args, **kwargs)


def run_watched(fn, *args):
    watch = HardCodedDevice()
    with watch:
        out = fn(*args)
    assert not watch.found, "hard-coded devices:\n" + "\n".join(watch.found)
    return out


def test_function_watch_sees_a_missing_device():
    with pytest.raises(AssertionError, match="arange"):
        run_watched(lambda x: x + torch.arange(3), torch.ones(3))
    with pytest.raises(AssertionError, match="to\\(cpu\\)"):
        run_watched(lambda x: x.to("cpu"), torch.ones(3))


def test_chunked_routes():
    """The memory schedule for big graphs (schedule.py: chunks of centres found with bincount,
    which meta cannot run) and the chunked layer methods (layer_by_chunks, layer_vjp,
    edge_features_vjp), several chunks each."""
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["H", "C", "O"], "cutoff": 3.0}, dtype=torch.float64).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    species, edge_index, vectors = _open_graph(model, np.random.default_rng(1).uniform(0.0, 3.2, size=(9, 3)),
                                               torch.float64, "cpu")
    engine = EquiformerEngineModel(model, chunked_edges=0, edge_chunk=4)

    def chunked():
        out = engine(species, edge_index, vectors, 7)
        features = engine.edge_features(vectors)
        x = engine.layer_by_chunks(0, species, vectors.new_empty(0), edge_index, features)
        x1 = engine.layer_by_chunks(1, species, x, edge_index, features)
        grads = engine.layer_vjp(1, species, x, torch.ones_like(x1), edge_index, features)
        return out, grads, engine.edge_features_vjp(vectors, [torch.ones_like(f) for f in features])

    run_watched(chunked)


def test_torchscript_neighbour_search():
    """openmm/neighbors.py, as the TorchForce runs it: cell list (periodic, and open boundaries
    above the all-pairs size) and all pairs."""
    from equiformer.openmm.neighbors import all_pairs_edges, cell_list_edges, open_edges

    rng = np.random.default_rng(0)
    box = torch.tensor([[7.0, 0.0, 0.0], [1.0, 6.5, 0.0], [-0.5, 0.8, 6.8]], dtype=torch.float64)
    pos = torch.from_numpy(rng.uniform(0, 6.5, size=(40, 3)))
    edges = run_watched(cell_list_edges, pos, box, 3.0)
    assert edges[0].shape[1] > 0
    run_watched(all_pairs_edges, pos, 3.0)
    run_watched(lambda p: open_edges(p, 3.0, 8), pos)


def test_torchforce_module(tmp_path):
    """The module a TorchForce runs (neighbours, model, unit conversion, ML subset), eagerly."""
    pytest.importorskip("openmm")
    import sys
    from pathlib import Path

    from openmm import app

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from analytic_models import write_pair_model

    from equiformer.export.contract import open_engine_model
    from equiformer.openmm.common import prepare
    from equiformer.openmm.torchforce import EquiformerOpenMMModule

    path = write_pair_model(str(tmp_path / "pair.pt"))
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for s in ("C", "H", "O", "H", "C", "O"):
        topology.addAtom(s, app.Element.getBySymbol(s), residue)
    box = np.diag([1.2, 1.1, 1.3])
    for atoms, periodic in ((None, True), ([0, 2, 4], True), (None, False)):
        setup = prepare(path, topology, atoms=atoms, periodic=periodic, box_vectors=box if periodic else None)
        module = EquiformerOpenMMModule(open_engine_model(path), setup)
        pos = torch.from_numpy(np.random.default_rng(3).uniform(0, 1.0, size=(6, 3)))
        energy, forces = run_watched(module, pos, torch.from_numpy(box) if periodic else None)
        assert forces.shape == (6, 3)


# ----------------------------------- the calculator and PythonForce hand the network its device


class MetaNetwork:
    """Stands in for a route's loaded model: runs the real network on meta, checks that every
    input arrived on meta, and hands back CPU zeros of the right shapes (meta has no values to
    convert to numpy)."""

    def __init__(self, model):
        self.engine = EquiformerEngineModel(model)
        self.calls = 0

    def __call__(self, species, edge_index, edge_vectors, n_local):
        for name, t in (("species", species), ("edge_index", edge_index), ("edge_vectors", edge_vectors)):
            assert t.device == META, f"{name} handed to the network on {t.device}"
        out = run_on_meta(self.engine, species, edge_index, edge_vectors, n_local)
        all_on_meta(out)
        self.calls += 1
        return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in out.items()}


@pytest.fixture(scope="module")
def cho_model(tmp_path_factory):
    """(a tiny Equiformer on meta, a model file of the same species and cutoff): the file is
    the analytic pair model (quick to write); the route loads it, then the test swaps the
    loaded network for the Equiformer on meta."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from analytic_models import SYMBOLS, write_pair_model

    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": list(SYMBOLS), "cutoff": 3.0}, dtype=torch.float64)
    return model.to(META).eval(), write_pair_model(str(tmp_path_factory.mktemp("hot") / "pair.pt"))


def test_calculator_compute_path(cho_model):
    from ase.build import molecule

    from equiformer.calculator import EquiformerCalculator

    model, path = cho_model
    calc = EquiformerCalculator(model=path)
    calc.device, calc.engine = META, MetaNetwork(model)
    atoms = molecule("CH3CH2OH")
    atoms.set_cell([9.0, 9.5, 10.0])
    atoms.pbc = True
    atoms.calc = calc
    atoms.get_forces()
    atoms.get_stress()
    assert calc.engine.calls == 1


def test_python_force_compute_path(cho_model):
    openmm = pytest.importorskip("openmm")
    if not hasattr(openmm, "PythonForce"):
        pytest.skip("this OpenMM has no PythonForce")
    from openmm import app

    from equiformer.openmm.common import prepare
    from equiformer.openmm.pythonforce import EquiformerComputation

    model, path = cho_model
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for s in ("C", "H", "O", "H"):
        topology.addAtom(s, app.Element.getBySymbol(s), residue)
    computation = EquiformerComputation(prepare(path, topology, periodic=False))
    computation._load()
    computation._device, computation._species = META, computation._species.to(META)
    computation._model = MetaNetwork(model)
    energy, forces = computation.compute_numpy(np.array([[0, 0, 0], [0.11, 0, 0], [0, 0.14, 0], [0.1, 0.1, 0.1]]))
    assert forces.shape == (4, 3) and computation._model.calls == 1
