#!/usr/bin/env bash
# The whole test suite: Python unit and integration tests, then the C++ tests (ctest).
#
# The Python tests run on two pytest-xdist workers (one per core of the 2-core CI machine; most
# tests are single-threaded or wait on one `lmp`/OpenMM subprocess), each with one OpenMP
# thread. A test module stays on one worker (its module fixtures are made once), except the
# LAMMPS tests, which spread over both (tests/conftest.py: _xdist_group).
#   EQUIFORMER_TEST_WORKERS=N   N workers (default 2); 0 runs serially, in one process, in
#                               collection order (OMP_NUM_THREADS then defaults to 2)
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
workers=${EQUIFORMER_TEST_WORKERS:-2}
if [ "$workers" != 0 ]; then
  .venv/bin/python -c "import xdist" 2>/dev/null || {
    echo "ERROR: pytest-xdist missing (run scripts/setup.sh), or set EQUIFORMER_TEST_WORKERS=0" >&2; exit 1; }
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  parallel=(-n "$workers" --dist loadgroup)
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  parallel=()
fi
.venv/bin/python -m pytest -q -rsx "${parallel[@]}" "$@"  # -rsx: print why anything was skipped or xfailed
if [ -f build/CTestTestfile.cmake ]; then
  ctest --test-dir build --output-on-failure
fi
