"""Shared species / unit layer of the OpenMM routes.

Everything the routes (TorchForce, PythonForce, the native plugin) need to know about an
exported model and the atoms it is applied to, resolved once in Python *before* a Context
exists, so that bad input fails here with a clear message and never in the middle of a
simulation:

- the model's metadata (`equiformer.model_info.ModelInfo`, read and checked once);
- the species index of every ML atom (matched by atomic number against the model's
  `atomic_numbers`), for a whole `Topology` or an `atoms` subset of it (ML/MM);
- unit conversions (`equiformer.units`): OpenMM works in nm and kJ/mol, the model in its
  `length_unit` and `energy_unit`;
- the model dtype and the requested precision;
- the periodic box, checked against the cutoff (`equiformer.data.neighbors.check_box`).
"""

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from equiformer.data import neighbors
from equiformer.model_info import ModelInfo

_PRECISIONS = {
    None: None, "model": None,
    "single": "float32", "float32": "float32", "float": "float32",
    "double": "float64", "float64": "float64",
}


@dataclass
class ModelSetup:
    """An exported model bound to a set of atoms, with every conversion resolved.

    Picklable (plain Python values only), so PythonForce computations and the openmm-ml
    implementation can carry it around.
    """

    info: ModelInfo
    model_path: str               # absolute: where the model was found when the force was made
    dtype: str                    # 'float32' | 'float64'
    num_particles: int            # particles of the whole OpenMM System
    atoms: Optional[List[int]]    # ML atoms (indices into the System); None = all
    species: List[int]            # species index of every ML atom, in `atoms` order
    periodic: bool

    @property
    def nm_to_model(self) -> float:
        return self.info.length_from("nm")

    @property
    def energy_to_kj(self) -> float:
        return self.info.energy_to("kJ/mol")

    @property
    def force_to_kj_nm(self) -> float:
        """(model energy / model length) -> kJ/mol/nm"""
        return self.energy_to_kj * self.nm_to_model

    @property
    def cutoff_nm(self) -> float:
        return self.info.cutoff / self.nm_to_model

    @property
    def committee_size(self) -> int:
        """Members in the file (1: a single model)."""
        return self.info.committee_size

    @property
    def num_ml_atoms(self) -> int:
        return len(self.species)

    @property
    def torch_dtype(self):
        import torch
        return getattr(torch, self.dtype)


def resolve_precision(precision: Optional[str], model_dtype: str, model_path: str = "") -> str:
    """The dtype to run in. The exported model is traced/scripted in one dtype; asking for the
    other one is refused (re-export instead) rather than silently casting the network."""
    key = precision.lower() if isinstance(precision, str) else precision
    if key not in _PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; use None (the model's own dtype), 'single' or 'double'"
        )
    wanted = _PRECISIONS[key]
    if wanted is not None and wanted != model_dtype:
        have = "single" if model_dtype == "float32" else "double"
        raise ValueError(
            f"precision={precision!r} was requested but the model {model_path} was exported in {model_dtype} "
            f"({have} precision); use precision=None or {have!r}, or re-export the model in {wanted}"
        )
    return model_dtype


def _atom_descriptions(topology_or_elements):
    """(atomic number or None, description) for every particle."""
    try:
        from openmm.app import Topology
    except ImportError:  # pragma: no cover - openmm is a dependency of this subpackage
        Topology = ()
    if isinstance(topology_or_elements, Topology):
        out = []
        for atom in topology_or_elements.atoms():
            desc = f"atom {atom.index} ({atom.name}, residue {atom.residue.name} {atom.residue.id})"
            out.append((None if atom.element is None else atom.element.atomic_number, desc))
        return out
    out = []
    for index, item in enumerate(topology_or_elements):
        if item is None:
            z = None
        elif hasattr(item, "atomic_number"):  # openmm.app.Element
            z = item.atomic_number
        elif isinstance(item, (int, np.integer)):
            z = int(item)
        elif isinstance(item, str):
            from openmm.app import Element
            try:
                z = Element.getBySymbol(item).atomic_number
            except KeyError:
                raise ValueError(f"atom {index}: unknown chemical symbol {item!r}") from None
        else:
            raise TypeError(f"atom {index}: expected an openmm Element, atomic number or symbol, got {item!r}")
        out.append((z, f"atom {index}"))
    return out


