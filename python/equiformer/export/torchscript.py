"""Write an Equiformer as the TorchScript engine model of docs/model-format.md."""

from typing import Dict, Optional

import numpy as np
import torch

from .. import __version__
from ..model import Equiformer, clone_model
from ..units import length_factor
from .contract import (DEFAULT_MIN_DISTANCE_ANGSTROM, EngineModel, edge_gradients_to_outputs, metadata_files,
                       save_engine_model)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# how closely the scripted model must reproduce the eager one on the probe before writing
PROBE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


# default memory for one autograd pass over all layers; beyond it the engine takes the chunked route
SINGLE_PASS_MEMORY = 2 * 1024 ** 3


class EquiformerEngineModel(EngineModel):
    """The contract's forward plus the layer-by-layer methods used for per-layer exchange.

    Graphs with more than ``layerwise_edges`` edges take the model's chunked gradient
    (`Equiformer.energies_and_gradient`): the same numbers with memory that grows with the
    atoms only, for about one extra forward pass of the attention. -1: never.
    """

    def __init__(self, model: Equiformer, layerwise_edges: int = -1):
        super().__init__(model)
        self.layerwise_edges = int(layerwise_edges)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        if self.layerwise_edges < 0 or edge_vectors.shape[0] <= self.layerwise_edges:
            return self.single_pass(species, edge_index, edge_vectors, n_local)
        atom_energies, grad = self.model.energies_and_gradient(species, edge_index, edge_vectors, n_local)
        out = edge_gradients_to_outputs(edge_index, edge_vectors, grad, species.shape[0])
        out["energy"] = atom_energies[:n_local].sum()
        out["atom_energies"] = atom_energies
        return out

    @torch.jit.export
    def embed(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.model.embed(species, edge_index, edge_vectors)

    @torch.jit.export
    def block(self, k: int, x: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.model.block(k, x, edge_index, edge_vectors)

    @torch.jit.export
    def readout(self, species: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        return self.model.readout(species, x, edge_index, edge_vectors)


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
    pos = torch.tensor(rng.uniform(0, 2.0 * spacing, size=(n, 3)), dtype=torch.float64)
    species = torch.arange(n) % len(model.species_symbols)
    d = torch.cdist(pos, pos)
    centre, neighbour = torch.nonzero((d < model.cutoff) & (d > 0), as_tuple=True)
    edge_index = torch.stack([neighbour, centre])
    vectors = (pos[neighbour] - pos[centre]).to(dtype)
    return species.to(device), edge_index.to(device), vectors.to(device)


def random_cluster(model: Equiformer, n: int, dtype: torch.dtype, device: str):
    """n atoms at condensed-matter density (about 30 neighbours within a 5 A cutoff)."""
    rng = np.random.default_rng(n)
    side = (n * 12.0) ** (1.0 / 3.0) * model.cutoff / 5.0
    pos = torch.tensor(rng.uniform(0, side, size=(n, 3)), dtype=torch.float64)
    d = torch.cdist(pos, pos)
    centre, neighbour = torch.nonzero((d < model.cutoff) & (d > 0), as_tuple=True)
    species = torch.arange(n) % len(model.species_symbols)
    vectors = (pos[neighbour] - pos[centre]).to(dtype)
    return species.to(device), torch.stack([neighbour, centre]).to(device), vectors.to(device)


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


def export_model(model: Equiformer, path: str, dtype: str = "float64", device: str = "cpu",
                 layerwise_edges: Optional[int] = None, min_distance: Optional[float] = None) -> Dict[str, str]:
    """Script, check against eager on a probe structure, and write atomically. Returns the metadata.

    ``layerwise_edges``: graphs with more edges take the chunked route (see
    EquiformerEngineModel); default: where one autograd pass would keep more than
    SINGLE_PASS_MEMORY bytes; -1: never. ``min_distance`` (Angstrom): engines warn once per
    run when two atoms come closer (default 0.5)."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose float32 or float64")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unsupported device {device!r}; choose cpu or cuda")
    if min_distance is not None and not min_distance >= 0.0:
        raise ValueError(f"min_distance must be a distance >= 0 (Angstrom), got {min_distance}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device on this machine; use --device cpu")
    torch_dtype = DTYPES[dtype]
    model = clone_model(model).to(device=device, dtype=torch_dtype).eval()  # the caller's model is not changed
    # inference needs gradients with respect to edge vectors only: frozen weights let autograd
    # keep far fewer intermediates (about 3x less peak memory for an energy+forces call)
    for p in model.parameters():
        p.requires_grad_(False)
    if layerwise_edges is None:
        layerwise_edges = int(SINGLE_PASS_MEMORY / graph_bytes_per_edge(model, torch_dtype, device))
    engine = EquiformerEngineModel(model)
    scripted = torch.jit.script(engine)
    species, edge_index, vectors = probe_inputs(model, torch_dtype, device)
    n = int(species.shape[0])
    ref = engine(species, edge_index, vectors, n)
    tol = PROBE_TOLERANCE[torch_dtype]
    # both routes of the scripted forward must reproduce the eager model (the chunked one with
    # several chunks)
    chunk = scripted.model.edge_chunk
    for route, threshold in (("single-pass", -1), ("chunked", 0)):
        scripted.layerwise_edges = threshold
        scripted.model.edge_chunk = max(1, int(edge_index.shape[1]) // 3)
        got = scripted(species, edge_index, vectors, n)
        scripted.model.edge_chunk = chunk
        for key in ("energy", "forces", "virial"):
            scale = max(1.0, float(ref[key].abs().max()))
            err = float((ref[key] - got[key]).abs().max())
            if not err <= tol * scale:
                raise RuntimeError(f"the scripted model's {key} ({route}) differs from the eager model's by {err:.3g} "
                                   f"(tolerance {tol * scale:.3g}); nothing was written")
    scripted.layerwise_edges = int(layerwise_edges)
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
