"""Model deviation of a committee during an OpenMM simulation (docs/openmm.md, "Committees
and model deviation").

`DeviationReporter` is an ordinary OpenMM reporter (``simulation.reporters.append(...)``).
It finds the Equiformer force in the Simulation's System, whatever route made it (TorchForce,
PythonForce, the native `EquiformerForce`, openmm-ml), and every N steps writes the committee's
model deviation in DeePMD-kit's ``model_devi.out`` layout, in eV and Angstrom whatever the
model's units, with the one definition of the package (`equiformer.committee.deviations`).

The members' outputs come from the step itself when they exist: a PythonForce keeps its last
call's member outputs, and they are used when they belong to the reported positions (another
reporter asked OpenMM for energies or forces at the same step). Otherwise the reporter
evaluates the committee once on the reported positions, in Python, on the model atoms only:
one extra committee evaluation every N steps.
"""

import pickle
from typing import Dict, List, Optional, Tuple

import numpy as np
import openmm
import torch
from openmm import unit

from equiformer.committee import DEVIATION_KEYS, deviations
from equiformer.model_info import ModelInfo
from equiformer.openmm.common import ModelSetup, prepare
from equiformer.openmm.pythonforce import _LIVE, MEMBER_KEYS, EquiformerComputation

#: the column line of DP-GEN's model_devi.out (selection scripts read the columns by position)
HEADER = "#       step" + "".join(f"{key:>19s}" for key in DEVIATION_KEYS)


class ModelDeviationError(RuntimeError):
    """Raised by `DeviationReporter` (out of ``simulation.step``) when the committee's maximum
    force deviation passes ``halt_above``. ``step``, ``max_devi_f`` and ``threshold`` (eV/Angstrom)
    say where; the Simulation's state is that step's configuration."""

    def __init__(self, step: int, max_devi_f: float, threshold: float, file_name: str):
        self.step = step
        self.max_devi_f = max_devi_f
        self.threshold = threshold
        super().__init__(
            f"equiformer: the committee's max force deviation at step {step} is {max_devi_f:.6g} eV/Angstrom, "
            f"above halt_above={threshold:g} eV/Angstrom: the model is outside its training data here, so the "
            f"simulation was stopped (simulation.currentStep == {step}, the Context holds that configuration). "
            f"Label this configuration and those of {file_name} with a high deviation (equiformer-select), add "
            "them to the training data and retrain the committee; or continue with a larger halt_above")


def _unpickled(force) -> object:
    """The callable a PythonForce was made with, as pickled in its XML (a copy)."""
    import xml.etree.ElementTree as ET
    try:
        element = ET.fromstring(openmm.XmlSerializer.serialize(force))
        return pickle.loads(bytes.fromhex(element.get("function", "")))
    except Exception:  # not picklable, or not ours: no Equiformer force either way
        return None


def _torch_module(force):
    """The EquiformerOpenMMModule inside a TorchForce, or None for any other force."""
    try:
        from equiformer.openmm.common import import_openmmtorch
        openmmtorch = import_openmmtorch()
    except ImportError:  # without openmm-torch the System holds no TorchForce
        return None
    if not openmmtorch.TorchForce.isinstance(force):
        return None
    module = openmmtorch.TorchForce.cast(force).getModule()
    if getattr(module, "original_name", "") == "EquiformerOpenMMEnergyModule":
        module = module.core
    if getattr(module, "original_name", "") != "EquiformerOpenMMModule":
        return None
    if not hasattr(module, "model_path"):
        raise ValueError("this TorchForce module was saved by an older equiformer and does not say which model "
                         "file it holds; build it again with create_torch_force")
    return module


def _native_force(force):
    """The EquiformerForce view of FORCE, or None when it is none (or the plugin is absent)."""
    try:
        from equiformer.openmm.native import EquiformerForce
        return EquiformerForce.cast(force)
    except (ImportError, TypeError):
        return None


def _elements(num_particles: int, atoms: Optional[List[int]], numbers: List[int]) -> List[Optional[int]]:
    """One atomic number per System particle (None outside the model's atoms), for `prepare`."""
    out: List[Optional[int]] = [None] * num_particles
    for index, z in zip(range(num_particles) if atoms is None else atoms, numbers):
        out[index] = int(z)
    return out


def equiformer_forces(system: openmm.System) -> List[Tuple[int, str, ModelSetup, str]]:
    """``(force index, route, setup, device)`` of every Equiformer force of SYSTEM; route is
    'pythonforce', 'torchforce' or 'native', device the torch device the route runs on."""
    found = []
    n = system.getNumParticles()
    for index in range(system.getNumForces()):
        force = system.getForce(index)
        if hasattr(openmm, "PythonForce") and isinstance(force, openmm.PythonForce):
            computation = _unpickled(force)
            if isinstance(computation, EquiformerComputation):
                found.append((index, "pythonforce", computation.setup, computation.device))
            continue
        if type(force) is not openmm.Force:  # a class OpenMM's Python layer knows: not a plugin force
            continue
        module = _torch_module(force)
        if module is not None:
            atoms = module.atoms.tolist() if module.subset else None
            known = ModelInfo.read(module.model_path).atomic_numbers
            numbers = [known[s] for s in module.species.tolist()]
            setup = prepare(module.model_path, _elements(n, atoms, numbers), atoms=atoms, periodic=module.periodic)
            found.append((index, "torchforce", setup, "cpu"))
            continue
        native = _native_force(force)
        if native is not None:
            atoms = native.getParticles() or None
            setup = prepare(native.getModelFile(), _elements(n, atoms, native.getAtomicNumbers()), atoms=atoms,
                            periodic=native.usesPeriodicBoundaryConditions())
            found.append((index, "native", setup, native.getDevice()))
    return found


