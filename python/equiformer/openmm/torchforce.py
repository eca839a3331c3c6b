"""TorchForce route: the exported model inside an `openmmtorch.TorchForce`.

`EquiformerOpenMMModule` is a TorchScript module with the openmm-torch calling convention,
``forward(positions [N_all, 3] nm, box [3, 3] nm (periodic only)) -> (energy kJ/mol,
forces kJ/mol/nm [N_all, 3])``. It embeds the exported model as a submodule (the file is
loaded, not rebuilt, so any model that follows docs/model-format.md works), selects the ML
atoms, converts units, builds the neighbor list in TorchScript
(`equiformer.openmm.neighbors`) and returns the model's own forces (`setOutputsForces(True)`),
which avoids a second autograd pass through the network: the exported forward already ran
its backward pass to produce `forces`, and its `energy` is detached.

With ``outputs_forces=False`` the module returns only an energy whose gradient with respect
to the positions is minus the model's forces (a first-order surrogate), for tools that need
an energy-only TorchForce; it costs the same.
"""

import json
import os
import warnings
from typing import Optional, Sequence, Tuple

import torch

from equiformer.files import check_archive
from equiformer.host_memory import keep_freed_memory
from equiformer.openmm.common import ModelSetup, import_openmmtorch, prepare
from equiformer.openmm.neighbors import box_widths, cell_list_edges, open_edges

#: extra file in a saved TorchForce module describing how it was built
OPENMM_META_KEY = "equiformer_openmm"


