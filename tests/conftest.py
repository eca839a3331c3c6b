"""Settings shared by the whole suite."""

import os
import sys

import pytest
import torch

# the shared helpers beside this file (analytic models, model variants, damaged files)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    # the models under test are small: one thread is faster and steadier on a 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# Inductor's compile cache stays inside the repository's build folder (not /tmp)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build",
                                   "inductor-cache"))


def _compiled_pair_key() -> str:
    """What the tiny packages depend on: our Python sources, how they are built here
    (`_compile_pair`), torch, the C++ compiler and the CPU. A change to any of them compiles
    them again."""
    import hashlib
    import inspect
    import subprocess

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "equiformer")
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    digest.update(inspect.getsource(_compile_pair).encode())
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout
    digest.update(f"{torch.__version__}|{compiler}|{torch.backends.cpu.get_cpu_capability()}".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def compiled_pair(tmp_path_factory):
    """One small real Equiformer (tiny preset, Cu, cutoff 4 A, float64, seed 0) exported twice:
    {"pt": TorchScript file, "pt2": compiled AOTInductor package, with its layer entries}, and
    the same with one block and an attention-head readout (it reads the edges): "head_pt",
    "head_pt2".
    Compiling takes about 6 minutes per package on 2 cores, so the whole suite shares these, and
    they are kept in build/test-cache keyed
    on everything it depends on (_compiled_pair_key); EQUIFORMER_TEST_RECOMPILE=1 ignores the
    kept copy (once per run: pytest-xdist workers share the run's compilation). Each session
    works on its own copies."""
    import shutil

    from filelock import FileLock

    cache_root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "test-cache")
    kept = os.path.join(cache_root, "compiled-pair-" + _compiled_pair_key())
    d = tmp_path_factory.mktemp("compiled")
    out = {"pt": str(d / "tiny.pt"), "pt2": str(d / "tiny.pt2"), "head_pt": str(d / "tiny-head.pt"),
           "head_pt2": str(d / "tiny-head.pt2")}
    os.makedirs(os.path.dirname(cache_root), exist_ok=True)
    # one session at a time (pytest-xdist workers, or two suites run at once): the first one
    # compiles, the others wait and copy
    with FileLock(cache_root + ".lock"):
        if os.path.isdir(kept) and (os.environ.get("EQUIFORMER_TEST_RECOMPILE") != "1"
                                    or os.environ.get("PYTEST_XDIST_TESTRUNUID") == _recompiled_by()):
            for key, path in out.items():
                shutil.copy(os.path.join(kept, os.path.basename(path)), path)
            return out
        _compile_pair(out, cache_root, kept)
    return out


def _recompiled_by() -> str:
    """The test run (pytest-xdist's run id) that last compiled the kept package, so that
    EQUIFORMER_TEST_RECOMPILE=1 compiles once per run, not once per worker."""
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build",
                               "test-cache.run")) as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"


def _compile_pair(out, cache_root: str, kept: str) -> None:
    import shutil

    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model

    # the head model has one block, so fewer entries to compile (the first model has two block kinds)
    for prefix, extra in (("", {}), ("head_", {"attention_head": True, "num_layers": 1})):
        torch.manual_seed(0)
        model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 4.0, **extra}, dtype=torch.float64)
        export_model(model, out[prefix + "pt"], "float64")
        export_model(model, out[prefix + "pt2"], "float64")
    # keep only this key's copy; written to a temporary folder and renamed, so a half-written
    # copy is never read
    shutil.rmtree(cache_root, ignore_errors=True)
    os.makedirs(cache_root)
    staging = kept + ".partial"
    os.makedirs(staging)
    for path in out.values():
        shutil.copy(path, staging)
    os.rename(staging, kept)
    with open(cache_root + ".run", "w") as f:
        f.write(os.environ.get("PYTEST_XDIST_TESTRUNUID", ""))


# ------------------------------------------------------------------------------------------
# parallel runs (scripts/test.sh: pytest-xdist, `-n 2 --dist loadgroup`)
#
# A test module's module-scoped fixtures (exported models, a built wheel, TorchScript modules
# that have paid their first-call profiling) are made once per worker that runs any of its
# tests; so each module runs on one worker (as `--dist loadfile` would), except the LAMMPS
# tests: they are the largest module and mostly one `lmp` run each, sharing only the session
# fixture `models`, so they spread over the workers, in a few groups that share more.


def _xdist_group(item) -> str:
    path = item.nodeid.split("::", 1)[0]
    if path.endswith("integration/test_lammps.py"):
        name = item.originalname if hasattr(item, "originalname") else item.name
        if name.startswith(("test_real_equiformer", "test_compiled_package")):
            return "lammps-real"  # real_models, and the one-rank baseline runs (_REAL_RUNS)
        if name == "test_mpi_ranks_agree":
            return "lammps-mpi-ranks"  # the one-rank runs (_ONE_RANK_RUNS)
        return ""
    if path.endswith("integration/test_openmm.py"):
        # model_case (module scope, per model): the real Equiformer's cases on their own
        return "openmm-equiformer" if "equiformer-tiny" in item.nodeid else path
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # the controller knows --dist; the workers (which send the node ids) only this flag
    if not (config.getoption("dist", "no") == "loadgroup" or getattr(config.option, "loadgroup", False)):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = _xdist_group(item)
            if group:
                item.add_marker(pytest.mark.xdist_group(group))
