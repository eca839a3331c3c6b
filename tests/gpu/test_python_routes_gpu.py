"""The Python routes on the device under test against the CPU: the ASE calculator, an exported
model opened with open_engine_model, equiformer-export --device, equiformer-eval --device,
training (run.device) and the OpenMM PythonForce. float64 at 1e-10 relative (energy, forces,
virial / stress), float32 at 1e-4."""

import os

import numpy as np
import pytest
import torch

from gpu_helpers import EV_KJ, TOL, assert_parity, molecule, triclinic_cell

pytestmark = pytest.mark.gpu


def _calculator_results(calc, symbols, positions, cell):
    from ase import Atoms

    atoms = Atoms(symbols, positions=positions, cell=cell, pbc=cell is not None)
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces()}
    if cell is not None:
        out["virial"] = -atoms.get_stress(voigt=False) * atoms.get_volume()
    return out, atoms.calc


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_calculator(calculators, device, device_kind, dtype, kind):
    if kind == "periodic":
        symbols, positions, cell = triclinic_cell(n=40)
    else:
        (symbols, positions), cell = molecule(), None
    ref, _ = _calculator_results(calculators(dtype, "cpu"), symbols, positions, cell)
    got, calc = _calculator_results(calculators(dtype, device), symbols, positions, cell)
    assert calc.device.type == device_kind
    for key in ref:
        assert_parity(got[key], ref[key], TOL[dtype], f"calculator {dtype} {kind} {key}")


def _engine_inputs(model, dtype):
    from equiformer.export.torchscript import random_cluster

    return random_cluster(model, 48, dtype, "cpu")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exported_model(gpu_models, engines, device, device_kind, dtype):
    """The engine contract's outputs (energy, per-atom energies, forces, virial, per-atom
    virial) of the .pt file opened on the device, with 40 of 48 atoms local, against the eager
    model on the CPU."""
    species, edge_index, vectors = _engine_inputs(gpu_models["model"], getattr(torch, dtype))
    ref = gpu_models["eager"][dtype](species, edge_index, vectors, 40)
    got = engines(dtype, device)(species.to(device), edge_index.to(device), vectors.to(device), 40)
    for key in ("energy", "atom_energies", "forces", "virial", "atom_virial"):
        assert got[key].device.type == device_kind, key
        assert_parity(got[key].cpu().numpy(), ref[key].numpy(), TOL[dtype], f".pt {dtype} {key}")


def test_exported_model_chunked_route(gpu_models, engines, device):
    """The memory schedule of big graphs (forced here, several chunks) on the device."""
    species, edge_index, vectors = _engine_inputs(gpu_models["model"], torch.float64)
    ref = gpu_models["eager"]["float64"](species, edge_index, vectors, 48)
    engine = engines("float64", device)
    saved = (engine.chunked_edges, engine.schedule.edge_chunk)
    engine.chunked_edges, engine.schedule.edge_chunk = 0, max(1, int(edge_index.shape[1]) // 4)
    try:
        got = engine(species.to(device), edge_index.to(device), vectors.to(device), 48)
    finally:
        engine.chunked_edges, engine.schedule.edge_chunk = saved
    for key in ("energy", "forces", "virial"):
        assert_parity(got[key].cpu().numpy(), ref[key].numpy(), TOL["float64"], f"chunked {key}")


def test_export_on_the_device(gpu_models, device, device_kind, tmp_path):
    """equiformer-export --device: traced and checked on the device, recorded in the metadata;
    the file gives the eager model's numbers."""
    from equiformer.export.contract import open_engine_model, read_metadata
    from equiformer.export.torchscript import export_model

    path = str(tmp_path / "on_device.pt")
    meta = export_model(gpu_models["model"], path, "float64", device=device)
    assert meta["device"].startswith(device_kind)
    assert read_metadata(path)["device"] == meta["device"]
    species, edge_index, vectors = _engine_inputs(gpu_models["model"], torch.float64)
    ref = gpu_models["eager"]["float64"](species, edge_index, vectors, 48)
    got = open_engine_model(path, device)(species.to(device), edge_index.to(device), vectors.to(device), 48)
    for key in ("energy", "forces", "virial"):
        assert_parity(got[key].cpu().numpy(), ref[key].numpy(), TOL["float64"], f"export on {device}, {key}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint (2 epochs of the tiny preset on EMT copper, on the CPU) and its data."""
    import sys
    from pathlib import Path

    from ase.io import write

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "train"))
    from train_helpers import emt_copper, tiny_config

    from equiformer.train.config import resolve_config
    from equiformer.train.trainer import train

    d = tmp_path_factory.mktemp("gpu_train")
    data = d / "cu.xyz"
    write(str(data), emt_copper(8))
    summary = train(resolve_config(tiny_config(data, d / "cpu")), log=lambda *a: None)
    return {"data": str(data), "config": tiny_config, "dir": d, "summary": summary,
            "checkpoint": str(d / "cpu" / "best.pt")}


