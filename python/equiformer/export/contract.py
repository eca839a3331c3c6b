"""The engine contract of an exported model (see docs/model-format.md).

`EngineModel` wraps any *atom-energy model* (a module with ``atom_energies(species,
edge_index, edge_vectors) -> Tensor[N] float64``) into the forward that every engine calls,
and `save_engine_model` writes it with its metadata as TorchScript extra files.
"""

import contextlib
import json
import os
import tempfile
import warnings
from typing import Dict, Optional

import torch

from ..files import check_archive
from ..forces import forces_and_virial
from ..host_memory import keep_freed_memory

FORMAT = "equiformer-model"
FORMAT_VERSION = 1

# metadata keys (one TorchScript extra file each)
META_FORMAT = "format"
META_FORMAT_VERSION = "format_version"
META_PACKAGE_VERSION = "package_version"
META_CUTOFF = "cutoff"
META_NUM_LAYERS = "num_layers"
META_INTERACTION_RANGE = "interaction_range"
META_SPECIES_SYMBOLS = "species_symbols"
META_ATOMIC_NUMBERS = "atomic_numbers"
META_LENGTH_UNIT = "length_unit"
META_ENERGY_UNIT = "energy_unit"
META_DTYPE = "dtype"
META_DEVICE = "device"
META_ENERGY_OFFSET = "energy_offset"
META_HYPERPARAMETERS = "hyperparameters"
META_MIN_DISTANCE = "min_distance"  # optional: files written before it mean the default
META_COMMITTEE_SIZE = "committee_size"  # optional: absent in single-model files (committee.py)

META_KEYS = (
    META_FORMAT, META_FORMAT_VERSION, META_PACKAGE_VERSION, META_CUTOFF, META_NUM_LAYERS,
    META_INTERACTION_RANGE, META_SPECIES_SYMBOLS, META_ATOMIC_NUMBERS, META_LENGTH_UNIT,
    META_ENERGY_UNIT, META_DTYPE, META_DEVICE, META_ENERGY_OFFSET, META_HYPERPARAMETERS,
    META_MIN_DISTANCE, META_COMMITTEE_SIZE,
)
OPTIONAL_META_KEYS = (META_MIN_DISTANCE, META_COMMITTEE_SIZE)

# closest approach of two atoms a model is meant for, when its file does not say: engines
# warn (once per run) below it, since the model has no repulsion built in
DEFAULT_MIN_DISTANCE_ANGSTROM = 0.5


class CloseAtomsWarning(UserWarning):
    """Two atoms closer than the model's `min_distance`."""


def warn_close_atoms(closest: float, min_distance: float, unit: str) -> bool:
    """Warn when ``closest`` (the shortest edge) is below ``min_distance``; True if it warned."""
    if not closest < min_distance:
        return False
    warnings.warn(f"equiformer: two atoms are {closest:.4g} {unit} apart, closer than the {min_distance:.4g} {unit} "
                  "the model is meant for: it has no repulsion there and its energy is not physical (atoms "
                  "placed on top of each other? a time step too long?); reported once", CloseAtomsWarning,
                  stacklevel=3)
    return True

LENGTH_UNITS = ("Angstrom", "nm")
ENERGY_UNITS = ("eV", "kcal/mol", "kJ/mol")


def engine_outputs(edge_index: torch.Tensor, edge_vectors: torch.Tensor, grad: torch.Tensor,
                   atom_energies: torch.Tensor, n_local: int) -> Dict[str, torch.Tensor]:
    """The forward's outputs (docs/model-format.md) from the per-atom energies and dE/d(edge vector)."""
    forces, virial, atom_virial = forces_and_virial(edge_index, edge_vectors, grad, atom_energies.shape[0],
                                                    per_atom=True)
    assert atom_virial is not None
    return {"energy": atom_energies[:n_local].sum().detach(), "atom_energies": atom_energies.detach(),
            "forces": forces, "virial": virial[0], "atom_virial": atom_virial}


class EngineModel(torch.nn.Module):
    """Energy, forces and virials of local atoms from an atom-energy model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
    ) -> Dict[str, torch.Tensor]:
        return self.single_pass(species, edge_index, edge_vectors, n_local)

    def single_pass(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_local: int
    ) -> Dict[str, torch.Tensor]:
        """Energies, then their gradient by one autograd pass through the whole model."""
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        atom_energies = self.model.atom_energies(species, edge_index, edge_vectors)
        grads = torch.autograd.grad([atom_energies[:n_local].sum()], [edge_vectors], allow_unused=True)
        grad = grads[0]
        if grad is None:  # no edges, or no edge reaches a local atom
            grad = torch.zeros_like(edge_vectors)
        return engine_outputs(edge_index, edge_vectors, grad, atom_energies, n_local)


def metadata_files(metadata: Dict[str, object]) -> Dict[str, str]:
    """Encode metadata as the plain-text extra files of the format."""
    files = {META_FORMAT: FORMAT, META_FORMAT_VERSION: str(FORMAT_VERSION)}
    for key, value in metadata.items():
        if key not in META_KEYS:
            raise ValueError(f"unknown metadata key {key!r}; known keys: {', '.join(META_KEYS)}")
        if isinstance(value, (list, tuple)):
            text = " ".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = json.dumps(value, sort_keys=True)
        else:
            text = str(value)
        files[key] = text
    missing = [k for k in META_KEYS if k not in files and k not in OPTIONAL_META_KEYS]
    if missing:
        raise ValueError(f"metadata is missing {', '.join(missing)}")
    return files


def check_writable(path: str) -> str:
    """The folder ``path`` will be written into, after refusing one that does not exist or is
    not writable (exporters call it first too, so a bad destination fails before the work)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {path}: directory {directory} is not writable")
    return directory