def fixed(x: float) -> str:
    """x with five decimals (TorchScript's str() of a float prints 17 digits)."""
    n = int(round(abs(x) * 100000.0))
    return ("-" if x < 0 else "") + str(n // 100000) + "." + str(100000 + n % 100000)[1:]


class EquiformerOpenMMModule(torch.nn.Module):
    """positions (nm) [+ box (nm)] -> (energy kJ/mol, forces kJ/mol/nm), for openmm-torch."""

    def __init__(self, model: torch.nn.Module, setup: ModelSetup, all_pairs_max_atoms: int = 256):
        super().__init__()
        self.model = model
        # where the model was read from: the deviation reporter evaluates a committee from it
        self.model_path = str(setup.model_path)
        self.num_particles = int(setup.num_particles)
        self.num_ml = int(setup.num_ml_atoms)
        self.subset = setup.atoms is not None
        atoms = setup.atoms if setup.atoms is not None else list(range(setup.num_particles))
        self.register_buffer("atoms", torch.tensor(atoms, dtype=torch.long))
        self.register_buffer("species", torch.tensor(setup.species, dtype=torch.long))
        self.periodic = bool(setup.periodic)
        self.cutoff = float(setup.info.cutoff)          # model length unit
        self.nm_to_model = float(setup.nm_to_model)
        self.energy_to_kj = float(setup.energy_to_kj)
        self.force_to_kj_nm = float(setup.force_to_kj_nm)
        self.energy_offset = float(setup.info.energy_offset)
        self.all_pairs_max_atoms = int(all_pairs_max_atoms)
        self.model_dtype = setup.torch_dtype
        self.min_distance = float(setup.info.min_distance)
        self.warned_close = False

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        # Every check that raises stays in this method's own body: openmm-torch freezes the
        # module, and libtorch 2.9 then crashes (SIGSEGV while formatting the error) on an
        # exception raised inside an inlined method or function call
        if positions.shape[0] != self.num_particles:
            raise RuntimeError("equiformer: the TorchForce was built for " + str(self.num_particles)
                               + " particles but the System has " + str(positions.shape[0]))
        if self.periodic and box is None:
            raise RuntimeError("equiformer: this TorchForce is periodic but received no box vectors "
                               "(call setUsesPeriodicBoundaryConditions(True) on it)")
        # openmm-torch hands over positions that require grad and freezes the module, and
        # torch.jit.freeze deletes aten::detach: cut the graph with no_grad blocks instead
        with torch.no_grad():
            pos = positions.to(torch.float64)
            if self.subset:
                pos = pos.index_select(0, self.atoms)
            pos = pos * self.nm_to_model
            if box is not None and self.periodic:
                b = box.to(torch.float64) * self.nm_to_model
                width = float(box_widths(b).min().item())
                if not width >= self.cutoff:
                    raise RuntimeError("equiformer: periodic box too small for the model: a width of the box is "
                                       + fixed(width / self.nm_to_model) + " nm, smaller than the model cutoff "
                                       + fixed(self.cutoff / self.nm_to_model) + " nm; every width of the box must "
                                       "be >= the cutoff (set the System's or Context's periodic box vectors, or "
                                       "use more replicas)")
                edge_index, edge_vectors = cell_list_edges(pos, b, self.cutoff)
            else:
                edge_index, edge_vectors = open_edges(pos, self.cutoff, self.all_pairs_max_atoms)
            if not self.warned_close and edge_vectors.shape[0] > 0:
                closest = float(torch.linalg.vector_norm(edge_vectors, dim=1).min().item())
                if closest < self.min_distance:
                    self.warned_close = True  # once per Context (a mutated attribute survives freezing)
                    warnings.warn("equiformer: two atoms are " + fixed(closest / self.nm_to_model)
                                  + " nm apart, closer than the " + fixed(self.min_distance / self.nm_to_model)
                                  + " nm the model is meant for: it has no repulsion there and its energy is not "
                                  "physical; reported once")
            edge_vectors = edge_vectors.to(self.model_dtype)
        out = self.model(self.species, edge_index, edge_vectors, self.num_ml)
        with torch.no_grad():
            energy = (out["energy"].to(torch.float64) + self.energy_offset) * self.energy_to_kj
            forces = out["forces"].to(torch.float64) * self.force_to_kj_nm
            if self.subset:
                full = torch.zeros((self.num_particles, 3), dtype=torch.float64, device=forces.device)
                forces = full.index_copy(0, self.atoms, forces)
        return energy, forces


class EquiformerOpenMMEnergyModule(torch.nn.Module):
    """Energy-only wrapper (for TorchForce with outputsForces=False): the returned energy has
    the model's value and the gradient -forces with respect to `positions`."""

    def __init__(self, core: EquiformerOpenMMModule):
        super().__init__()
        self.core = core

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        energy, forces = self.core(positions, box)
        work = (forces.to(positions.dtype) * positions).sum()
        with torch.no_grad():  # a graph-free copy (detach() would be removed by torch.jit.freeze)
            frozen_work = work * 1.0
        # value: energy exactly (w0 - w == 0); gradient with respect to positions: -forces
        return energy + (frozen_work - work).to(energy.dtype)


def build_module(model_path: str, setup: ModelSetup, outputs_forces: bool = True,
                 all_pairs_max_atoms: int = 256) -> torch.jit.ScriptModule:
    """The scripted module for a TorchForce (embedding the exported model file)."""
    from equiformer.export.contract import is_compiled_package

    if is_compiled_package(setup.model_path):
        raise ValueError(f"{setup.model_path} is a compiled .pt2 package; a TorchForce carries TorchScript only: use "
                         "the native EquiformerForce (equiformer.openmm.native, openmm-ml implementation='native') "
                         "or the PythonForce with it, or export a TorchScript .pt file for the TorchForce")
    model = torch.jit.load(setup.model_path, map_location="cpu")
    core = EquiformerOpenMMModule(model, setup, all_pairs_max_atoms=all_pairs_max_atoms)
    module = core if outputs_forces else EquiformerOpenMMEnergyModule(core)
    return torch.jit.script(module.eval())


def _setup_description(setup: ModelSetup, outputs_forces: bool) -> str:
    info = setup.info
    # the model's metadata as stored, with the entries the routes use parsed (as written since
    # the first saved modules)
    model_metadata = dict(info.metadata, cutoff=info.cutoff, species_symbols=info.species_symbols,
                          atomic_numbers=info.atomic_numbers, energy_offset=info.energy_offset,
                          min_distance=info.min_distance)
    return json.dumps({
        "model_path": setup.model_path,
        "num_particles": setup.num_particles,
        "atoms": setup.atoms,
        "periodic": setup.periodic,
        "outputs_forces": outputs_forces,
        "model_metadata": model_metadata,
    }, sort_keys=True)


def create_torch_force(model: str, topology, atoms: Optional[Sequence[int]] = None, *,
                       periodic: Optional[bool] = None, box_vectors=None, precision: Optional[str] = None,
                       outputs_forces: bool = True, save_path: Optional[str] = None,
                       force_group: Optional[int] = None, cuda_graphs: bool = False,
                       all_pairs_max_atoms: int = 256):
    """An `openmmtorch.TorchForce` computing the exported model's energy and forces.

    model: path of an exported model (`equiformer-export`).
    topology: `openmm.app.Topology`, or one element / atomic number / symbol per particle.
    atoms: particle indices the model applies to (ML/MM); None = all particles.
    periodic: default: periodic when the topology (or `box_vectors`) has a box.
    box_vectors: box to check against the cutoff (default: the topology's).
    precision: None (the model's dtype), 'single' or 'double' (must match the model).
    outputs_forces: return the model's forces to OpenMM (default, one network pass) or an
        energy only that OpenMM differentiates.
    save_path: also write the scripted module there; `TorchForce(save_path)` then rebuilds the
        same force in any OpenMM script (set periodicity and outputsForces as printed by
        `torch_force_settings(save_path)`; `load_torch_force(save_path)` does it for you).
    """
    openmmtorch = import_openmmtorch()
    setup = prepare(model, topology, atoms=atoms, periodic=periodic, box_vectors=box_vectors,
                    precision=precision)
    module = build_module(model, setup, outputs_forces=outputs_forces, all_pairs_max_atoms=all_pairs_max_atoms)
    if save_path is not None:
        save_module(module, save_path, setup, outputs_forces)
    force = new_torch_force(openmmtorch, module)
    force.setUsesPeriodicBoundaryConditions(setup.periodic)
    force.setOutputsForces(bool(outputs_forces))
    if cuda_graphs:
        force.setProperty("useCUDAGraphs", "true")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    force.setName("EquiformerTorchForce")
    return force


def new_torch_force(openmmtorch, module_or_path):
    """openmm-torch's TorchForce; it runs in this process, which then keeps freed host memory
    for the next step, as the other engines (equiformer/host_memory.py)."""
    keep_freed_memory()
    return openmmtorch.TorchForce(module_or_path)


def save_module(module: torch.jit.ScriptModule, path: str, setup: ModelSetup, outputs_forces: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    torch.jit.save(module, path, _extra_files={OPENMM_META_KEY: _setup_description(setup, outputs_forces)})


def torch_force_settings(path: str) -> dict:
    """How a module saved by `create_torch_force(..., save_path=path)` must be wrapped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TorchForce module {path} does not exist")
    check_archive(path, "TorchForce module", "write it again with create_torch_force(..., save_path=...)")
    extra = {OPENMM_META_KEY: ""}
    torch.jit.load(path, map_location="cpu", _extra_files=extra)
    text = extra[OPENMM_META_KEY]
    if not text:
        raise ValueError(f"{path} is not a TorchForce module written by equiformer.openmm.create_torch_force")
    return json.loads(text)


def load_torch_force(path: str):
    """`TorchForce(path)` with the periodicity and outputsForces it was saved with."""
    openmmtorch = import_openmmtorch()
    settings = torch_force_settings(path)
    force = new_torch_force(openmmtorch, os.fspath(path))
    force.setUsesPeriodicBoundaryConditions(bool(settings["periodic"]))
    force.setOutputsForces(bool(settings["outputs_forces"]))
    force.setName("EquiformerTorchForce")
    return force