def test_evaluate_cli(trained, device):
    """equiformer-eval --device: the same metrics as on the CPU."""
    from equiformer.cli.evaluate import evaluate

    ref, _ = evaluate(trained["checkpoint"], [trained["data"]], device="cpu", batch_size=3)
    got, _ = evaluate(trained["checkpoint"], [trained["data"]], device=device, batch_size=3)
    keys = [k for k in ref if k.endswith("_mae") or k.endswith("_rmse")]
    assert {"energy_mae", "forces_mae", "stress_mae"} <= set(keys)
    for k in keys:
        assert_parity(got[k], ref[k], TOL["float64"], f"equiformer-eval {k}")


def test_training_on_the_device(trained, device):
    """Two epochs with run.device on the device reach the CPU run's weights and losses (float64;
    only the summation order of the device's reductions differs)."""
    from equiformer.train.checkpoint import load_checkpoint
    from equiformer.train.config import resolve_config
    from equiformer.train.trainer import train

    out = trained["dir"] / f"on_{device.replace(':', '_')}"
    train(resolve_config(trained["config"](trained["data"], out, run={"device": device})), log=lambda *a: None)
    ref = load_checkpoint(str(trained["dir"] / "cpu" / "last.pt"))["model_state_dict"]
    got = load_checkpoint(str(out / "last.pt"))["model_state_dict"]
    for name, value in ref.items():
        if value.is_floating_point():
            assert_parity(got[name].cpu().numpy(), value.numpy(), 1e-8, f"trained weight {name}")


def test_python_force(gpu_models, calculators, device):
    """The OpenMM PythonForce route with the model on the device (periodic), against the same
    route on the CPU."""
    openmm = pytest.importorskip("openmm")
    if not hasattr(openmm, "PythonForce"):
        pytest.skip("this OpenMM has no PythonForce")
    from gpu_helpers import openmm_evaluate, system_with, topology

    from equiformer.openmm.pythonforce import create_python_force

    symbols, positions, cell = triclinic_cell(n=32)
    box = cell / 10.0
    results = {}
    for where in ("cpu", device):
        force = create_python_force(gpu_models["f64"], topology(symbols, box), device=where)
        results[where] = openmm_evaluate(system_with(force, symbols, box), positions / 10.0, "Reference", box)
    (e_ref, f_ref), (e_got, f_got) = results["cpu"], results[device]
    assert abs(e_ref) > 0 and np.abs(f_ref).max() > 0
    assert_parity(e_got, e_ref, TOL["float64"], "PythonForce energy")
    assert_parity(f_got, f_ref, TOL["float64"], "PythonForce forces")
    # and the CPU route is the calculator's numbers (kJ/mol, nm)
    ref, _ = _calculator_results(calculators("float64", "cpu"), symbols, positions, cell)
    assert_parity(e_ref, ref["energy"] * EV_KJ, 1e-9, "PythonForce vs calculator")


@pytest.mark.skipif(os.environ.get("EQUIFORMER_TEST_PT2") != "1",
                    reason="compiling a .pt2 package takes minutes: set EQUIFORMER_TEST_PT2=1 to include it")
def test_compiled_package_on_the_device(gpu_models, device, device_kind, tmp_path):
    """equiformer-export MODEL.pt2 --device: compiled for the device, it gives the eager
    model's numbers there, by one graph and by its layer entries' chunked route, and is
    refused on the other device kind."""
    from equiformer.export.contract import open_engine_model
    from equiformer.export.torchscript import export_model

    path = str(tmp_path / "on_device.pt2")
    meta = export_model(gpu_models["model"], path, "float64", device=device)
    assert meta["device"].startswith(device_kind)
    species, edge_index, vectors = _engine_inputs(gpu_models["model"], torch.float64)
    ref = gpu_models["eager"]["float64"](species, edge_index, vectors, 40)
    engine = open_engine_model(path, device)
    for route in ("one graph", "chunked"):
        if route == "chunked":  # every graph, in chunks of about 100 edges
            engine.chunked_edges, engine.chunked.edge_chunk = 0, 100
        got = engine(species.to(device), edge_index.to(device), vectors.to(device), 40)
        for key in ("energy", "atom_energies", "forces", "virial", "atom_virial"):
            assert got[key].device.type == device_kind, key
            assert_parity(got[key].cpu().numpy(), ref[key].numpy(), TOL["float64"], f".pt2 ({route}) on {device}, {key}")
    if device_kind == "cuda":
        with pytest.raises(ValueError, match="compiled for cuda"):
            open_engine_model(path, "cpu")
