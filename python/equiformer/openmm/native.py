"""Native route: the C++ OpenMM plugin `EquiformerForce` (openmm_plugin/, docs/openmm-plugin.md).

The force is computed inside OpenMM by the plugin library ``libEquiformerOpenMM.so`` (cell
list + the shared C++ runtime over libtorch); Python is not involved during a step.

    from equiformer.openmm import EquiformerForce, create_native_force
    force = create_native_force("MODEL.pt", topology)             # checks everything now
    force = EquiformerForce("MODEL.pt", [8, 1, 1])                # the plain API class
    system.addForce(force)

`EquiformerForce` is a genuine `openmm.Force`: the object is created by OpenMM's own
`XmlSerializer` (through the plugin's serialization proxy) and its settings are read and
changed through a small C interface of the plugin (ctypes), so no compiled Python binding
(SWIG) is needed.

The plugin library is looked for, in this order, in ``$EQUIFORMER_OPENMM_PLUGIN`` (the file or
its folder), in ``<repo>/build/openmm_plugin/plugins`` (``scripts/build_cpp.sh``), in
``$BUILD_DIR/openmm_plugin/plugins`` and in OpenMM's plugin folder (``cmake --install build
--component openmm_plugin``); a copy OpenMM already loaded is used as it is.
"""

import ctypes
import os
from pathlib import Path
from typing import Optional, Sequence
from xml.sax.saxutils import quoteattr

import torch  # noqa: F401  (libtorch first: see common.import_openmmtorch)
import openmm

from equiformer.openmm.common import _atom_descriptions, prepare

LIBRARY_NAME = "libEquiformerOpenMM.so"
KERNEL_NAME = "CalcEquiformerForce"
_ABI_VERSION = 1

_lib = None
_lib_path = None


