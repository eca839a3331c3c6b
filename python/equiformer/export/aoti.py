"""Write an Equiformer as a compiled AOTInductor package (`.pt2`, docs/model-format.md).

The package's entry `model` is one compiled function, traced from the energy and its gradient:

    (species [N] int64, edge_index [2, E] int64, edge_vectors [E, 3] model dtype, n_local [] int64)
        -> (atom_energies [N] float64, edge_gradient [E, 3] model dtype)

where ``edge_gradient`` is d(sum of the first n_local atom energies)/d(edge vector). Forces
and virials are assembled from it by the caller, in the one place per language that does so
(forces.py, the C++ runtime's assemble_from_edge_gradient). N and E are dynamic; callers append
`PAD_NODES` nodes joined by `PAD_EDGES` edges (an isolated dimer that touches no real atom)
so that the compiled sizes are never below 2, the smallest that AOTInductor's shape checks
accept: one atom, no edge and one edge take the same path as any graph.

Why the two-step trace: `torch.export` cannot trace `autograd.grad` inside a forward (torch
2.9), so `make_fx` first traces energy and gradient into one forward-only ATen graph with
symbolic sizes, and that graph is exported with dynamic N and E. e3nn's spherical harmonics
must be built in e3nn's eager jit mode for this (its scripted code cannot be traced).

Unless exported with ``chunked_edges`` -1 the package also holds the layer entries
(aoti_layers.py): graphs above ``chunked_edges`` take them chunk by chunk (aoti_schedule.py),
and the C++ runtime runs them layer by layer for LAMMPS `mode layer`.
"""

import json
import os
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch._inductor.package import package_aoti
from torch.export.pt2_archive._package import load_pt2

from ..model import Equiformer, clone_model
from .aoti_layers import (LAYER_INDEX, LAYER_WEIGHTS, block_kinds, compile_entry, layer_entries, layer_weights,
                          read_layer_weights)
from .aoti_schedule import CompiledChunked
from .contract import check_writable, engine_outputs, metadata_files
from .torchscript import _open_graph

CONTAINER = "aoti"
INPUTS = "species edge_index edge_vectors n_local"
OUTPUTS = "atom_energies edge_gradient"
PAD_NODES = 2
PAD_EDGES = 2
# how closely the compiled package must reproduce the eager model before it is written
PROBE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
# Inductor settings: threads follow the caller at run time (not the count at compile time);
# indirect-index bounds checks off (torch 2.9 generates uncompilable vectorised checks for
# embeddings with one row; indices are checked by the callers, docs/model-format.md)
INDUCTOR_CONFIGS = {"cpp.dynamic_threads": True, "assert_indirect_indexing": False}
# atoms of the example graph the package is exported with (about 4,000 edges, the order of a
# chunk or a small MD graph). Sizes stay symbolic; Inductor reads the example's sizes as hints
# when it splits loops over threads
EXAMPLE_ATOMS = 64


class EnergyGradient(torch.nn.Module):
    """The compiled function: atom energies and d(local energy)/d(edge vectors)."""

    def __init__(self, model: Equiformer):
        super().__init__()
        self.model = model

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            vec = edge_vectors.detach().requires_grad_(True)
            atom_energies = self.model.atom_energies(species, edge_index, vec)
            local = torch.arange(atom_energies.shape[0], device=atom_energies.device) < n_local
            energy = torch.where(local, atom_energies, torch.zeros_like(atom_energies)).sum()
            (grad,) = torch.autograd.grad([energy], [vec])
        return atom_energies.detach(), grad.detach()


