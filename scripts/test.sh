#!/usr/bin/env bash
# The whole test suite: Python unit and integration tests, then the C++ tests (ctest).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python -m pytest -q -rsx "$@"  # -rsx: print why anything was skipped or xfailed
if [ -f build/CTestTestfile.cmake ]; then
  ctest --test-dir build --output-on-failure
fi
