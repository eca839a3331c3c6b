"""equiformer-demo from the checkout: its refusals. The whole --quick run is checked once, from
the installed package (tests/integration/test_wheel.py, with tests/demo_checks.py)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.lammps, pytest.mark.openmm]


def _demo(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "equiformer.cli.demo", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_refuses_non_empty_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _demo("--quick", "--out", str(out), timeout=60)
    assert proc.returncode == 2
    assert "not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"
