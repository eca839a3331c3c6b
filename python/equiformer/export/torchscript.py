"""Write an Equiformer as the TorchScript engine model of docs/model-format.md."""

from typing import Dict, List, Optional

import numpy as np
import torch

from .. import __version__
from ..data.neighbors import neighbor_list
from ..device import resolve_device
from ..model import Equiformer, clone_model
from ..units import length_factor
from ..nn.features import all_features_gradient, as_list, differentiable, from_list
from ..schedule import ChunkedGradient, edge_ranges
from .contract import (DEFAULT_MIN_DISTANCE_ANGSTROM, EngineModel, check_writable, engine_outputs, metadata_files,
                       legacy_executor, save_engine_model)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# how closely the scripted model must reproduce the eager one on the probe before writing
PROBE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


# default memory for one autograd pass over all layers; beyond it the engine takes the chunked route
SINGLE_PASS_MEMORY = 2 * 1024 ** 3


class EquiformerEngineModel(EngineModel):
    """The contract's forward plus the per-layer methods for engines that exchange node
    features between layers (docs/model-format.md, "Layer by layer").

    Graphs with more than ``chunked_edges`` edges take the chunked memory schedule
    (schedule.py): the same numbers with memory that grows with the atoms only, for about one
    extra forward pass of the attention. -1: never.
    """

    chunked_edges: int

    def __init__(self, model: Equiformer, chunked_edges: int = -1, edge_chunk: int = 2048):
        super().__init__(model)
        self.chunked_edges = int(chunked_edges)
        self.schedule = ChunkedGradient(model, edge_chunk)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        if self.chunked_edges < 0 or edge_vectors.shape[0] <= self.chunked_edges:
            return self.single_pass(species, edge_index, edge_vectors, n_local)
        atom_energies, grad = self.schedule(species, edge_index, edge_vectors, n_local)
        return engine_outputs(edge_index, edge_vectors, grad, atom_energies, n_local)

    # Layer s: 0 = embedding, 1..num_layers = blocks, num_layers + 1 = readout (atom energies).
    # Features: `edge_features`' list, computed once per evaluation.
    @torch.jit.export
    def edge_features(self, edge_vectors: torch.Tensor) -> List[torch.Tensor]:
        return as_list(self.model.edge_features(edge_vectors.to(self.model.energy_dtype())))

    @torch.jit.export
    def layer(self, s: int, species: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
              features: List[torch.Tensor]) -> torch.Tensor:
        """Layer s on the whole graph (differentiable with respect to x and the features)."""
        if s < 0 or s > self.model.num_layers + 1:
            raise IndexError("layer index " + str(s) + " out of range 0.." + str(self.model.num_layers + 1))
        f = from_list(features)
        src, dst = edge_index[0], edge_index[1]
        if s == 0:
            return self.model.embed(species, dst, f)
        for i, blk in enumerate(self.model.blocks):
            if i == s - 1:
                return blk(x, src, dst, f)
        return self.model.readout(species, x, src, dst, f)

    @torch.jit.export
    def layer_by_chunks(self, s: int, species: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                        features: List[torch.Tensor]) -> torch.Tensor:
        """Layer s without a graph, a chunk of centres at a time (large graphs)."""
        return self.schedule.layer_by_chunks(s, species, x, edge_index, from_list(features))

    @torch.jit.export
    def layer_vjp(self, s: int, species: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor,
                  edge_index: torch.Tensor, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """[d/dx, d/d(each feature)] of <grad_out, layer s>, recomputed a chunk at a time."""
        f = from_list(features)
        grad_x, grads = self.schedule.layer_vjp(s, species, x, grad_out, edge_index, f)
        return [grad_x] + all_features_gradient(f, grads)

    @torch.jit.export
    def edge_features_vjp(self, edge_vectors: torch.Tensor, grad_features: List[torch.Tensor]) -> torch.Tensor:
        """d/d(edge vectors) of <grad_features, edge_features>, a chunk of edges at a time."""
        vec = edge_vectors.detach().to(self.model.energy_dtype())
        grads = differentiable(from_list(grad_features))
        return self.schedule.features_vjp(vec, grads, edge_ranges(vec.shape[0], self.schedule.edge_chunk))


def metadata_of(model: Equiformer, dtype: torch.dtype, device: str,
                min_distance: Optional[float] = None) -> Dict[str, object]:
    """The metadata of docs/model-format.md; ``min_distance`` in Angstrom (default 0.5)."""
    hp = model.hparams
    if min_distance is None:
        min_distance = DEFAULT_MIN_DISTANCE_ANGSTROM
    return {
        "min_distance": repr(min_distance * length_factor("Angstrom", hp["length_unit"])),
        "package_version": __version__,
        "cutoff": model.cutoff,
        "num_layers": model.num_layers,
        "interaction_range": model.cutoff * model.num_hops,
        "species_symbols": model.species_symbols,
        "atomic_numbers": model.atomic_numbers,
        "length_unit": hp["length_unit"],
        "energy_unit": hp["energy_unit"],
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "energy_offset": repr(float(model.energy_offset)),
        "hyperparameters": hp,
    }


def probe_inputs(model: Equiformer, dtype: torch.dtype, device: str):
    """A small periodic-image-free cluster with every species and a few edges per atom."""
    rng = np.random.default_rng(0)
    n = max(6, len(model.species_symbols) if len(model.species_symbols) <= 12 else 6)
    spacing = 0.45 * model.cutoff
    return _open_graph(model, rng.uniform(0, 2.0 * spacing, size=(n, 3)), dtype, device)


def random_cluster(model: Equiformer, n: int, dtype: torch.dtype, device: str):
    """n atoms at condensed-matter density (about 30 neighbours within a 5 A cutoff)."""
    rng = np.random.default_rng(n)
    side = (n * 12.0) ** (1.0 / 3.0) * model.cutoff / 5.0
    return _open_graph(model, rng.uniform(0, side, size=(n, 3)), dtype, device)


def _open_graph(model: Equiformer, positions: np.ndarray, dtype: torch.dtype, device: str):
    """(species, edge_index, edge vectors) of atoms at `positions` with open boundaries, the
    species in turn."""
    edge_index, _, _ = neighbor_list(positions, model.cutoff)
    vectors = torch.from_numpy(positions[edge_index[0]] - positions[edge_index[1]]).to(dtype)
    species = torch.arange(len(positions)) % len(model.species_symbols)
    return species.to(device), torch.from_numpy(edge_index).to(device), vectors.to(device)


def graph_bytes_per_edge(model: Equiformer, dtype: torch.dtype, device: str) -> float:
    """Bytes that one autograd pass keeps per edge (slope between two cluster sizes, so that
    per-atom storage does not count): what the single-pass memory grows by with each edge."""
    sizes = []
    for n in (16, 32):
        species, edge_index, vectors = random_cluster(model, n, dtype, device)
        storages: Dict[int, int] = {}

        def keep(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model.atom_energies(species, edge_index, vectors.detach().requires_grad_(True))
        sizes.append((edge_index.shape[1], sum(storages.values())))
    (e1, b1), (e2, b2) = sizes
    return max(1.0, (b2 - b1) / max(1, e2 - e1))


FORMATS = ("torchscript", "aoti")


def format_of(path: str, fmt: Optional[str] = None) -> str:
    """The export format: ``fmt`` if given, else chosen by the extension (.pt2: aoti)."""
    if fmt is None:
        return "aoti" if path.endswith(".pt2") else "torchscript"
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    return fmt


def export_model(model: Equiformer, path: str, dtype: str = "float64", device: str = "cpu",
                 chunked_edges: Optional[int] = None, min_distance: Optional[float] = None, edge_chunk: int = 2048,
                 layerwise_edges: Optional[int] = None, fmt: Optional[str] = None) -> Dict[str, str]:
    """Script (or compile, ``fmt`` "aoti" or a .pt2 path: export/aoti.py), check against eager
    on a probe structure, and write atomically. Returns the metadata.

    ``chunked_edges``: graphs with more edges take the chunked memory schedule (see
    EquiformerEngineModel; ``layerwise_edges`` is its former name); default: where one autograd
    pass would keep more than SINGLE_PASS_MEMORY bytes; -1: never. ``edge_chunk``: edges per
    chunk. ``min_distance`` (Angstrom): engines warn once per run when two atoms come closer
    (default 0.5). ``device``: where the export is traced and checked (cpu, cuda, cuda:K or
    auto); a TorchScript file runs on any device afterwards, a .pt2 package only on the device
    kind it was compiled for."""
    if layerwise_edges is not None:
        if chunked_edges is not None:
            raise ValueError("give chunked_edges only; layerwise_edges is its former name")
        chunked_edges = layerwise_edges
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose float32 or float64")
    device = str(resolve_device(device))  # cpu, cuda, cuda:K, auto; a GPU that is not there is refused
    if min_distance is not None and not min_distance >= 0.0:
        raise ValueError(f"min_distance must be a distance >= 0 (Angstrom), got {min_distance}")
    check_writable(path)
    torch_dtype = DTYPES[dtype]
    if edge_chunk < 1:
        raise ValueError(f"edge_chunk must be a positive number of edges per chunk, got {edge_chunk}")
    compiled = format_of(path, fmt) == "aoti"
    if compiled:
        from .aoti import compile_package

        metadata = metadata_of(model, torch_dtype, device, min_distance)
    model = clone_model(model).to(device=device, dtype=torch_dtype).eval()  # the caller's model is not changed
    # inference needs gradients with respect to edge vectors only: frozen weights let autograd
    # keep far fewer intermediates (about 3x less peak memory for an energy+forces call)
    for p in model.parameters():
        p.requires_grad_(False)
    if chunked_edges is None:
        chunked_edges = int(SINGLE_PASS_MEMORY / graph_bytes_per_edge(model, torch_dtype, device))
    if compiled:
        return compile_package(model, path, torch_dtype, device, metadata, int(chunked_edges), edge_chunk)
    engine = EquiformerEngineModel(model, -1, edge_chunk)
    scripted = torch.jit.script(engine)
    species, edge_index, vectors = probe_inputs(model, torch_dtype, device)
    n = int(species.shape[0])
    ref = engine(species, edge_index, vectors, n)
    tol = PROBE_TOLERANCE[torch_dtype]
    # both routes of the scripted forward must reproduce the eager model (the chunked one with
    # several chunks)
    for route, threshold in (("single-pass", -1), ("chunked", 0)):
        scripted.chunked_edges = threshold
        scripted.schedule.edge_chunk = max(1, int(edge_index.shape[1]) // 3)
        with legacy_executor():  # as the engines call it (half the compilation time)
            got = scripted(species, edge_index, vectors, n)
        scripted.schedule.edge_chunk = edge_chunk
        for key in ("energy", "forces", "virial"):
            scale = max(1.0, float(ref[key].abs().max()))
            err = float((ref[key] - got[key]).abs().max())
            if not err <= tol * scale:
                raise RuntimeError(f"the scripted model's {key} ({route}) differs from the eager model's by {err:.3g} "
                                   f"(tolerance {tol * scale:.3g}); nothing was written")
    scripted.chunked_edges = int(chunked_edges)
    metadata = metadata_of(model, torch_dtype, device, min_distance)
    save_engine_model(scripted, path, metadata)
    return metadata_files(metadata)


def load_any(path: str, recipe: Optional[str] = None) -> Equiformer:
    """A model from this package's checkpoint, or from an official one with its recipe."""
    if recipe is not None:
        from .official import load_official

        return load_official(path, recipe)
    from ..train.checkpoint import model_from_checkpoint

    return model_from_checkpoint(path)
