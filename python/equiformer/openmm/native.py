"""Native route: the C++ OpenMM plugin `EquiformerForce` (openmm_plugin/, docs/openmm-plugin.md).

The force is computed inside OpenMM by the plugin library ``libEquiformerOpenMM.so`` (cell
list + the shared C++ runtime over libtorch); Python is not involved during a step.

    from equiformer.openmm import EquiformerForce, create_native_force
    force = create_native_force("MODEL.pt", topology)             # checks everything now
    force = EquiformerForce("MODEL.pt", [8, 1, 1])                # the plain API class
    system.addForce(force)

`EquiformerForce` is a genuine `openmm.Force`. OpenMM's Python layer (SWIG) only makes
Python objects for C++ classes compiled into a SWIG module, and the plugin has none (one would
need SWIG and a compiled extension per Python version at build time). So the object is made
the one way OpenMM's Python API allows for a class it does not know: `XmlSerializer`, through
the plugin's serialization proxy. Its settings are read from the same XML; changing them in
place (the force may already belong to a System) needs one C function of the plugin,
``equiformer_openmm_assign`` (`EquiformerCApi.cpp`), called with ctypes.

The plugin library is looked for, in this order, in ``$EQUIFORMER_OPENMM_PLUGIN`` (the file or
its folder), in ``lib/openmm`` of this package (``pip install .``), in
``<repo>/build/openmm_plugin/plugins`` (``scripts/build_cpp.sh``), in
``$BUILD_DIR/openmm_plugin/plugins`` and in OpenMM's plugin folder (``cmake --install build
--component openmm_plugin``); a copy OpenMM already loaded is used as it is. A library built
for another torch or OpenMM (its ``libEquiformerOpenMM.json``) is refused before loading.

CUDA platform: the kernel for OpenMM's CUDA platform is a second library beside the first,
``libEquiformerOpenMMCUDA.so`` (it links OpenMM's CUDA platform and needs the CUDA driver).
`load_plugin` tries it after the main library; a failure (e.g. no ``libcuda.so.1`` on a
machine without a GPU) is remembered, never raised: `cuda_plugin_status` says what happened,
`cuda_platform` returns OpenMM's CUDA platform or raises a RuntimeError naming the cause, and
`check_platform` does the same for a platform chosen elsewhere.
"""

import ctypes
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence

import torch  # noqa: F401  (libtorch first: see common.import_openmmtorch)
import openmm

from equiformer.openmm.common import _atom_descriptions, prepare

LIBRARY_NAME = "libEquiformerOpenMM.so"
CUDA_LIBRARY_NAME = "libEquiformerOpenMMCUDA.so"
KERNEL_NAME = "CalcEquiformerForce"
_ABI_VERSION = 2
# the plugin's XML (serialization/src/EquiformerForceProxy.cpp): settings are attributes of
# the Force element, lists are child elements
XML_VERSION = 1
XML_LISTS = {"atomicNumbers": ("AtomicNumbers", "Atom", "z"), "particles": ("Particles", "Particle", "index")}

_lib = None
_lib_path = None
_cuda_status = None  # (available, library path or why not), set by load_plugin