def check_box(box_nm, cutoff_nm: float) -> None:
    """Refuse a periodic box (nm, or an OpenMM Quantity) narrower than the cutoff (nm) across
    one of its vectors: `equiformer.data.neighbors.check_box`, the check of every route.
    Images of an atom closer than the cutoff are then all found, so widths between 1 and 2
    cutoffs are fine."""
    neighbors.check_box(_strip_unit(box_nm, "nanometer"), cutoff_nm, "nm")


def _strip_unit(value, unit_name: str):
    if hasattr(value, "value_in_unit"):
        from openmm import unit
        return value.value_in_unit(getattr(unit, unit_name))
    if isinstance(value, (list, tuple)) and value and hasattr(value[0], "value_in_unit"):
        from openmm import unit
        return [v.value_in_unit(getattr(unit, unit_name)) for v in value]
    return value


def prepare(model_path: str, topology_or_elements, atoms: Optional[Sequence[int]] = None,
            periodic: Optional[bool] = None, box_vectors=None, precision: Optional[str] = None) -> ModelSetup:
    """Bind an exported model to atoms.

    topology_or_elements: an `openmm.app.Topology`, or one entry per particle of the System
        (openmm `Element`, atomic number or chemical symbol).
    atoms: indices of the particles the model is applied to (ML/MM); None = all.
    periodic: None = periodic when the topology has box vectors or `box_vectors` is given.
    box_vectors: the box (nm, or a Quantity) to check against the cutoff; defaults to the
        topology's box.
    precision: None (model dtype), 'single' or 'double'; must match the model's dtype.
    """
    info = ModelInfo.read(model_path)
    dtype = resolve_precision(precision, info.dtype, model_path)
    described = _atom_descriptions(topology_or_elements)
    num_particles = len(described)
    if atoms is not None:
        atoms = [int(a) for a in atoms]
        if len(atoms) == 0:
            raise ValueError("atoms is empty: give at least one particle for the model")
        if len(set(atoms)) != len(atoms):
            raise ValueError("atoms contains duplicate indices")
        bad = [a for a in atoms if a < 0 or a >= num_particles]
        if bad:
            raise ValueError(f"atoms contains indices outside 0..{num_particles - 1}: {bad[:10]}")
        if atoms == list(range(num_particles)):
            atoms = None
    indices = range(num_particles) if atoms is None else atoms
    if num_particles == 0:
        raise ValueError("the topology has no atoms")
    species = info.species_of_elements([described[a] for a in indices])
    if box_vectors is None and hasattr(topology_or_elements, "getPeriodicBoxVectors"):
        box_vectors = topology_or_elements.getPeriodicBoxVectors()
    if periodic is None:
        periodic = box_vectors is not None
    setup = ModelSetup(info=info, model_path=os.path.abspath(info.path), dtype=dtype, num_particles=num_particles,
                       atoms=atoms, species=species, periodic=bool(periodic))
    if periodic and box_vectors is not None:
        check_box(box_vectors, setup.cutoff_nm)
    return setup


def import_openmmtorch():
    """openmmtorch, with torch imported first (the wheel's CUDA libraries, e.g. libnvrtc, are
    found through torch's own loading of them)."""
    import logging
    import torch  # noqa: F401  (must precede openmmtorch)

    class _DropSimtkWarning(logging.Filter):  # openmmtorch imports the deprecated simtk.openmm
        def filter(self, record):
            return "simtk.openmm" not in str(record.msg)

    root = logging.getLogger()
    drop = _DropSimtkWarning()
    root.addFilter(drop)
    try:
        import openmmtorch
    except ImportError as exc:
        raise ImportError(
            f"the TorchForce route needs openmm-torch (pip install openmmtorch / conda install -c conda-forge "
            f"openmm-torch): {exc}"
        ) from None
    finally:
        root.removeFilter(drop)
    _reload_torch_plugins()
    return openmmtorch


_RELOADED_PLUGINS = set()


def _reload_torch_plugins() -> None:
    """If `openmm` was imported before `torch`, OpenMM failed to load the openmm-torch kernel
    plugins (their CUDA dependencies, e.g. libnvrtc, are only findable once torch is loaded),
    and a Context would report "does not support all required kernels". Load them again now."""
    import openmm
    for message in openmm.Platform.getPluginLoadFailures():
        if "OpenMMTorch" not in message or not message.startswith("Error loading library "):
            continue
        path = message[len("Error loading library "):].split(": ")[0]
        if path in _RELOADED_PLUGINS or not os.path.isfile(path):
            continue
        _RELOADED_PLUGINS.add(path)
        try:
            openmm.Platform.loadPluginLibrary(path)
        except Exception:  # e.g. the OpenCL plugin without an OpenCL driver
            pass
