"""Device handling without a GPU (docs/gpu.md): the one resolution every Python route uses
(equiformer.device), simulated with 0, 1 and 2 GPUs, and every route refusing `cuda` with the
same clear message on a machine without one. The GPU runs themselves are tests/gpu."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equiformer.device import NO_GPU, DeviceError, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analytic_models import write_pair_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(),
                                 reason="a CUDA GPU is visible: the refusal without one cannot be seen here")


@pytest.fixture
def gpus(monkeypatch):
    """gpus(k): torch behaves as if it saw k CUDA GPUs (nothing is run on them)."""
    def simulate(count: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return simulate


# ------------------------------------------------------------------------------ resolution


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", "cpu:0", torch.device("cpu")])
@pytest.mark.parametrize("count", [0, 1, 2])
def test_cpu_always(gpus, name, count):
    gpus(count)
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize("count, expected", [(0, "cpu"), (1, "cuda:0"), (2, "cuda:0")])
def test_auto_takes_the_first_gpu_else_the_cpu(gpus, count, expected):
    gpus(count)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("AUTO") == torch.device(expected)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1", torch.device("cuda", 0)])
def test_cuda_without_a_gpu_is_refused(gpus, name):
    gpus(0)
    with pytest.raises(DeviceError) as info:
        resolve_device(name)
    message = str(info.value)
    assert NO_GPU in message and "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)" in message
    assert "use device='cpu' or device='auto'" in message
    assert isinstance(info.value, ValueError)  # the routes' callers catch ValueError


def test_cuda_with_gpus(gpus):
    gpus(1)
    assert resolve_device("cuda") == torch.device("cuda")  # torch's current GPU
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    gpus(2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("count, name", [(1, "cuda:1"), (2, "cuda:2"), (2, "cuda:17")])
def test_gpu_index_out_of_range(gpus, count, name):
    gpus(count)
    with pytest.raises(DeviceError) as info:
        resolve_device(name)
    message = str(info.value)
    assert f"torch sees {count} CUDA GPU" in message and "CUDA_VISIBLE_DEVICES" in message
    assert "use device='cuda:0' or device='auto'" in message


@pytest.mark.parametrize("name", ["gpu", "mps", "tpu", "meta", "xpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "",
                                  "cpu,cuda", torch.device("meta")])
@pytest.mark.parametrize("count", [0, 2])
def test_unknown_names_refused(gpus, name, count):
    gpus(count)
    with pytest.raises(DeviceError, match="is not a device this package runs on; use cpu, cuda, cuda:K or auto"):
        resolve_device(name)


@pytest.mark.parametrize("value", [None, 0, 1.5, ["cpu"]])
def test_non_strings_refused(value):
    with pytest.raises(DeviceError, match="must be a device name"):
        resolve_device(value)


def test_messages_speak_the_callers_syntax(gpus):
    from equiformer.train.trainer import resolve_device as run_device

    gpus(0)
    with pytest.raises(ValueError, match=r"run.device 'cuda' asked for, .*; use run.device: cpu or run.device: auto"):
        run_device("cuda")
    with pytest.raises(ValueError, match=r"--device 'cuda:1' asked for, .*; use --device cpu or --device auto"):
        resolve_device("cuda:1", "--device", "--device {}")
    assert run_device("auto") == torch.device("cpu")


# ---------------------------------------------------------------- every route refuses cuda


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory):
    return write_pair_model(str(tmp_path_factory.mktemp("device") / "pair.pt"))


def _check_refusal(message: str, what: str = "device"):
    assert f"{what} 'cuda' asked for" in message, message
    assert NO_GPU in message, message


@no_gpu_here
def test_calculator_refuses_cuda(pair_model):
    from equiformer.calculator import EquiformerCalculator

    with pytest.raises(ValueError) as info:
        EquiformerCalculator(model=pair_model, device="cuda")
    _check_refusal(str(info.value))
    with pytest.raises(ValueError, match="not a device this package runs on"):
        EquiformerCalculator(model=pair_model, device="gpu")
    assert EquiformerCalculator(model=pair_model, device="auto").device == torch.device("cpu")


@no_gpu_here
def test_open_engine_model_refuses_cuda(pair_model):
    from equiformer.export.contract import open_engine_model

    with pytest.raises(ValueError) as info:
        open_engine_model(pair_model, "cuda")
    _check_refusal(str(info.value))


@no_gpu_here
def test_evaluate_cli_refuses_cuda(tmp_path, capsys):
    """Refused before the checkpoint or the data are read (neither exists here)."""
    from equiformer.cli.evaluate import main

    assert main([str(tmp_path / "ckpt.pt"), str(tmp_path / "data.xyz"), "--device", "cuda", "--no-progress"]) == 1
    err = capsys.readouterr().err
    _check_refusal(err, "--device")
    assert "use --device cpu or --device auto" in err


@no_gpu_here
def test_export_cli_refuses_cuda(tmp_path, capsys):
    """Refused before the checkpoint is read; nothing is written."""
    from equiformer.cli.export import main

    out = tmp_path / "model.pt"
    assert main([str(tmp_path / "ckpt.pt"), str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    _check_refusal(err, "--device")
    assert not out.exists()


@no_gpu_here
def test_export_cli_subprocess_message():
    """The installed command prints the same one line (no traceback)."""
    exe = ROOT / ".venv" / "bin" / "equiformer-export"
    if not exe.exists():
        pytest.skip("equiformer-export is not installed in .venv")
    proc = subprocess.run([str(exe), "missing.pt", "/tmp/equiformer-never-written.pt", "--device", "cuda:0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and NO_GPU in proc.stderr


def _topology(symbols=("C", "H", "O")):
    from openmm import app

    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for s in symbols:
        topology.addAtom(s, app.Element.getBySymbol(s), residue)
    return topology


@no_gpu_here
def test_python_force_refuses_cuda(pair_model):
    openmm = pytest.importorskip("openmm")
    if not hasattr(openmm, "PythonForce"):
        pytest.skip("this OpenMM has no PythonForce")
    from equiformer.openmm.pythonforce import create_python_force

    with pytest.raises(ValueError) as info:
        create_python_force(pair_model, _topology(), device="cuda")
    _check_refusal(str(info.value))
    create_python_force(pair_model, _topology(), device="auto")  # falls back to the CPU


@no_gpu_here
def test_openmm_ml_route_refuses_cuda(pair_model):
    openmm = pytest.importorskip("openmm")
    pytest.importorskip("openmmml")
    if not hasattr(openmm, "PythonForce"):
        pytest.skip("this OpenMM has no PythonForce")
    from openmmml import MLPotential

    potential = MLPotential("equiformer", modelPath=pair_model)
    with pytest.raises(ValueError) as info:
        potential.createSystem(_topology(), implementation="pythonforce", device="cuda")
    _check_refusal(str(info.value))


def test_compiled_package_runs_on_its_device_kind():
    """A .pt2 compiled for one device kind is refused on the other before its code is loaded
    (the metadata `device` says which)."""
    from equiformer.export.aoti import check_device_kind

    check_device_kind("m.pt2", {"device": "cpu"}, torch.device("cpu"))
    check_device_kind("m.pt2", {"device": "cuda:0"}, torch.device("cuda", 1))
    with pytest.raises(ValueError, match=r"compiled for cuda, and this route asks for cpu.*--device cpu"):
        check_device_kind("m.pt2", {"device": "cuda"}, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"compiled for cpu, and this route asks for cuda:0.*--device cuda"):
        check_device_kind("m.pt2", {"device": "cpu"}, torch.device("cuda", 0))


# ------------------------------------------------------------------------------------ TF32


def test_nothing_of_ours_turns_tf32_on(pair_model):
    """float32 matrix products stay in full float32 on a GPU unless the user asks (docs/gpu.md):
    importing and running the routes leaves torch's switches as they were (off by default)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    import equiformer.calculator  # noqa: F401
    import equiformer.export.aoti  # noqa: F401
    import equiformer.export.torchscript  # noqa: F401
    import equiformer.train.trainer  # noqa: F401
    from equiformer.calculator import EquiformerCalculator
    from ase import Atoms

    atoms = Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.3, 0]])
    atoms.calc = EquiformerCalculator(model=pair_model, device="auto")
    atoms.get_forces()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before
    assert before == (False, "highest"), "torch's defaults changed: revisit docs/gpu.md"


def test_no_source_sets_tf32():
    """No module of the package (nor the C++ runtime) switches TF32 or the float32 matmul
    precision: the runtime test above sees only what runs, this sees every file."""
    words = ("allow_tf32", "set_float32_matmul_precision", "fp32_precision", "setAllowTF32", "setFloat32MatmulPrecision")
    hits = []
    for folder in ("python/equiformer", "cpp", "lammps_plugin", "openmm_plugin"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".cpp", ".h", ".hpp", ".cu") and path.is_file():
                text = path.read_text(errors="replace")
                hits += [f"{path.relative_to(ROOT)}: {w}" for w in words if w in text]
    assert not hits, hits

