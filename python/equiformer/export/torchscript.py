"""Write an Equiformer as the TorchScript engine model of docs/model-format.md."""

from typing import Dict, Optional

import numpy as np
import torch

from .. import __version__
from ..model import Equiformer, clone_model
from .contract import EngineModel, metadata_files, save_engine_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# how closely the scripted model must reproduce the eager one on the probe before writing
PROBE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


class EquiformerEngineModel(EngineModel):
    """The contract's forward plus the layer-by-layer methods used for per-layer exchange."""

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


def metadata_of(model: Equiformer, dtype: torch.dtype, device: str) -> Dict[str, object]:
    hp = model.hparams
    return {
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


def export_model(model: Equiformer, path: str, dtype: str = "float64", device: str = "cpu") -> Dict[str, str]:
    """Script, check against eager on a probe structure, and write atomically. Returns the metadata."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose float32 or float64")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unsupported device {device!r}; choose cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device on this machine; use --device cpu")
    torch_dtype = DTYPES[dtype]
    model = clone_model(model).to(device=device, dtype=torch_dtype).eval()  # the caller's model is not changed
    # inference needs gradients with respect to edge vectors only: frozen weights let autograd
    # keep far fewer intermediates (about 3x less peak memory for an energy+forces call)
    for p in model.parameters():
        p.requires_grad_(False)
    engine = EquiformerEngineModel(model)
    scripted = torch.jit.script(engine)
    species, edge_index, vectors = probe_inputs(model, torch_dtype, device)
    n = int(species.shape[0])
    ref = engine(species, edge_index, vectors, n)
    got = scripted(species, edge_index, vectors, n)
    tol = PROBE_TOLERANCE[torch_dtype]
    for key in ("energy", "forces", "virial"):
        scale = max(1.0, float(ref[key].abs().max()))
        err = float((ref[key] - got[key]).abs().max())
        if not err <= tol * scale:
            raise RuntimeError(f"the scripted model's {key} differs from the eager model's by {err:.3g} "
                               f"(tolerance {tol * scale:.3g}); nothing was written")
    metadata = metadata_of(model, torch_dtype, device)
    save_engine_model(scripted, path, metadata)
    return metadata_files(metadata)


def load_any(path: str, recipe: Optional[str] = None) -> Equiformer:
    """A model from this package's checkpoint, or from an official one with its recipe."""
    if recipe is not None:
        from .official import load_official

        return load_official(path, recipe)
    from ..train.checkpoint import model_from_checkpoint

    return model_from_checkpoint(path)