def save_engine_model(module: torch.jit.ScriptModule, path: str, metadata: Dict[str, object]) -> None:
    """Write a scripted engine model atomically: an existing file is replaced only on success."""
    files = metadata_files(metadata)
    directory = check_writable(path)
    tmpdir = tempfile.mkdtemp(prefix=".equiformer-export-", dir=directory)
    tmp = os.path.join(tmpdir, os.path.basename(path))
    try:
        torch.jit.save(module, tmp, _extra_files=files)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        os.rmdir(tmpdir)


def configure_torchscript() -> None:
    """TorchScript's legacy graph executor for the rest of this process (`legacy_executor`'s
    reasons), for benchmarks that time what the C++ runtime runs. Not for the engine routes:
    openmm-torch's energy-only TorchForce module fails under the legacy executor ("backward
    through the graph a second time"), so they use the scoped `legacy_executor`."""
    torch._C._jit_set_profiling_executor(False)
    torch._C._jit_set_profiling_mode(False)


@contextlib.contextmanager
def legacy_executor():
    """TorchScript's legacy graph executor while the block runs, then the previous setting
    back, as the C++ runtime does around its calls. The profiling executor re-optimises during
    a module's first calls (twice the compilation time) and then runs these models 15-25%
    slower than eager PyTorch (measured, torch 2.9, CPU); the legacy one matches eager. A
    module's executor is chosen at its first call, so call our modules inside this block
    every time; TorchScript first called elsewhere (openmm-torch's TorchForce) keeps the
    default."""
    executor = torch._C._jit_set_profiling_executor(False)
    profiling = torch._C._jit_set_profiling_mode(False)
    try:
        yield
    finally:
        torch._C._jit_set_profiling_mode(profiling)
        torch._C._jit_set_profiling_executor(executor)


REEXPORT = "copy it again or re-export it with `equiformer-export CHECKPOINT.pt MODEL.pt`"


def load_engine_model(path: str, map_location="cpu"):
    """An exported model, loaded for running as the C++ runtime runs it (see
    configure_torchscript; a .pt2 package is not TorchScript and needs no setting)."""
    check_archive(path, "model file", REEXPORT)
    if not is_compiled_package(path):
        configure_torchscript()
    return open_engine_model(path, map_location)


def is_compiled_package(path: str) -> bool:
    from .aoti import is_package

    return is_package(path)


def open_engine_model(path: str, device="cpu", metadata: Optional[Dict[str, str]] = None):
    """The engine contract's callable of an exported file, TorchScript (.pt) or compiled
    package (.pt2): ``model(species, edge_index, edge_vectors, n_local) -> dict``. Python
    routes call this rather than torch.jit.load so that either file works everywhere;
    ``metadata``: the file's entries when the caller has read them (ModelInfo.metadata);
    ``device``: cpu, cuda, cuda:K, auto or a torch.device (equiformer.device.resolve_device)."""
    from ..device import resolve_device

    device = resolve_device(device)
    keep_freed_memory()  # every call then reuses the memory of the last (host_memory.py)
    if is_compiled_package(path):
        from .aoti import PackageEngineModel

        return PackageEngineModel(path, metadata if metadata is not None else read_metadata(path), str(device))
    return torch.jit.load(path, map_location=device)


def read_metadata(path: str) -> Dict[str, str]:
    """The metadata entries of an exported file, as stored (text); raises a clear error for
    anything else. `equiformer.model_info.ModelInfo.read` parses them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} does not exist")
    check_archive(path, "model file", REEXPORT)
    if is_compiled_package(path):
        from .aoti import package_files

        files = dict({k: "" for k in META_KEYS}, **package_files(path))
        kind = "a .pt2 archive"
    else:
        raw: Dict[str, object] = {k: "" for k in META_KEYS}
        try:
            torch.jit.load(path, map_location="cpu", _extra_files=raw)
        except Exception as exc:  # a checkpoint, a random file, a truncated file
            raise ValueError(
                f"{path} is not an exported Equiformer model (TorchScript load failed: {str(exc).splitlines()[0]}); "
                "create one with `equiformer-export CHECKPOINT.pt MODEL.pt`"
            ) from None
        files = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}
        kind = "a TorchScript file"
    if not files.get(META_COMMITTEE_SIZE):  # a single model: the entry is simply absent
        files.pop(META_COMMITTEE_SIZE, None)
    if files[META_FORMAT] != FORMAT:
        raise ValueError(
            f"{path} is {kind} but not an exported Equiformer model (no '{META_FORMAT}' metadata); "
            "create one with `equiformer-export CHECKPOINT.pt MODEL.pt` (or MODEL.pt2)"
        )
    if files[META_FORMAT_VERSION] != str(FORMAT_VERSION):
        raise ValueError(
            f"{path} has model format version {files[META_FORMAT_VERSION]}, this package reads version "
            f"{FORMAT_VERSION}; re-export it with this package's `equiformer-export`"
        )
    return files
