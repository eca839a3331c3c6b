"""OpenMM routes for exported Equiformer models (see docs/openmm.md).

- `create_torch_force(model, topology, atoms=None, ...)`: an `openmmtorch.TorchForce`
  (neighbor search inside TorchScript; runs on every openmm-torch platform).
- `create_python_force(model, topology, atoms=None, ...)`: an `openmm.PythonForce`
  (vesin neighbor list, model called from Python).
- `load_torch_force(path)`: a TorchForce from a module saved with `save_path=`.
- openmm-ml: ``MLPotential("equiformer", modelPath="MODEL.pt")`` (entry point
  ``openmmml.potentials``, `equiformer.openmm.mlpotential`).

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
    "prepare": "equiformer.openmm.common",
    "ModelSetup": "equiformer.openmm.common",
    "check_box": "equiformer.openmm.common",
    "ENERGY_TO_KJ_PER_MOL": "equiformer.openmm.common",
    "NM_TO_MODEL_LENGTH": "equiformer.openmm.common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'equiformer.openmm' has no attribute {name!r}")

# Native route: the C++ plugin EquiformerForce (openmm_plugin/, docs/openmm-plugin.md).
# `from equiformer.openmm import EquiformerForce` loads the plugin library into OpenMM.
_EXPORTS.update({
    "EquiformerForce": "equiformer.openmm.native",
    "create_native_force": "equiformer.openmm.native",
    "load_plugin": "equiformer.openmm.native",
})
__all__ = sorted(_EXPORTS)