def _loaded_copy(name: str = LIBRARY_NAME) -> Optional[str]:
    """Path of the plugin library if this process has it mapped already (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("/" + name):
                    return line.split(None, 5)[-1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def plugin_candidates():
    """Where the plugin library is looked for, in order."""
    out = []
    env = os.environ.get("EQUIFORMER_OPENMM_PLUGIN")
    if env:
        p = Path(env)
        out.append(p / LIBRARY_NAME if p.is_dir() else p)
    package = Path(__file__).resolve().parents[1]
    out.append(package / "lib" / "openmm" / LIBRARY_NAME)  # installed with the package
    repo = package.parents[1]
    out.append(repo / "build" / "openmm_plugin" / "plugins" / LIBRARY_NAME)
    if os.environ.get("BUILD_DIR"):
        out.append(Path(os.environ["BUILD_DIR"]) / "openmm_plugin" / "plugins" / LIBRARY_NAME)
    import openmm.version
    out.append(Path(openmm.version.openmm_library_path) / "plugins" / LIBRARY_NAME)
    return out


def _check_versions(library: str) -> None:
    """Refuse a library built for another torch or OpenMM: loading it would fail on missing
    symbols or crash later. Its versions are in the JSON file CMake wrote beside it."""
    import openmm.version

    from equiformer import build_info

    info = build_info.of_library(library)
    if info is None:  # e.g. copied into OpenMM's plugin folder without it: nothing to compare
        return
    here = {"torch": str(torch.__version__), "openmm": openmm.version.short_version}
    wrong = build_info.mismatches(info, here)
    if wrong:
        raise ImportError(f"{library} does not match this environment ({'; '.join(wrong)}); "
                          f"{build_info.REINSTALL}")


def load_plugin(path=None) -> str:
    """Load the plugin into OpenMM (once) and return the library's path.

    Raises ImportError naming the build step when no library is found."""
    global _lib, _lib_path
    if _lib is not None and path is None:
        return _lib_path
    loaded = _loaded_copy()
    if loaded is not None and openmm.Platform.getPlatformByName("Reference").supportsKernels([KERNEL_NAME]):
        library = loaded  # OpenMM loaded it from its plugin folder (or we did earlier)
    else:
        candidates = [Path(path)] if path is not None else plugin_candidates()
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ImportError(
                "the native OpenMM plugin (" + LIBRARY_NAME + ") was not found; build it with scripts/build_cpp.sh "
                "(source checkout), or install equiformer where openmm is installed (pip install "
                "--no-build-isolation ...), or point EQUIFORMER_OPENMM_PLUGIN at it. Looked in: "
                + ", ".join(str(c) for c in candidates))
        library = str(found[0].resolve())
        _check_versions(library)
        try:
            openmm.Platform.loadPluginLibrary(library)
        except Exception as exc:
            raise ImportError(f"OpenMM could not load the equiformer plugin {library}: {exc}") from None
    lib = ctypes.CDLL(library)
    if lib.equiformer_openmm_abi_version() != _ABI_VERSION:
        raise ImportError(f"{library} has C interface version {lib.equiformer_openmm_abi_version()}, "
                          f"this module expects {_ABI_VERSION}; rebuild with scripts/build_cpp.sh")
    lib.equiformer_openmm_assign.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    _lib, _lib_path = lib, library
    _load_cuda_plugin(library)
    return library


def _load_cuda_plugin(library: str) -> None:
    """Load the CUDA kernel library that sits beside LIBRARY; remember a failure (no GPU
    driver here, not built, another torch/OpenMM) in `_cuda_status` instead of raising."""
    global _cuda_status
    loaded = _loaded_copy(CUDA_LIBRARY_NAME)
    if loaded is not None:
        _cuda_status = (True, loaded)
        return
    path = Path(library).with_name(CUDA_LIBRARY_NAME)
    if not path.is_file():
        _cuda_status = (False, f"{path} does not exist (it is built only where OpenMM's CUDA platform, "
                               "libOpenMMCUDA.so from pip install openmm-cuda-12, and a CUDA libtorch are found)")
        return
    try:
        _check_versions(str(path))
        openmm.Platform.loadPluginLibrary(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure only disables the CUDA kernel
        _cuda_status = (False, str(exc).strip())
        return
    _cuda_status = (True, str(path))


def _has_platform(name: str) -> bool:
    return any(openmm.Platform.getPlatform(i).getName() == name for i in range(openmm.Platform.getNumPlatforms()))


def cuda_plugin_status():
    """``(available, detail)``: whether EquiformerForce has a kernel for OpenMM's CUDA platform
    in this process, and the library's path or why not (the loader's error, e.g. a missing
    ``libcuda.so.1``)."""
    load_plugin()
    available, detail = _cuda_status
    if available and not _has_platform("CUDA"):
        return False, f"{detail} is loaded but OpenMM has no CUDA platform (openmm.Platform.getPluginLoadFailures())"
    return available, detail


def _cuda_unavailable_message(detail: str) -> str:
    message = f"the Equiformer CUDA kernel could not be loaded: {detail}"
    if not _has_platform("CUDA"):
        message += "; no CUDA platform here — use the CPU or Reference platform"
    return message


def cuda_platform() -> openmm.Platform:
    """OpenMM's CUDA platform with the EquiformerForce kernel, or a RuntimeError naming why
    not (instead of OpenMM's 'There is no registered Platform called "CUDA"' or 'does not
    support all required kernels')."""
    available, detail = cuda_plugin_status()
    if not available:
        raise RuntimeError(_cuda_unavailable_message(detail))
    return openmm.Platform.getPlatformByName("CUDA")


def check_platform(platform) -> None:
    """Raise the RuntimeError of `cuda_platform` when PLATFORM (a Platform or its name) is CUDA
    and the EquiformerForce CUDA kernel is not available; other platforms pass."""
    name = platform if isinstance(platform, str) else platform.getName()
    if name == "CUDA":
        cuda_platform()


def _atomic_numbers(elements, particles):
    """Atomic numbers from a Topology (all atoms, or `particles` of it) or one entry per model atom."""
    from openmm.app import Topology
    described = _atom_descriptions(elements)
    if isinstance(elements, Topology) and particles:
        bad = [p for p in particles if not 0 <= p < len(described)]
        if bad:
            raise ValueError(f"particles contains indices outside 0..{len(described) - 1}: {bad[:10]}")
        described = [described[p] for p in particles]
    missing = [desc for z, desc in described if z is None]
    if missing:
        raise ValueError(f"no element for {', '.join(missing[:5])}")
    return [int(z) for z, _ in described]


def _xml_of(force: openmm.Force) -> ET.Element:
    """The XML element OpenMM's serializer writes for ``force``."""
    return ET.fromstring(openmm.XmlSerializer.serialize(force))


def _edited(element: ET.Element, settings: dict) -> ET.Element:
    """``element`` with ``settings`` (Python values, names as in XML_LISTS or attributes)."""
    for key, value in settings.items():
        if key in XML_LISTS:
            tag, item, attribute = XML_LISTS[key]
            for old in element.findall(tag):
                element.remove(old)
            node = ET.SubElement(element, tag)
            for v in value:
                ET.SubElement(node, item, {attribute: str(int(v))})
        else:
            element.set(key, str(int(value)) if isinstance(value, bool) else str(value))
    return element


def _precision_key(precision: Optional[str]) -> str:
    """The plugin's precision setting ("", "single", "double") for the Python spellings."""
    key = {None: "", "model": "", "float32": "single", "float": "single", "float64": "double"}.get(precision, precision)
    return key.lower() if isinstance(key, str) else key


class EquiformerForce(openmm.Force):
    """An exported Equiformer model as a native OpenMM force (the C++ class
    ``EquiformerOpenMM::EquiformerForce``).

    modelFile: exported model (``equiformer-export``). Read when a Context is created.
    atomicNumbers: one element per particle the model is applied to (atomic numbers,
        `openmm.app.Element`s or symbols), or an `openmm.app.Topology` (its atoms, or those
        listed in `particles`).
    particles: System indices of the ML particles (ML/MM); None = all particles.
    periodic: use the Context's periodic box; None = whether the Topology has a box (else False).
    precision: None (the model's dtype), 'single' or 'double' (must match the model).
    device: libtorch device of the network ('cpu', 'cuda', 'cuda:K', 'auto') on the Reference
        and CPU platforms; on the CUDA platform the network always runs on the Context's GPU
        ('cuda:K' must name that device).
    numThreads: libtorch intra-op threads (process wide); 0 = libtorch's default.

    The model, the elements, the precision and the box are checked when the Context is
    created (`openmm.OpenMMException`); `create_native_force` checks them right away.
    """

    def __init__(self, modelFile, atomicNumbers, particles: Optional[Sequence[int]] = None,
                 periodic: Optional[bool] = None, precision: Optional[str] = None, device: str = "cpu",
                 numThreads: int = 0):
        load_plugin()
        if periodic is None:
            periodic = getattr(atomicNumbers, "getPeriodicBoxVectors", lambda: None)() is not None
        particles = [] if particles is None else [int(p) for p in particles]
        element = ET.Element("Force", {"type": "EquiformerForce", "version": str(XML_VERSION)})
        _edited(element, {"modelFile": os.fspath(modelFile), "atomicNumbers": _atomic_numbers(atomicNumbers, particles),
                          "particles": particles, "usesPeriodic": bool(periodic),
                          "precision": _precision_key(precision), "device": device, "numThreads": numThreads or 0})
        created = openmm.XmlSerializer.deserialize(ET.tostring(element, encoding="unicode"))
        self.this = created.this  # share the C++ object (and its ownership flag)

    @classmethod
    def cast(cls, force: openmm.Force) -> "EquiformerForce":
        """The EquiformerForce view of a generic `openmm.Force` (e.g. ``system.getForce(i)``,
        which OpenMM's Python layer returns as a plain Force). Keep the System alive."""
        load_plugin()
        try:
            kind = _xml_of(force).get("type")
        except Exception:  # a force OpenMM cannot serialize is no EquiformerForce either
            kind = None
        if kind != "EquiformerForce":
            raise TypeError(f"{force!r} is not an EquiformerForce")
        view = cls.__new__(cls)
        view.this = force.this
        return view

    # -- settings: read from the force's XML, changed by assigning a force made from edited XML
    def _get(self, key):
        element = _xml_of(self)
        if key in XML_LISTS:
            tag, _, attribute = XML_LISTS[key]
            return [int(item.get(attribute)) for node in element.findall(tag) for item in node]
        return element.get(key)

    def _set(self, **settings):
        changed = openmm.XmlSerializer.deserialize(ET.tostring(_edited(_xml_of(self), settings), encoding="unicode"))
        if _lib.equiformer_openmm_assign(ctypes.c_void_p(int(self.this)), ctypes.c_void_p(int(changed.this))) != 0:
            raise TypeError(f"{self!r} is not an EquiformerForce")

    def getModelFile(self) -> str:
        return self._get("modelFile")

    def setModelFile(self, path):
        self._set(modelFile=os.fspath(path))

    def getAtomicNumbers(self):
        return self._get("atomicNumbers")

    def setAtomicNumbers(self, numbers):
        self._set(atomicNumbers=numbers)

    def getParticles(self):
        """ML particles (System indices); empty = all particles."""
        return self._get("particles")

    def setParticles(self, particles):
        self._set(particles=[] if particles is None else particles)

    def setUsesPeriodicBoundaryConditions(self, periodic: bool):
        self._set(usesPeriodic=bool(periodic))

    def getPrecision(self) -> Optional[str]:
        return self._get("precision") or None

    def setPrecision(self, precision: Optional[str]):
        self._set(precision=_precision_key(precision))

    def getDevice(self) -> str:
        return self._get("device")

    def setDevice(self, device: str):
        self._set(device=device)

    def getNumThreads(self) -> int:
        return int(self._get("numThreads"))

    def setNumThreads(self, n: int):
        self._set(numThreads=0 if n is None else int(n))

    def __repr__(self):
        return (f"<EquiformerForce {self.getModelFile()!r}: {len(self.getAtomicNumbers())} atoms, "
                f"periodic={self.usesPeriodicBoundaryConditions()}>")


def create_native_force(model, topology_or_elements, atoms: Optional[Sequence[int]] = None,
                        periodic: Optional[bool] = None, box_vectors=None, precision: Optional[str] = None,
                        device: str = "cpu", num_threads: Optional[int] = None,
                        force_group: int = 0) -> EquiformerForce:
    """An `EquiformerForce` for MODEL applied to a Topology (or one element per particle),
    all atoms or the `atoms` subset (ML/MM), with everything checked now (model file and
    metadata, elements, precision, box against the cutoff) by the same code as the
    TorchForce / PythonForce routes (`equiformer.openmm.common.prepare`)."""
    setup = prepare(model, topology_or_elements, atoms=atoms, periodic=periodic, box_vectors=box_vectors,
                    precision=precision)
    numbers = [setup.info.atomic_numbers[s] for s in setup.species]
    force = EquiformerForce(setup.model_path, numbers, particles=setup.atoms, periodic=setup.periodic,
                            precision=precision, device=device, numThreads=num_threads or 0)
    force.setForceGroup(force_group)
    return force
