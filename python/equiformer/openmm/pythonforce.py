"""PythonForce route: `openmm.PythonForce` calling the exported model from Python.

The neighbor list is the package's own (`equiformer.data.neighbors`, vesin: periodic,
triclinic or open boundaries), the model is the exported TorchScript file, nothing else (no
ASE, no openmm-torch). For ML/MM the force
is restricted to the ML atoms with `PythonForce.setParticles`, so OpenMM hands the function
only their positions.

The computation is a picklable object holding the model *path* (the network is loaded
lazily in each process), so a System with this force survives `XmlSerializer` as long as
the model file stays where it was.

With a committee file the computation also keeps its last call's member outputs (and the
positions they belong to), which `equiformer.openmm.deviation.DeviationReporter` uses instead
of evaluating the committee again when the positions match.
"""

import os
import weakref
from typing import Optional, Sequence

import numpy as np

from equiformer.data.neighbors import check_box, neighbor_list
from equiformer.export.contract import REEXPORT, legacy_executor, open_engine_model, warn_close_atoms
from equiformer.files import check_archive
from equiformer.openmm.common import ModelSetup, prepare

#: the outputs a committee file returns besides the mean (docs/model-format.md)
MEMBER_KEYS = ("member_energies", "member_forces", "member_virials")
# every computation alive in this process: OpenMM calls the object the force was made with,
# while the System only hands out a pickled copy, so the deviation reporter finds the live
# one (and its last member outputs) here
_LIVE = weakref.WeakSet()


class EquiformerComputation:
    """The PythonForce callable: State -> (energy kJ/mol, forces kJ/mol/nm [n_ml, 3])."""

    def __init__(self, setup: ModelSetup, device: str = "cpu", num_threads: Optional[int] = None):
        self.setup = setup
        self.device = str(device)  # as asked ('auto' is resolved again in each process)
        self.num_threads = num_threads
        self._device = None  # the torch.device it resolved to (_load)
        self._model = None
        self._species = None
        self._warned_close = False
        # (positions nm, box nm or None, {MEMBER_KEYS: numpy}) of the last call, committees only
        self.last_members = None
        _LIVE.add(self)

    def __getstate__(self):
        return {"setup": self.setup, "device": self.device, "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.__init__(state["setup"], state["device"], state.get("num_threads"))

    def _load(self):
        import torch
        import vesin  # noqa: F401  (the neighbor search needs it: fail when the force is made)

        from equiformer.device import resolve_device
        device = resolve_device(self.device)  # cpu, cuda, cuda:K, auto; a missing GPU is refused here
        if not os.path.isfile(self.setup.model_path):
            raise FileNotFoundError(f"equiformer PythonForce: model file {self.setup.model_path} does not exist")
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        check_archive(self.setup.model_path, "model file", REEXPORT)
        self._model = open_engine_model(self.setup.model_path, device, self.setup.info.metadata)
        self._species = torch.tensor(self.setup.species, dtype=torch.long, device=device)
        self._device = device

    def edges(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray]):
        """Model-unit neighbor list (numpy): edge_index [2,E] (src=j, dst=i), vectors x_j - x_i + shift."""
        s = self.setup
        points = np.asarray(positions_nm, dtype=np.float64) * s.nm_to_model
        box = None
        if s.periodic:
            if box_nm is None:
                raise RuntimeError("equiformer PythonForce: periodic force but the State has no box vectors")
            box = check_box(box_nm, s.cutoff_nm, "nm") * s.nm_to_model
        edge_index, shifts, _ = neighbor_list(points, s.info.cutoff, box, s.periodic)
        return edge_index, points[edge_index[0]] - points[edge_index[1]] + shifts

    def evaluate(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray] = None):
        """The model's output dictionary (torch, model units) for the ML atoms, from arrays in nm."""
        import torch
        if self._model is None:
            self._load()
        s = self.setup
        edge_index, vectors = self.edges(positions_nm, box_nm)
        if not self._warned_close and len(vectors) > 0:
            closest = float(np.sqrt((vectors * vectors).sum(1).min()))
            self._warned_close = warn_close_atoms(closest / s.nm_to_model, s.info.min_distance / s.nm_to_model, "nm")
        ei = torch.from_numpy(edge_index).to(self._device)
        ev = torch.from_numpy(np.ascontiguousarray(vectors)).to(device=self._device, dtype=s.torch_dtype)
        with legacy_executor():
            return self._model(self._species, ei, ev, s.num_ml_atoms)

    def compute_numpy(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray] = None):
        """(energy kJ/mol, forces kJ/mol/nm) for the ML atoms, from plain arrays in nm."""
        import torch
        s = self.setup
        out = self.evaluate(positions_nm, box_nm)
        if s.committee_size > 1:
            self.last_members = (np.array(positions_nm, dtype=np.float64),
                                 None if box_nm is None else np.array(box_nm, dtype=np.float64),
                                 {key: out[key].detach().to("cpu", torch.float64).numpy() for key in MEMBER_KEYS})
        energy = (float(out["energy"]) + s.info.energy_offset) * s.energy_to_kj
        forces = out["forces"].detach().to("cpu", torch.float64).numpy() * s.force_to_kj_nm
        return energy, forces

    def __call__(self, state):
        from openmm import unit
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if positions.shape[0] != self.setup.num_ml_atoms:
            raise RuntimeError(f"equiformer PythonForce: expected {self.setup.num_ml_atoms} particles, "
                               f"got {positions.shape[0]}")
        box = None
        if self.setup.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        return self.compute_numpy(positions, box)


def create_python_force(model: str, topology, atoms: Optional[Sequence[int]] = None, *,
                        periodic: Optional[bool] = None, box_vectors=None, precision: Optional[str] = None,
                        device: str = "cpu", num_threads: Optional[int] = None,
                        force_group: Optional[int] = None):
    """An `openmm.PythonForce` computing the exported model's energy and forces.

    Arguments as `create_torch_force`; `device` is the torch device the model runs on
    ('cpu', 'cuda', 'cuda:K' or 'auto'; docs/gpu.md: a GPU that torch cannot see is refused
    here) and `num_threads` optionally sets torch's CPU threads.
    """
    import openmm
    if not hasattr(openmm, "PythonForce"):
        raise ImportError(f"openmm {openmm.__version__} has no PythonForce (a newer OpenMM is needed); "
                          "use the TorchForce route (create_torch_force)")
    setup = prepare(model, topology, atoms=atoms, periodic=periodic, box_vectors=box_vectors,
                    precision=precision)
    computation = EquiformerComputation(setup, device=device, num_threads=num_threads)
    computation._load()  # fail now (missing vesin, bad device) rather than at the first step
    force = openmm.PythonForce(computation)
    force.setUsesPeriodicBoundaryConditions(setup.periodic)
    if setup.atoms is not None:
        force.setParticles(setup.atoms)
    if force_group is not None:
        force.setForceGroup(int(force_group))
    force.setName("EquiformerPythonForce")
    return force
