"""OpenMM routes for exported Equiformer models (see docs/openmm.md).

- `create_torch_force(model, topology, atoms=None, ...)`: an `openmmtorch.TorchForce`
  (neighbor search inside TorchScript; runs on every openmm-torch platform).
- `create_python_force(model, topology, atoms=None, ...)`: an `openmm.PythonForce`
  (vesin neighbor list, model called from Python).
- `create_native_force(model, topology, atoms=None, ...)`: the C++ plugin's `EquiformerForce`
  (cell list and model in C++, docs/openmm-plugin.md).
- `load_torch_force(path)`: a TorchForce from a module saved with `save_path=`.
- `DeviationReporter(file, N, halt_above=None)`: a committee file's model deviation every N
  steps, for any of these routes (`ModelDeviationError` above the threshold).
- openmm-ml: ``MLPotential("equiformer", modelPath="MODEL.pt", implementation=...)`` (entry
  point ``openmmml.potentials``, `equiformer.openmm.mlpotential`).

Attributes are imported lazily so that importing this package (which openmm-ml does for
every registered potential) stays cheap.
"""

# openmm-ml loads its entry points (ours included) at the end of importing
# openmmml.mlpotential. Import it before anything can import our `mlpotential` submodule,
# so that the module openmm-ml loads is never a half-initialised one.
try:  # pragma: no cover - depends on what is installed
    import openmmml.mlpotential  # noqa: F401
except ImportError:
    pass

_EXPORTS = {
    "create_torch_force": "equiformer.openmm.torchforce",
    "load_torch_force": "equiformer.openmm.torchforce",
    "torch_force_settings": "equiformer.openmm.torchforce",
    "EquiformerOpenMMModule": "equiformer.openmm.torchforce",
    "create_python_force": "equiformer.openmm.pythonforce",
    "EquiformerComputation": "equiformer.openmm.pythonforce",
    # the native route: the C++ plugin library is loaded into OpenMM when first used
    "EquiformerForce": "equiformer.openmm.native",
    "create_native_force": "equiformer.openmm.native",
    "load_plugin": "equiformer.openmm.native",
    "DeviationReporter": "equiformer.openmm.deviation",
    "ModelDeviationError": "equiformer.openmm.deviation",
    "prepare": "equiformer.openmm.common",
    "ModelSetup": "equiformer.openmm.common",
    "check_box": "equiformer.openmm.common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'equiformer.openmm' has no attribute {name!r}")
