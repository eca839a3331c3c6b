"""openmm-ml support: ``MLPotential("equiformer", modelPath="MODEL.pt")``.

Registered through the ``openmmml.potentials`` entry point (name ``equiformer``, value
``equiformer.openmm.mlpotential:EquiformerPotentialImplFactory``); openmm-ml imports this
module when `openmmml` itself is imported, so it only imports light modules at the top.

Options (given to `MLPotential(...)` and/or to `createSystem` / `createMixedSystem`, the
latter winning):
    modelPath       exported model (required, to MLPotential)
    implementation  'torchforce', 'pythonforce' or 'native' (the C++ plugin); default
                    'torchforce' for a TorchScript .pt file, 'native' for a compiled .pt2
                    (a TorchForce carries TorchScript only)
    precision       None (model dtype), 'single' or 'double'
    outputsForces   TorchForce only: return the model's forces (default True)
    device          PythonForce and native: torch device of the model, 'cpu' (default),
                    'cuda', 'cuda:K' or 'auto' (docs/gpu.md); TorchForce runs on the
                    Context's platform (CUDA platform: its GPU)
    numThreads      PythonForce and native: torch CPU threads
"""

import importlib

from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

# implementation -> (module, function creating the Force, {openmm-ml option: its keyword});
# every function also takes atoms, periodic, box_vectors, precision and force_group
ROUTES = {
    "torchforce": ("equiformer.openmm.torchforce", "create_torch_force", {"outputsForces": "outputs_forces"}),
    "pythonforce": ("equiformer.openmm.pythonforce", "create_python_force",
                    {"device": "device", "numThreads": "num_threads"}),
    "native": ("equiformer.openmm.native", "create_native_force", {"device": "device", "numThreads": "num_threads"}),
}
# options of some routes: the others ignore them, so one set of options works with every route
ROUTE_OPTIONS = {option for _, _, options in ROUTES.values() for option in options}
# keyword arguments openmm-ml's embeddings pass on to addForces; not ours, not an error
_EMBEDDING_ARGS = ("mlLongRange", "linkAtomDistances", "interpolate", "embedding")


def _check_implementation(implementation) -> str:
    key = str(implementation).lower().replace("_", "").replace("-", "")
    if key not in ROUTES:
        raise ValueError(f"unknown implementation {implementation!r}; use one of {', '.join(map(repr, ROUTES))}")
    return key


class EquiformerPotentialImplFactory(MLPotentialImplFactory):
    """Creates `EquiformerPotentialImpl` objects for openmm-ml."""

    def createImpl(self, name: str, modelPath=None, implementation=None, precision=None,
                   **args) -> MLPotentialImpl:
        return EquiformerPotentialImpl(name, modelPath, implementation, precision, **args)


class EquiformerPotentialImpl(MLPotentialImpl):
    """An exported Equiformer model as an openmm-ml potential.

    >>> potential = MLPotential("equiformer", modelPath="MODEL.pt")
    >>> system = potential.createSystem(topology)                       # TorchForce
    >>> system = potential.createSystem(topology, implementation="pythonforce")
    >>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)
    """

    def __init__(self, name: str, modelPath, implementation=None, precision=None, **args):
        from equiformer.model_info import ModelInfo
        from equiformer.openmm.common import resolve_precision
        if modelPath is None:
            raise ValueError(f"MLPotential({name!r}) needs the exported model: "
                             f"MLPotential({name!r}, modelPath='MODEL.pt')")
        self.name = name
        self.modelPath = str(modelPath)
        self.info = ModelInfo.read(self.modelPath)  # missing / damaged / non-exported file: fails here
        if implementation is None:
            from equiformer.export.contract import is_compiled_package
            implementation = "native" if is_compiled_package(self.modelPath) else "torchforce"
        self.implementation = _check_implementation(implementation)
        resolve_precision(precision, self.info.dtype, self.modelPath)
        self.precision = precision
        self.defaults = dict(args)

    def getMLLongRange(self) -> bool:
        # strictly local: the receptive field is the metadata interaction_range (a few cutoffs)
        return False

    def addForces(self, topology, system, atoms, forceGroup: int, **args):
        import warnings
        from openmm import unit

        options = dict(self.defaults)
        options.update(args)
        implementation = _check_implementation(options.pop("implementation", self.implementation))
        module, function, route_options = ROUTES[implementation]
        keywords = {route_options[key]: options.pop(key) for key in list(options) if key in route_options}
        for key in ROUTE_OPTIONS.union(_EMBEDDING_ARGS):
            options.pop(key, None)
        precision = options.pop("precision", self.precision)
        if options:
            warnings.warn(f"equiformer potential: ignoring unknown options {sorted(options)}", stacklevel=3)

        # periodic as the System (a mixed system's MM part) or the Topology say; the box is the
        # Topology's, else the System's default one
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        box = topology.getPeriodicBoxVectors()
        if periodic and box is None:
            box = system.getDefaultPeriodicBoxVectors()
        if box is not None:
            box = [v.value_in_unit(unit.nanometer) for v in box]
        create = getattr(importlib.import_module(module), function)
        system.addForce(create(self.modelPath, topology, atoms=None if atoms is None else list(atoms),
                               periodic=periodic, box_vectors=box, precision=precision, force_group=forceGroup,
                               **keywords))
