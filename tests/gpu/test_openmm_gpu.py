"""OpenMM on the device under test against the Reference platform (the CPU): the native
EquiformerForce on the CUDA platform (the plugin's CUDA kernel) and on Reference with its
network on the device (setDevice), the openmm-torch TorchForce on the CUDA platform; float64
at 1e-10 relative (energy, forces), and a short NVE run on the device whose total energy
stays as flat as on the CPU. In the CPU dry run the device's platform is OpenMM's CPU one.
The PythonForce route is in test_python_routes_gpu.py."""

from pathlib import Path

import numpy as np
import pytest

from gpu_helpers import TOL, assert_parity, molecule, openmm_evaluate, openmm_nve, platform_for, platform_or_skip, \
    system_with, topology, triclinic_cell

pytestmark = [pytest.mark.gpu, pytest.mark.openmm]

openmm = pytest.importorskip("openmm")
CUDA_LIBRARY = "libEquiformerOpenMMCUDA.so"


def _native():
    try:
        from equiformer.openmm import native

        native.load_plugin()
    except ImportError as exc:
        pytest.skip(f"native OpenMM plugin not available: {exc}")
    return native


def native_platform(device: str) -> str:
    """The platform the native force runs on for the device under test, or a skip naming what
    is missing (the CUDA kernel is a library of its own beside the main one)."""
    native = _native()
    name = platform_for(device)
    if name == "CUDA":
        status = getattr(native, "cuda_plugin_status", None)
        if status is not None:
            available, detail = status()
            if not available:
                pytest.skip(f"the EquiformerForce CUDA kernel is not available: {detail}")
        else:
            library = Path(native.load_plugin()).with_name(CUDA_LIBRARY)
            if not library.is_file():
                pytest.skip(f"{library} is not built (the CUDA platform kernel of the native plugin)")
            platform_or_skip("CUDA")
            if not openmm.Platform.getPlatformByName("CUDA").supportsKernels([native.KERNEL_NAME]):
                openmm.Platform.loadPluginLibrary(str(library))
    platform = platform_or_skip(name)
    assert platform.supportsKernels([native.KERNEL_NAME]), f"the {name} platform has no EquiformerForce kernel"
    return name


def _structures():
    symbols, positions, cell = triclinic_cell(n=32)
    mol_symbols, mol_positions = molecule()
    return {"periodic": (symbols, positions / 10.0, cell / 10.0), "molecule": (mol_symbols, mol_positions / 10.0, None)}


STRUCTURES = _structures()


def _native_force(model: str, symbols, box, device: str):
    from equiformer.openmm.native import EquiformerForce

    return EquiformerForce(model, topology(symbols, box), device=device)


@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_native_force_on_the_device_platform(gpu_models, device, kind):
    """EquiformerForce on the CUDA platform (network on the device) vs Reference on the CPU."""
    name = native_platform(device)
    symbols, pos, box = STRUCTURES[kind]
    ref = openmm_evaluate(system_with(_native_force(gpu_models["f64"], symbols, box, "cpu"), symbols, box), pos,
                          "Reference", box)
    got = openmm_evaluate(system_with(_native_force(gpu_models["f64"], symbols, box, device), symbols, box), pos,
                          name, box)
    assert_parity(got[0], ref[0], TOL["float64"], f"native {name} energy")
    assert_parity(got[1], ref[1], TOL["float64"], f"native {name} forces")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_native_force_set_device(gpu_models, device, dtype):
    """The Reference platform's kernel with its network on the device (EquiformerForce.setDevice)."""
    _native()
    symbols, pos, box = STRUCTURES["periodic"]
    model = gpu_models["f64" if dtype == "float64" else "f32"]
    force = _native_force(model, symbols, box, "cpu")
    ref = openmm_evaluate(system_with(force, symbols, box), pos, "Reference", box)
    force = _native_force(model, symbols, box, "cpu")
    force.setDevice(device)
    assert force.getDevice() == device
    got = openmm_evaluate(system_with(force, symbols, box), pos, "Reference", box)
    assert_parity(got[0], ref[0], TOL[dtype], f"native setDevice {dtype} energy")
    assert_parity(got[1], ref[1], TOL[dtype], f"native setDevice {dtype} forces")


def _torch_force(model: str, symbols, box):
    try:
        from equiformer.openmm.common import import_openmmtorch

        import_openmmtorch()
    except ImportError as exc:
        pytest.skip(f"openmm-torch cannot be imported: {exc}")
    from equiformer.openmm.torchforce import create_torch_force

    return create_torch_force(model, topology(symbols, box), box_vectors=box)


@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_torch_force_on_the_device_platform(gpu_models, device, kind):
    """openmm-torch's TorchForce (the module moves to the Context's device) vs Reference."""
    symbols, pos, box = STRUCTURES[kind]
    force = _torch_force(gpu_models["f64"], symbols, box)
    name = platform_for(device)
    platform = platform_or_skip(name)
    if not platform.supportsKernels(["CalcTorchForce"]):
        pytest.skip(f"openmm-torch has no {name} kernel here (openmm.Platform.getPluginLoadFailures(): "
                    f"{openmm.Platform.getPluginLoadFailures()})")
    ref = openmm_evaluate(system_with(force, symbols, box), pos, "Reference", box)
    got = openmm_evaluate(system_with(_torch_force(gpu_models["f64"], symbols, box), symbols, box), pos, name, box)
    assert_parity(got[0], ref[0], TOL["float64"], f"TorchForce {name} energy")
    assert_parity(got[1], ref[1], TOL["float64"], f"TorchForce {name} forces")


@pytest.mark.parametrize("route", ["native", "torchforce"])
def test_nve_on_the_device(gpu_models, device, route):
    """Velocity Verlet on the device's platform (10-atom cluster, 300 K, 25 fs at 0.5 fs and
    at 0.25 fs: 150 steps): the total energy fluctuates by O(dt^2) without drift, as on the
    CPU (tests/integration/test_openmm_plugin.py's bounds): spread below 1 % of the kinetic
    energy, and halving dt divides it by 2.5-6.5 (forces that are the energy's gradient)."""
    symbols, pos, box = STRUCTURES["molecule"]
    if route == "native":
        name = native_platform(device)
        make = lambda: _native_force(gpu_models["f64"], symbols, box, device)  # noqa: E731
    else:
        make = lambda: _torch_force(gpu_models["f64"], symbols, box)  # noqa: E731
        make()
        name = platform_for(device)
        if not platform_or_skip(name).supportsKernels(["CalcTorchForce"]):
            pytest.skip(f"openmm-torch has no {name} kernel here")
    spread = []
    for dt in (0.5, 0.25):
        s, kinetic = openmm_nve(system_with(make(), symbols, box), pos, name, dt, 25.0, box)
        assert s < 0.01 * kinetic, (route, dt, s, kinetic)
        spread.append(s)
    assert 2.5 < spread[0] / spread[1] < 6.5, spread