def pad_graph(species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
              cutoff: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the padding dimer: two atoms of species 0, half a cutoff apart, with an edge
    each way (the C++ runtime pads the same way)."""
    n = species.shape[0]
    pad_species = torch.zeros(PAD_NODES, dtype=species.dtype, device=species.device)
    pad_index = torch.tensor([[n, n + 1], [n + 1, n]], dtype=edge_index.dtype, device=edge_index.device)
    half = 0.5 * cutoff
    pad_vec = torch.tensor([[half, 0.0, 0.0], [-half, 0.0, 0.0]], dtype=edge_vectors.dtype,
                           device=edge_vectors.device)
    return (torch.cat([species, pad_species]), torch.cat([edge_index, pad_index], dim=1),
            torch.cat([edge_vectors, pad_vec]))


@contextmanager
def e3nn_eager():
    """e3nn modules built inside use its eager jit mode (traceable)."""
    import e3nn

    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(jit_mode="eager")
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(**saved)


def traceable_copy(model: Equiformer, dtype: torch.dtype, device: str) -> Equiformer:
    """A frozen copy of ``model`` in ``dtype`` whose e3nn parts are traceable."""
    with e3nn_eager():
        copy_ = clone_model(model)
    copy_ = copy_.to(device=device, dtype=dtype).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


def trace_graph(module: EnergyGradient, n: int, dtype: torch.dtype, device: str) -> torch.fx.GraphModule:
    """The forward-only ATen graph of energy + gradient, sizes symbolic, traced on a random
    cluster of n atoms (padded, as every call is)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    args = example_inputs(module.model, n, dtype, device)
    return make_fx(module, decomposition_table=core_aten_decompositions(), tracing_mode="symbolic",
                   _allow_non_fake_inputs=True)(*args)


def example_inputs(model: Equiformer, n: int, dtype: torch.dtype, device: str):
    """Padded inputs of an open cluster of n atoms, every species present."""
    positions = np.random.default_rng(n).uniform(0.0, 0.9 * model.cutoff, size=(n, 3))
    species, index, vectors = pad_graph(*_open_graph(model, positions, dtype, device), model.cutoff)
    return species, index, vectors, torch.tensor(n, device=device)


def graph_signature(gm: torch.fx.GraphModule) -> list:
    return [(node.op, str(node.target)) for node in gm.graph.nodes]


def package_metadata(metadata: Dict[str, object]) -> Dict[str, str]:
    """The format's metadata plus what a compiled package needs to be run safely."""
    files = metadata_files(metadata)
    files.update({
        "container": CONTAINER,
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "pad_nodes": str(PAD_NODES),
        "pad_edges": str(PAD_EDGES),
        "torch_version": torch.__version__.split("+")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    })
    return files


def compile_package(model: Equiformer, path: str, dtype: torch.dtype, device: str,
                    metadata: Dict[str, object], chunked_edges: int = -1, edge_chunk: int = 2048) -> Dict[str, str]:
    """Trace, export, compile and check ``model``; write the package atomically to ``path``.
    ``chunked_edges`` >= 0 adds the layer entries (aoti_layers.py): graphs with more edges
    then take the chunked schedule, and engines can run the model layer by layer."""
    module = EnergyGradient(traceable_copy(model, dtype, device))
    # two traces of different sizes must give the same graph: a size baked into the graph
    # (a specialisation) would otherwise pass silently
    graph = trace_graph(module, 11, dtype, device)
    if graph_signature(graph) != graph_signature(trace_graph(module, 17, dtype, device)):
        raise RuntimeError("the traced energy gradient depends on the graph size (a size was specialised); "
                           "this model cannot be compiled to a .pt2 package")
    n_dim = torch.export.Dim("atoms", min=PAD_NODES)
    e_dim = torch.export.Dim("edges", min=PAD_EDGES)
    args = example_inputs(module.model, EXAMPLE_ATOMS, dtype, device)
    program = torch.export.export(graph, args, dynamic_shapes=({0: n_dim}, {1: e_dim}, {0: e_dim}, None),
                                  strict=False)
    files = package_metadata(metadata)
    layered = chunked_edges >= 0
    files.update({"chunked_edges": str(int(chunked_edges)), "edge_chunk": str(int(edge_chunk))})
    if layered:
        files.update({"block_kinds": " ".join(str(k) for k in block_kinds(module.model)),
                      "readout_edges": str(int(module.model.head.attention))})
    directory = check_writable(path)
    tmpdir = tempfile.mkdtemp(prefix=".equiformer-export-", dir=directory)
    try:
        tmp = os.path.join(tmpdir, "model.pt2")
        configs = dict(INDUCTOR_CONFIGS, **{"aot_inductor.metadata": files, "aot_inductor.package": True})
        compiled = {"model": torch._inductor.aot_compile(program.module(check_guards=False), args, options=configs)}
        if layered:
            for entry in layer_entries(module.model, *args[:3]):
                compiled[entry.name] = compile_entry(entry, INDUCTOR_CONFIGS)
        package_aoti(tmp, compiled)
        if layered:
            add_layer_weights(tmp, module.model)
        check_package(module, tmp, files, dtype, device)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return files


def add_layer_weights(path: str, model: Equiformer) -> None:
    """Store the blocks' weights beside the compiled code (uncompressed, as torch stores its
    entries: the C++ runtime reads them in place)."""
    blob, index = layer_weights(model)
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/{LAYER_INDEX}", index)
        archive.writestr(f"{root}/{LAYER_WEIGHTS}", blob)


def check_package(module: EnergyGradient, path: str, files: Dict[str, str], dtype: torch.dtype,
                  device: str) -> None:
    """The compiled package must reproduce the eager model on graphs it was not traced on, by
    each route it has (the chunked one with several chunks)."""
    engine = PackageEngineModel(path, files, device)
    tol = PROBE_TOLERANCE[dtype]
    # thresholds: no graph is above the first; every graph, even one without edges, above the second
    routes = [("one-graph", sys.maxsize)] + ([("chunked", -1)] if engine.chunked is not None else [])
    for n in (1, 5, 23):
        args = example_inputs(module.model, n, dtype, device)
        want = module(*args)
        for route, threshold in routes:
            engine.chunked_edges = threshold
            if engine.chunked is not None:
                engine.chunked.edge_chunk = max(1, int(args[1].shape[1]) // 3)
            got = engine.energy_gradient(*unpadded(args))
            for name, a, b in zip(("atom energies", "edge gradient"), unpadded_outputs(args, want), got):
                scale = max(1.0, float(a.abs().max())) if a.numel() > 0 else 1.0
                err = float((a - b).abs().max()) if a.numel() > 0 else 0.0
                if not err <= tol * scale:
                    raise RuntimeError(f"the compiled package's {name} ({route}) differ from the eager model's by "
                                       f"{err:.3g} on {n} atoms (tolerance {tol * scale:.3g}); nothing was written")


def unpadded(args):
    """The real graph of padded `example_inputs`."""
    species, index, vectors, n_local = args
    n, e = species.shape[0] - PAD_NODES, index.shape[1] - PAD_EDGES
    return species[:n], index[:, :e], vectors[:e], int(n_local)


def unpadded_outputs(args, outputs):
    n, e = args[0].shape[0] - PAD_NODES, args[1].shape[1] - PAD_EDGES
    return outputs[0][:n], outputs[1][:e]


# ------------------------------------------------------------------------------- reading


def is_package(path: str) -> bool:
    """Whether ``path`` is a PyTorch 2 archive (an AOTInductor package or other .pt2)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/archive_format") and archive.read(name).strip() == b"pt2"
                       for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def package_files(path: str) -> Dict[str, str]:
    """The metadata stored in a compiled package, read from the archive without loading its
    compiled code (which might not run on this machine)."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist()
                 if "/data/aotinductor/model/" in n and n.endswith("wrapper_metadata.json")]
        if len(names) != 1:
            raise ValueError(f"{path} is a .pt2 archive but not a compiled model package (no model metadata); "
                             "create one with `equiformer-export CHECKPOINT.pt MODEL.pt2`")
        raw = json.loads(archive.read(names[0]).decode())
    return {str(k): str(v) for k, v in raw.items()}


def check_runnable(path: str, files: Dict[str, str]) -> None:
    """Refuse a package this process cannot run, before loading its code."""
    built = files.get("torch_version", "")
    here = torch.__version__.split("+")[0]
    if built != here:
        raise ValueError(f"{path} was compiled with torch {built or '(unknown)'}, this process runs torch {here}; a "
                         ".pt2 package runs only with the torch it was compiled with: re-export it here with "
                         "`equiformer-export CHECKPOINT.pt MODEL.pt2` (or use the TorchScript .pt file)")
    isa = files.get("cpu_capability", "")
    if isa and not cpu_supports(isa):
        raise ValueError(f"{path} was compiled for {isa} CPUs, this CPU supports "
                         f"{torch.backends.cpu.get_cpu_capability()}: compile the package on the CPU family it runs "
                         "on (or use the TorchScript .pt file)")


def check_device_kind(path: str, files: Dict[str, str], device: torch.device) -> None:
    """A package's code is compiled for one device kind (its metadata ``device``): refuse to
    run it on another, before loading it."""
    built = torch.device(files.get("device") or "cpu").type
    if built != device.type:
        raise ValueError(f"{path} was compiled for {built}, and this route asks for {device}: a .pt2 package runs "
                         f"only on the device kind it was compiled for; use device {built!r}, or re-export it "
                         f"with `equiformer-export CHECKPOINT.pt MODEL.pt2 --device {device.type}` (or use the "
                         "TorchScript .pt file, which runs on any device)")


# ATen's CPU capabilities: a baseline package runs on any CPU of its architecture; on x86 a
# package needs at least the vector extension it was compiled for (the C++ runtime agrees)
BASELINE = ("DEFAULT", "NO AVX")
X86_LEVELS = ("NO AVX", "AVX2", "AVX512")


def cpu_supports(isa: str) -> bool:
    here = torch.backends.cpu.get_cpu_capability()
    if isa == here or isa in BASELINE:
        return True
    if isa in X86_LEVELS and here in X86_LEVELS:
        return X86_LEVELS.index(here) >= X86_LEVELS.index(isa)
    return False


class PackageEngineModel:
    """A compiled package with the engine contract's call (docs/model-format.md):
    ``model(species, edge_index, edge_vectors, n_local)`` -> energy, atom_energies, forces,
    virial, atom_virial. Graphs above the package's ``chunked_edges`` take its layer entries'
    chunked schedule (aoti_schedule.py)."""

    def __init__(self, path: str, files: Dict[str, str], device: str = "cpu"):
        check_runnable(path, files)
        self.path = path
        self.cutoff = float(files["cutoff"])
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[files["dtype"]]
        self.device = torch.device(device)
        check_device_kind(path, files, self.device)
        index = self.device.index if self.device.type == "cuda" and self.device.index is not None else -1
        try:
            runners = load_pt2(path, device_index=index).aoti_runners
        except Exception as exc:  # a package compiled for another device or library set
            raise ValueError(f"{path}: the compiled package cannot be loaded here ({str(exc).splitlines()[0]}); "
                             "re-export it on this machine with `equiformer-export CHECKPOINT.pt MODEL.pt2`") from None
        self.runner = runners["model"]
        # graphs with more edges take the layer entries (when the package has them; -1 then
        # sends every graph there, even one without edges)
        self.chunked_edges = int(files.get("chunked_edges") or -1)
        self.chunked: Optional[CompiledChunked] = None
        if self.chunked_edges >= 0:
            kinds = [int(k) for k in files["block_kinds"].split()]
            self.chunked = CompiledChunked(runners, read_package_weights(path, len(kinds), self.device), kinds,
                                           files["readout_edges"] == "1", int(files["edge_chunk"]),
                                           self.padding_vectors())

    def padding_vectors(self) -> torch.Tensor:
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        return pad_graph(empty, empty.reshape(2, 0), torch.zeros(0, 3, dtype=self.dtype, device=self.device),
                         self.cutoff)[2]

    def energy_gradient(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                        n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(atom energies [N] float64, d(local energy)/d(edge vectors) [E, 3]) by the route the
        graph's size calls for."""
        n, e = int(species.shape[0]), int(edge_index.shape[1])
        if self.chunked is not None and e > self.chunked_edges:
            return self.chunked(species, edge_index, edge_vectors, n_local)
        args = pad_graph(species, edge_index, edge_vectors, self.cutoff)
        atom_energies, grad = self.runner(*args, torch.tensor(int(n_local), device=self.device))
        return atom_energies[:n], grad[:e]

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int) -> Dict[str, torch.Tensor]:
        vec = edge_vectors.to(device=self.device, dtype=self.dtype)
        edge_index = edge_index.to(self.device)
        atom_energies, grad = self.energy_gradient(species.to(self.device), edge_index, vec, n_local)
        return engine_outputs(edge_index, vec, grad, atom_energies, n_local)


def read_package_weights(path: str, num_blocks: int, device: torch.device) -> List[List[torch.Tensor]]:
    """The blocks' weights stored beside a package's layer entries."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = names[0].split("/")[0]
        if f"{root}/{LAYER_INDEX}" not in names:
            raise ValueError(f"{path} says it has layer entries but holds no layer weights; re-export it with "
                             "`equiformer-export CHECKPOINT.pt MODEL.pt2`")
        index = archive.read(f"{root}/{LAYER_INDEX}").decode()
        blob = archive.read(f"{root}/{LAYER_WEIGHTS}")
    return read_layer_weights(blob, index, num_blocks, device)
