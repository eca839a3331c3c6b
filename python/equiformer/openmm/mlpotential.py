"""openmm-ml support: ``MLPotential("equiformer", modelPath="MODEL.pt")``.

Registered through the ``openmmml.potentials`` entry point (name ``equiformer``, value
``equiformer.openmm.mlpotential:EquiformerPotentialImplFactory``); openmm-ml imports this
module when `openmmml` itself is imported, so it only imports light modules at the top.

Options (given to `MLPotential(...)` and/or to `createSystem` / `createMixedSystem`, the
latter winning):
    modelPath       exported model (required, to MLPotential)
    implementation  'torchforce' (default) or 'pythonforce'
    precision       None (model dtype), 'single' or 'double'
    outputsForces   TorchForce only: return the model's forces (default True)
    device          PythonForce only: torch device of the model (default 'cpu')
"""

from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

_IMPLEMENTATIONS = ("torchforce", "pythonforce")
# keyword arguments openmm-ml's embeddings pass on to addForces; not ours, not an error
_EMBEDDING_ARGS = ("mlLongRange", "linkAtomDistances", "interpolate", "embedding")


def _check_implementation(implementation):
    key = str(implementation).lower().replace("_", "").replace("-", "")
    if key not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; use 'torchforce' or 'pythonforce'")
    return key


class EquiformerPotentialImplFactory(MLPotentialImplFactory):
    """Creates `EquiformerPotentialImpl` objects for openmm-ml."""

    def createImpl(self, name: str, modelPath=None, implementation: str = "torchforce", precision=None,
                   **args) -> MLPotentialImpl:
        return EquiformerPotentialImpl(name, modelPath, implementation, precision, **args)


class EquiformerPotentialImpl(MLPotentialImpl):
    """An exported Equiformer model as an openmm-ml potential.

    >>> potential = MLPotential("equiformer", modelPath="MODEL.pt")
    >>> system = potential.createSystem(topology)                       # TorchForce
    >>> system = potential.createSystem(topology, implementation="pythonforce")
    >>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)
    """

    def __init__(self, name: str, modelPath, implementation: str = "torchforce", precision=None, **args):
        from equiformer.openmm.common import load_model_metadata, resolve_precision
        if modelPath is None:
            raise ValueError(f"MLPotential({name!r}) needs the exported model: "
                             f"MLPotential({name!r}, modelPath='MODEL.pt')")
        self.name = name
        self.modelPath = str(modelPath)
        self.metadata = load_model_metadata(self.modelPath)  # missing / non-exported file: fails here
        self.implementation = _check_implementation(implementation)
        resolve_precision(precision, self.metadata["dtype"], self.modelPath)
        self.precision = precision
        self.defaults = dict(args)

    def getMLLongRange(self) -> bool:
        # strictly local: interactions end at the cutoff (num_layers * cutoff receptive field)
        return False

    def addForces(self, topology, system, atoms, forceGroup: int, **args):
        import warnings
        from openmm import unit

        options = dict(self.defaults)
        options.update(args)
        implementation = _check_implementation(options.pop("implementation", self.implementation))
        precision = options.pop("precision", self.precision)
        outputs_forces = options.pop("outputsForces", True)
        device = options.pop("device", "cpu")
        num_threads = options.pop("numThreads", None)
        for key in _EMBEDDING_ARGS:
            options.pop(key, None)
        if options:
            warnings.warn(f"equiformer potential: ignoring unknown options {sorted(options)}", stacklevel=3)

        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        box = topology.getPeriodicBoxVectors()
        if periodic and box is None:
            box = system.getDefaultPeriodicBoxVectors()
        if box is not None:
            box = [v.value_in_unit(unit.nanometer) for v in box]
        common = dict(atoms=None if atoms is None else list(atoms), periodic=periodic, box_vectors=box,
                      precision=precision, force_group=forceGroup)
        if implementation == "torchforce":
            from equiformer.openmm.torchforce import create_torch_force
            force = create_torch_force(self.modelPath, topology, outputs_forces=outputs_forces, **common)
        else:
            from equiformer.openmm.pythonforce import create_python_force
            force = create_python_force(self.modelPath, topology, device=device, num_threads=num_threads, **common)
        system.addForce(force)


# --- native route: implementation="native" (the C++ plugin EquiformerForce, docs/openmm-plugin.md)
_IMPLEMENTATIONS = _IMPLEMENTATIONS + ("native",)


def _check_implementation(implementation):  # noqa: F811  (adds 'native' to the choices above)
    key = str(implementation).lower().replace("_", "").replace("-", "")
    if key not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; use 'torchforce', 'pythonforce' or 'native'")
    return key


_addForces_torch_or_python = EquiformerPotentialImpl.addForces


def _addForces(self, topology, system, atoms, forceGroup: int, **args):
    """addForces with the native plugin: options precision, device, numThreads."""
    options = dict(self.defaults)
    options.update(args)
    if _check_implementation(options.get("implementation", self.implementation)) != "native":
        return _addForces_torch_or_python(self, topology, system, atoms, forceGroup, **args)
    import warnings
    from openmm import unit
    from equiformer.openmm.native import create_native_force

    options.pop("implementation", None)
    precision = options.pop("precision", self.precision)
    device = options.pop("device", "cpu")
    num_threads = options.pop("numThreads", None)
    options.pop("outputsForces", None)
    for key in _EMBEDDING_ARGS:
        options.pop(key, None)
    if options:
        warnings.warn(f"equiformer potential: ignoring unknown options {sorted(options)}", stacklevel=3)
    periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
    box = topology.getPeriodicBoxVectors()
    if periodic and box is None:
        box = system.getDefaultPeriodicBoxVectors()
    if box is not None:
        box = [v.value_in_unit(unit.nanometer) for v in box]
    system.addForce(create_native_force(self.modelPath, topology, atoms=None if atoms is None else list(atoms),
                                        periodic=periodic, box_vectors=box, precision=precision, device=device,
                                        num_threads=num_threads, force_group=forceGroup))


EquiformerPotentialImpl.addForces = _addForces