class DeviationReporter:
    """Writes a committee's model deviation every ``reportInterval`` steps (DP-GEN columns).

    file: path (written from the start, or appended to with ``append=True``) or an open text file.
    reportInterval: steps between lines (steps that are multiples of it).
    halt_above: max_devi_f threshold in eV/Angstrom; a larger (or non-finite) value raises
        `ModelDeviationError` from ``simulation.step`` after its line is written.
    force_index: which force of the System is the committee, when it has several Equiformer
        forces (default: the only one).
    device: torch device of the reporter's own committee evaluation (default: the force's, the
        CPU for a TorchForce).

    After each report ``latest`` holds that step's values (`DEVIATION_KEYS`, plus ``sigma_F``,
    the force deviation of each model atom, in the model's atom order) and ``evaluations``
    counts the reports that evaluated the committee themselves (the others reused the
    PythonForce's outputs).
    """

    def __init__(self, file, reportInterval: int, halt_above: Optional[float] = None,
                 force_index: Optional[int] = None, device: Optional[str] = None, append: bool = False):
        if int(reportInterval) < 1:
            raise ValueError(f"reportInterval must be a positive number of steps, got {reportInterval}")
        if halt_above is not None and not float(halt_above) > 0.0:
            raise ValueError(f"halt_above is a max_devi_f threshold in eV/Angstrom and must be positive, "
                             f"got {halt_above}")
        self._interval = int(reportInterval)
        self._halt_above = None if halt_above is None else float(halt_above)
        self._force_index = force_index
        self._device = device
        self._own_file = isinstance(file, str)
        self._out = open(file, "a" if append else "w") if self._own_file else file
        self._file_name = file if self._own_file else getattr(file, "name", "the deviation file")
        # appending to a file that has lines already: its header is there
        self._header_written = append and self._own_file and self._out.tell() > 0
        self._computation = None  # EquiformerComputation of the committee, bound at the first step
        self.latest: Optional[Dict[str, object]] = None
        self.evaluations = 0

    def _bind(self, system: openmm.System) -> None:
        found = equiformer_forces(system)
        if self._force_index is not None:
            found = [f for f in found if f[0] == self._force_index]
            if not found:
                raise ValueError(f"DeviationReporter: force {self._force_index} of the System is not an Equiformer "
                                 "force")
        if not found:
            raise ValueError("DeviationReporter: the System has no Equiformer force (create_torch_force, "
                             "create_python_force, create_native_force or MLPotential('equiformer', ...))")
        if len(found) > 1:
            raise ValueError("DeviationReporter: the System has several Equiformer forces (indices "
                             f"{', '.join(str(f[0]) for f in found)}); choose one with force_index=")
        _, _, setup, device = found[0]
        if setup.committee_size < 2:
            raise ValueError(f"DeviationReporter: {setup.model_path} is a single model, not a committee: model "
                             "deviation needs several members in one file (equiformer-export a.pt b.pt c.pt d.pt "
                             "committee.pt, docs/committees.md)")
        self._computation = EquiformerComputation(setup, device=self._device or device)
        self._computation._warned_close = True  # the force itself warns about close atoms
        info = setup.info
        # model units -> eV and Angstrom, so that a threshold means the same in every engine
        self._energy_to_ev = info.energy_to("eV")
        self._force_to_ev_a = self._energy_to_ev * info.length_from("Angstrom")

    def describeNextReport(self, simulation):
        if self._computation is None:  # before the first step: a wrong setup stops the run at once
            self._bind(simulation.system)
        steps = self._interval - simulation.currentStep % self._interval
        # positions only, unwrapped (as the PythonForce sees them, so its outputs can be reused)
        return (steps, True, False, False, False, False)

    def _members(self, positions: np.ndarray, box: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
        """The members' outputs (model units) at these positions of the model atoms (nm)."""
        setup = self._computation.setup
        for computation in list(_LIVE):
            last = computation.last_members
            if (last is not None and computation.setup == setup and np.array_equal(last[0], positions)
                    and (box is None or np.array_equal(last[1], box))):
                return last[2]
        self.evaluations += 1
        out = self._computation.evaluate(positions, box)
        return {key: out[key].detach().to("cpu", torch.float64).numpy() for key in MEMBER_KEYS}

    def report(self, simulation, state) -> None:
        setup = self._computation.setup
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if setup.atoms is not None:
            positions = positions[setup.atoms]
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) if setup.periodic else None
        members = self._members(np.asarray(positions, dtype=np.float64), box)
        values = deviations(members["member_forces"] * self._force_to_ev_a,
                            members["member_virials"] * self._energy_to_ev,
                            members["member_energies"] * self._energy_to_ev)
        if not self._header_written:
            self._out.write(f"# equiformer committee of {setup.committee_size} ({setup.model_path}) on "
                            f"{setup.num_ml_atoms} atoms: force deviations in eV/Angstrom, virial and energy "
                            "deviations in eV per atom\n")
            self._out.write(HEADER + "\n")
            self._header_written = True
        step = int(simulation.currentStep)
        self._out.write(f"{step:12d}" + "".join(f"{values[key]:19.6e}" for key in DEVIATION_KEYS) + "\n")
        self._out.flush()
        self.latest = values
        if self._halt_above is not None and not values["max_devi_f"] <= self._halt_above:
            raise ModelDeviationError(step, values["max_devi_f"], self._halt_above, self._file_name)

    def close(self) -> None:
        """Close the file (when the reporter opened it)."""
        if self._own_file:
            self._out.close()

    def __del__(self):
        if getattr(self, "_own_file", False):
            self._out.close()
