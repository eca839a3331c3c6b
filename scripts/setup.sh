#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the pinned dependencies, this
# package in editable mode, and the C++ builds (runtime, LAMMPS and OpenMM plugins).
# Running it again is quick: each step is skipped when its inputs have not changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-python3.11}
if ! command -v "$python" >/dev/null; then
  echo "ERROR: $python not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.equiformer-requirements
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing pinned dependencies (first run downloads about 4 GB)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  # editable and pure Python (pyproject.toml: no CMake for editable installs): the C++ part is
  # built below into build/, incrementally; scikit-build-core comes from requirements.txt
  rm -rf python/equiformer.egg-info  # left by the former setuptools backend (a second, stale distribution)
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" >"$stamp"
fi
if [ -f CMakeLists.txt ]; then
  echo "==> building the C++ runtime and engine plugins"
  scripts/build_cpp.sh
fi
echo "==> set-up done: activate with 'source .venv/bin/activate'"
