"""pair_style equiformer with `device cuda` (the device under test; `device cpu` in the dry run)
against `device cpu`: 1 and 2 MPI ranks, modes map and layer, float64 at 1e-10 relative
(energy, per-atom energies, forces, virial; mode ghost on 2 ranks too), float32 at 1e-4; and a short NVE run on the
device whose total energy stays as flat as on the CPU."""

import numpy as np
import pytest

from gpu_helpers import TOL, assert_parity, lammps_nve, lammps_plugin_missing, lammps_single_point, triclinic_cell, \
    write_data

pytestmark = [pytest.mark.gpu, pytest.mark.lammps]


@pytest.fixture(scope="module", autouse=True)
def _needs_lammps():
    reason = lammps_plugin_missing()
    if reason:
        pytest.skip(reason)


def _lammps_device(device: str) -> str:
    """pair_style's device keyword for the device under test: cpu, cuda (cuda:K is chosen per
    rank by the plugin: local rank modulo the GPUs)."""
    return "cpu" if device == "cpu" else "cuda"


@pytest.fixture(scope="module")
def cpu_reference(gpu_models, tmp_path_factory):
    """device cpu, 1 rank, mode map, per model dtype (computed once)."""
    symbols, positions, cell = triclinic_cell(n=40)
    out = {}
    for dtype, key in (("float64", "f64"), ("float32", "f32")):
        d = tmp_path_factory.mktemp(f"lammps_ref_{dtype}")
        write_data(str(d / "data.lmp"), symbols, positions, cell)
        out[dtype] = lammps_single_point(d, "equiformer device cpu mode map", gpu_models[key])
        assert "device cpu" in out[dtype]["stdout"]
    return out, (symbols, positions, cell)


# mode map is one rank only; on 2 ranks the plugin exchanges node features (layer) or runs
# the whole receptive field in ghost atoms (ghost)
@pytest.mark.parametrize("nprocs, mode", [(1, "map"), (1, "layer"), (2, "layer"), (2, "ghost")])
def test_single_point_matches_cpu(gpu_models, cpu_reference, device, tmp_path, nprocs, mode):
    refs, (symbols, positions, cell) = cpu_reference
    write_data(str(tmp_path / "data.lmp"), symbols, positions, cell)
    kind = _lammps_device(device)
    got = lammps_single_point(tmp_path, f"equiformer device {kind} mode {mode}", gpu_models["f64"], nprocs)
    assert f"device {kind}" in got["stdout"] and f"mode {mode}" in got["stdout"], got["stdout"][-3000:]
    for key in ("energy", "energies", "forces", "virial"):
        assert_parity(got[key], refs["float64"][key], TOL["float64"], f"LAMMPS np {nprocs} mode {mode} {key}")


def test_float32_model(gpu_models, cpu_reference, device, tmp_path):
    refs, (symbols, positions, cell) = cpu_reference
    write_data(str(tmp_path / "data.lmp"), symbols, positions, cell)
    got = lammps_single_point(tmp_path, f"equiformer device {_lammps_device(device)} mode map", gpu_models["f32"])
    assert "float32" in got["stdout"]
    for key in ("energy", "energies", "forces", "virial"):
        assert_parity(got[key], refs["float32"][key], TOL["float32"], f"LAMMPS float32 {key}")
    # and float32 is float32, not float64 by accident: it differs from the float64 model a bit
    assert not np.array_equal(got["forces"], refs["float64"]["forces"])


@pytest.mark.parametrize("nprocs", [1, 2])
def test_nve_on_the_device(gpu_models, device, tmp_path, nprocs):
    """200 steps of 0.5 fs at 600 K (32 atoms) on the device: the total energy fluctuates
    without drift, as on the CPU. Bound: 3e-4 eV/atom (the CPU NVE test's, tests/integration/
    test_lammps.py, with the analytic pair model over 3000 steps), and the potential energy
    must have moved 10x more than the total (the atoms did move). The trajectory also follows
    the CPU one (1 rank, device cpu) to 1e-6 eV."""
    symbols, positions, cell = triclinic_cell(n=32)
    runs = {}
    for name, kind, np_ in (("cpu", "cpu", 1), ("device", _lammps_device(device), nprocs)):
        d = tmp_path / name
        d.mkdir()
        write_data(str(d / "data.lmp"), symbols, positions, cell)
        runs[name] = lammps_nve(d, f"equiformer device {kind}", gpu_models["f64"], 200, np_)
    rows = runs["device"]
    assert rows.shape == (201, 2)
    et, pe = rows[:, 0], rows[:, 1]
    drift = np.abs(et - et[0]).max() / 32
    assert drift < 3e-4, f"energy deviation {drift} eV/atom on the device"
    assert np.ptp(pe) > 10 * np.ptp(et), (np.ptp(pe), np.ptp(et))
    assert np.abs(runs["device"] - runs["cpu"]).max() < 1e-6, np.abs(runs["device"] - runs["cpu"]).max()