def _loaded_copy() -> Optional[str]:
    """Path of the plugin library if this process has it mapped already (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("/" + LIBRARY_NAME):
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
    repo = Path(__file__).resolve().parents[3]
    out.append(repo / "build" / "openmm_plugin" / "plugins" / LIBRARY_NAME)
    if os.environ.get("BUILD_DIR"):
        out.append(Path(os.environ["BUILD_DIR"]) / "openmm_plugin" / "plugins" / LIBRARY_NAME)
    import openmm.version
    out.append(Path(openmm.version.openmm_library_path) / "plugins" / LIBRARY_NAME)
    return out


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
                "or point EQUIFORMER_OPENMM_PLUGIN at it. Looked in: " + ", ".join(str(c) for c in candidates))
        library = str(found[0].resolve())
        try:
            openmm.Platform.loadPluginLibrary(library)
        except Exception as exc:
            raise ImportError(f"OpenMM could not load the equiformer plugin {library}: {exc}") from None
    lib = ctypes.CDLL(library)
    if lib.equiformer_openmm_abi_version() != _ABI_VERSION:
        raise ImportError(f"{library} has C interface version {lib.equiformer_openmm_abi_version()}, "
                          f"this module expects {_ABI_VERSION}; rebuild with scripts/build_cpp.sh")
    vp, cp, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.equiformer_openmm_last_error.restype = cp
    lib.equiformer_openmm_is_force.argtypes = [vp]
    lib.equiformer_openmm_get_string.argtypes = [vp, cp, cp, ip]
    lib.equiformer_openmm_set_string.argtypes = [vp, cp, cp]
    lib.equiformer_openmm_get_ints.argtypes = [vp, cp, ctypes.POINTER(ip), ip]
    lib.equiformer_openmm_set_ints.argtypes = [vp, cp, ctypes.POINTER(ip), ip]
    lib.equiformer_openmm_get_int.argtypes = [vp, cp, ctypes.POINTER(ip)]
    lib.equiformer_openmm_set_int.argtypes = [vp, cp, ip]
    _lib, _lib_path = lib, library
    return library


def _check(rc: int) -> int:
    if rc < 0:
        raise openmm.OpenMMException(_lib.equiformer_openmm_last_error().decode())
    return rc


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
    device: libtorch device of the network ('cpu', 'cuda', 'cuda:K', 'auto').
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
        numbers = _atomic_numbers(atomicNumbers, particles)
        xml = ('<?xml version="1.0" ?>\n<Force type="EquiformerForce" version="1" modelFile=%s/>'
               % quoteattr(os.fspath(modelFile)))
        created = openmm.XmlSerializer.deserialize(xml)
        self.this = created.this  # share the C++ object (and its ownership flag)
        self.setAtomicNumbers(numbers)
        self.setParticles(particles)
        self.setUsesPeriodicBoundaryConditions(bool(periodic))
        self.setPrecision(precision)
        self.setDevice(device)
        self.setNumThreads(numThreads)

    @classmethod
    def cast(cls, force: openmm.Force) -> "EquiformerForce":
        """The EquiformerForce view of a generic `openmm.Force` (e.g. ``system.getForce(i)``,
        which OpenMM's Python layer returns as a plain Force). Keep the System alive."""
        load_plugin()
        if not _lib.equiformer_openmm_is_force(ctypes.c_void_p(int(force.this))):
            raise TypeError(f"{force!r} is not an EquiformerForce")
        view = cls.__new__(cls)
        view.this = force.this
        return view

    # -- settings -------------------------------------------------------------------------
    def _ptr(self):
        return ctypes.c_void_p(int(self.this))

    def _get_string(self, key):
        n = _check(_lib.equiformer_openmm_get_string(self._ptr(), key.encode(), None, 0))
        buf = ctypes.create_string_buffer(n + 1)
        _check(_lib.equiformer_openmm_get_string(self._ptr(), key.encode(), buf, n + 1))
        return buf.value.decode()

    def _set_string(self, key, value):
        _check(_lib.equiformer_openmm_set_string(self._ptr(), key.encode(), str(value).encode()))

    def _get_ints(self, key):
        n = _check(_lib.equiformer_openmm_get_ints(self._ptr(), key.encode(), None, 0))
        buf = (ctypes.c_int * max(n, 1))()
        _check(_lib.equiformer_openmm_get_ints(self._ptr(), key.encode(), buf, n))
        return list(buf[:n])

    def _set_ints(self, key, values):
        values = [int(v) for v in values]
        buf = (ctypes.c_int * max(len(values), 1))(*values)
        _check(_lib.equiformer_openmm_set_ints(self._ptr(), key.encode(), buf, len(values)))

    def _get_int(self, key):
        out = ctypes.c_int()
        _check(_lib.equiformer_openmm_get_int(self._ptr(), key.encode(), ctypes.byref(out)))
        return out.value

    def _set_int(self, key, value):
        _check(_lib.equiformer_openmm_set_int(self._ptr(), key.encode(), int(value)))

    def getModelFile(self) -> str:
        return self._get_string("modelFile")

    def setModelFile(self, path):
        self._set_string("modelFile", os.fspath(path))

    def getAtomicNumbers(self):
        return self._get_ints("atomicNumbers")

    def setAtomicNumbers(self, numbers):
        self._set_ints("atomicNumbers", numbers)

    def getParticles(self):
        """ML particles (System indices); empty = all particles."""
        return self._get_ints("particles")

    def setParticles(self, particles):
        self._set_ints("particles", [] if particles is None else particles)

    def setUsesPeriodicBoundaryConditions(self, periodic: bool):
        self._set_int("usesPeriodic", bool(periodic))

    def getPrecision(self) -> Optional[str]:
        return self._get_string("precision") or None

    def setPrecision(self, precision: Optional[str]):
        key = {None: "", "model": "", "float32": "single", "float": "single",
               "float64": "double"}.get(precision, precision)
        self._set_string("precision", key.lower() if isinstance(key, str) else key)

    def getDevice(self) -> str:
        return self._get_string("device")

    def setDevice(self, device: str):
        self._set_string("device", device)

    def getNumThreads(self) -> int:
        return self._get_int("numThreads")

    def setNumThreads(self, n: int):
        self._set_int("numThreads", 0 if n is None else n)

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
    numbers = [setup.atomic_numbers[s] for s in setup.species]
    force = EquiformerForce(setup.model_path, numbers, particles=setup.atoms, periodic=setup.periodic,
                            precision=precision, device=device, numThreads=num_threads or 0)
    force.setForceGroup(force_group)
    return force
