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


@pytest.fixture(scope="session")
def compiled_pair(tmp_path_factory):
    """One small real Equiformer (tiny preset, Cu, cutoff 4 A, float64, seed 0) exported twice:
    {"pt": TorchScript file, "pt2": compiled AOTInductor package}. Compiling takes a minute or
    two, so the whole suite shares this one package."""
    from equiformer.export.torchscript import export_model
    from equiformer.model import build_model

    d = tmp_path_factory.mktemp("compiled")
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 4.0}, dtype=torch.float64)
    out = {"pt": str(d / "tiny.pt"), "pt2": str(d / "tiny.pt2")}
    export_model(model, out["pt"], "float64")
    export_model(model, out["pt2"], "float64")
    return out
