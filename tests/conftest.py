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
    """What the tiny package depends on: our Python sources, torch, the C++ compiler and the CPU.
    A change to any of them compiles it again."""
    import hashlib
    import subprocess

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "equiformer")
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout
    digest.update(f"{torch.__version__}|{compiler}|{torch.backends.cpu.get_cpu_capability()}".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def compiled_pair(tmp_path_factory):
    """One small real Equiformer (tiny preset, Cu, cutoff 4 A, float64, seed 0) exported twice:
    {"pt": TorchScript file, "pt2": compiled AOTInductor package}. Compiling takes a minute or
    two, so the whole suite shares this one package, and it is kept in build/test-cache keyed
    on everything it depends on (_compiled_pair_key); EQUIFORMER_TEST_RECOMPILE=1 ignores the
    kept copy. Each session works on its own copies."""
    import shutil

    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model

    cache_root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "test-cache")
    kept = os.path.join(cache_root, "compiled-pair-" + _compiled_pair_key())
    d = tmp_path_factory.mktemp("compiled")
    out = {"pt": str(d / "tiny.pt"), "pt2": str(d / "tiny.pt2")}
    if os.path.isdir(kept) and os.environ.get("EQUIFORMER_TEST_RECOMPILE") != "1":
        for key, path in out.items():
            shutil.copy(os.path.join(kept, os.path.basename(path)), path)
        return out
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 4.0}, dtype=torch.float64)
    export_model(model, out["pt"], "float64")
    export_model(model, out["pt2"], "float64")
    # keep only this key's copy; written to a temporary folder and renamed, so a half-written
    # copy is never read
    shutil.rmtree(cache_root, ignore_errors=True)
    os.makedirs(cache_root)
    staging = kept + ".partial"
    os.makedirs(staging)
    for path in out.values():
        shutil.copy(path, staging)
    os.rename(staging, kept)
    return out
