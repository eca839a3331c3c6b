"""Packaging checks that need no wheel (issue 17): a plugin built for another LAMMPS, torch or
OpenMM is refused with a clear message; `equiformer-lammps-plugin` reports versions and
mismatches; a build without LAMMPS and OpenMM configures and says which plugin it skipped.
They use the checkout's build/ (scripts/build_cpp.sh); the wheel itself is test_wheel.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
LMP = Path(sys.executable).parent / "lmp"
PLUGIN = BUILD / "lammps_plugin" / "equiformerplugin.so"
PLUGIN_2000 = BUILD / "lammps_plugin_tests" / "equiformer_lammps_2000.so"
OPENMM_PLUGIN = BUILD / "openmm_plugin" / "plugins" / "libEquiformerOpenMM.so"

needs_plugin = pytest.mark.skipif(not (PLUGIN.is_file() and PLUGIN_2000.is_file() and LMP.is_file()),
                                  reason="LAMMPS plugin not built (scripts/build_cpp.sh)")

BOX = "units metal\natom_style atomic\nregion box block 0 5 0 5 0 5\ncreate_box 1 box\nmass 1 1.0\n"


def _lmp(tmp_path, script, **env):
    (tmp_path / "in.test").write_text(script)
    run_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run([str(LMP), "-in", "in.test", "-log", "none"], cwd=tmp_path, env=run_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.lammps
@needs_plugin
def test_lammps_refuses_plugin_built_for_another_lammps(tmp_path):
    empty = tmp_path / "no_plugins"
    empty.mkdir()  # the entry point's folder: nothing loaded by itself, only the file below
    proc = _lmp(tmp_path, f"plugin load {PLUGIN_2000}\n{BOX}pair_style equiformer\n",
                EQUIFORMER_LAMMPS_PLUGIN_DIR=str(empty))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    why = f"{PLUGIN_2000} was built for LAMMPS 1 Jan 2000, but this is LAMMPS 22 Jul 2025; reinstall equiformer"
    assert f"WARNING: pair equiformer: {why}" in out  # at load
    assert f"ERROR: pair_style equiformer cannot be used: {why}" in out  # when used


@pytest.mark.lammps
@needs_plugin
def test_lammps_refuses_plugin_built_for_another_torch(tmp_path):
    """Another torch first on the library path (as in an environment where torch was
    upgraded): the loader reads its version before opening the pair style, and refuses."""
    import torch

    fake = tmp_path / "site-packages" / "torch"
    (fake / "lib").mkdir(parents=True)
    (fake / "lib" / "libc10.so").symlink_to(Path(torch.__file__).parent / "lib" / "libc10.so")
    (fake / "version.py").write_text("__version__ = '1.0.0'\n")
    proc = _lmp(tmp_path, f"{BOX}pair_style equiformer\n", LD_LIBRARY_PATH=str(fake / "lib"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert (f"ERROR: pair_style equiformer cannot be used: {PLUGIN} was built for torch {torch.__version__}, "
            f"but this environment has torch 1.0.0 ({fake}); reinstall equiformer") in out, out


@pytest.mark.lammps
@needs_plugin
def test_plugin_cli_versions_and_mismatch(tmp_path, monkeypatch, capsys):
    from equiformer import build_info
    from equiformer.lammps import main

    info = build_info.of_library(str(PLUGIN))
    env = build_info.environment()
    assert info["torch"] == env["torch"] and info["lammps_package"] == env["lammps_package"], (info, env)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(PLUGIN)
    assert f"built against: torch {env['torch']}, LAMMPS {info['lammps']} (lammps package {env['lammps_package']})" in out

    # a copy whose build information names another torch: exit status 2 and what differs
    (tmp_path / PLUGIN.name).symlink_to(PLUGIN)
    (tmp_path / "equiformerplugin.json").write_text(json.dumps(dict(info, torch="1.0.0")))
    monkeypatch.setenv("EQUIFORMER_LAMMPS_PLUGIN_DIR", str(tmp_path))
    assert main([]) == 2
    err = capsys.readouterr().err
    assert f"torch: built for 1.0.0, this environment has {env['torch']}" in err and "reinstall equiformer" in err


@pytest.mark.openmm
@pytest.mark.skipif(not OPENMM_PLUGIN.is_file(), reason="OpenMM plugin not built (scripts/build_cpp.sh)")
def test_openmm_refuses_plugin_built_for_another_openmm(tmp_path):
    info = json.loads(OPENMM_PLUGIN.with_suffix(".json").read_text())
    shutil.copy(OPENMM_PLUGIN, tmp_path)  # a copy: the loader resolves links to the real file
    (tmp_path / "libEquiformerOpenMM.json").write_text(json.dumps(dict(info, openmm="7.0.0")))
    code = ("from equiformer.openmm.native import load_plugin\n"
            f"try:\n    load_plugin({str(tmp_path / OPENMM_PLUGIN.name)!r})\n"
            "except ImportError as exc:\n    print(exc)\nelse:\n    print('LOADED')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"OpenMM: built for 7.0.0, this environment has {info['openmm']}" in proc.stdout, proc.stdout
    assert "reinstall equiformer" in proc.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake missing")
def test_build_without_lammps_and_openmm_says_what_it_skipped(tmp_path, monkeypatch, capsys):
    """What `pip install .` does in an environment without lammps and openmm: the
    configuration succeeds, warns, and records why each plugin is missing; the Python side
    reports it. (Configure only: the compile is the same as in test_wheel.py.)"""
    proc = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DEQUIFORMER_PYTHON={sys.executable}",
                           "-DLAMMPS_INCLUDE_DIR=/nonexistent", "-DOPENMM_DIR=/nonexistent",
                           "-DEQUIFORMER_BUILD_TESTS=OFF", "-DEQUIFORMER_INSTALL_PACKAGE=ON"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipping the LAMMPS plugin" in proc.stderr and "skipping the OpenMM plugin" in proc.stderr
    info = json.loads((tmp_path / "b" / "build_info.json").read_text())
    assert info["lammps_plugin"].startswith("skipped: LAMMPS headers not found"), info
    assert info["openmm_plugin"].startswith("skipped: OpenMM headers not found"), info

    from equiformer.lammps import main

    monkeypatch.setenv("EQUIFORMER_BUILD_DIR", str(tmp_path / "b"))
    assert main([]) == 1
    assert "was built without the LAMMPS plugin (skipped: LAMMPS headers not found" in capsys.readouterr().err
