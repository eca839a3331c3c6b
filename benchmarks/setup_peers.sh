#!/usr/bin/env bash
# Creates the peer-benchmark environments used by benchmarks/peers.py:
#   benchmarks/.venvs/nequip  torch + nequip (e3nn 0.6, NequIP's own pin)
#   benchmarks/.venvs/mace    torch + mace-torch (e3nn 0.4.4, MACE's own pin)
# torch 2.9.1 (PyPI's default wheel, which pulls the CUDA libraries: ~7 GB per env) is the
# project's own version; both peers build and run with it.
# Two venvs because the two packages pin incompatible e3nn versions.
# Idempotent: an env whose installed versions already match the pins is left alone.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"

TORCH=2.9.1
NEQUIP=0.19.1
E3NN_NEQUIP=0.6.0  # nequip asks for e3nn>=0.6,<0.7; pinned so that reruns build the same env
MACE=0.3.16
ASE=3.26.0

# make_env NAME "pkg==ver ..." : (re)creates $VENVS/NAME unless every pin is already installed
make_env() {
    local name=$1 pins=$2 venv="$VENVS/$1"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" - $pins <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = all(version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:])
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
    then
        echo "$name: up to date ($pins)"
        return
    fi
    echo "$name: creating $venv with $pins"
    rm -rf "$venv"
    python3.11 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet $pins
}

make_env nequip "torch==$TORCH nequip==$NEQUIP e3nn==$E3NN_NEQUIP ase==$ASE"
make_env mace "torch==$TORCH mace-torch==$MACE ase==$ASE"
