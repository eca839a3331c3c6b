"""Committee files in Python (docs/committees.md): export from a run folder, the file against
its members' separately exported files, the ASE calculator's extra keys, equiformer-select
and equiformer-eval's calibration, and the export CLI's errors.

TorchScript optimises a committee's graph (K members unrolled) on its first calls after each
load, for tens of seconds on a busy 2-core machine: the tests share loaded files and
calculators, and the committee has 2 members."""

import json
import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from equiformer.calculator import EquiformerCalculator
from equiformer.cli.evaluate import main as eval_main
from equiformer.cli.export import main as export_main
from equiformer.cli.select import main as select_main
from equiformer.data.neighbors import neighbor_list
from equiformer.export.contract import read_metadata
from equiformer.export.torchscript import export_model
from equiformer.model import build_model
from equiformer.model_info import ModelInfo
from equiformer.train.checkpoint import build_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow  # minutes of TorchScript compilation (module docstring)

SPECIES = ["H", "C", "O"]
K = 2


def make_member(seed, **hp):
    torch.manual_seed(seed)
    model = build_model({"preset": "tiny", "species": SPECIES, "cutoff": 4.0, **hp}, dtype=torch.float64)
    model.set_energy_normalization(torch.tensor([-0.5, -1.5, -2.0]), 1.0 + 0.2 * seed, offset=0.3 * seed)
    return model.eval()


def write_checkpoint(model, path):
    norm = {"atom_ref": model.atom_ref.tolist(), "scale": float(model.energy_scale),
            "offset": float(model.energy_offset)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(build_checkpoint(model, model.state_dict(), norm), path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A committee run folder (the trainer's layout), its committee file written by the CLI,
    and each member exported alone."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("committee")
    run = d / "run"
    members = [make_member(seed) for seed in range(K)]
    ckpts = [write_checkpoint(m, str(run / f"member-{k}" / "best.pt")) for k, m in enumerate(members)]
    (run / "committee.yaml").write_text(f"size: {K}\n")
    out = {"dir": d, "run": str(run), "ckpts": ckpts, "committee": str(d / "committee.pt"),
           "singles": [str(d / f"single-{k}.pt") for k in range(K)]}
    assert export_main([out["run"], out["committee"]]) == 0
    for m, path in zip(members, out["singles"]):
        export_model(m, path, "float64")
    torch.set_num_threads(old)
    return out


@pytest.fixture(scope="module")
def loaded(files):
    """The committee file and the members' own files, loaded once."""
    return {"committee": torch.jit.load(files["committee"]), "singles": [torch.jit.load(p) for p in files["singles"]]}


@pytest.fixture(scope="module")
def calcs(files):
    return {"committee": EquiformerCalculator(model=files["committee"]),
            "singles": [EquiformerCalculator(model=p) for p in files["singles"]]}


def molecule(seed=0, n=7, amplitude=0.0):
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [1.2, 0, 0], [0, 1.3, 0], [0, 0, 1.1], [1.1, 1.2, 0.2], [-1.0, 0.3, 0.4],
                     [0.4, -1.1, 0.8]], dtype=float)[:n]
    return Atoms(["C", "O", "H", "H", "C", "O", "H"][:n], positions=base + amplitude * rng.normal(size=(n, 3)))


def contract_inputs(atoms, cutoff=4.0):
    pos = atoms.get_positions()
    edge_index, _, _ = neighbor_list(pos, cutoff)
    species = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    return species, torch.from_numpy(edge_index), torch.from_numpy(pos[edge_index[0]] - pos[edge_index[1]])


def test_metadata(files):
    meta = read_metadata(files["committee"])
    assert meta["committee_size"] == str(K)
    info = ModelInfo.read(files["committee"])
    assert info.committee_size == K
    assert info.energy_offset == pytest.approx(np.mean([0.3 * k for k in range(K)]), abs=1e-15)
    assert info.hyperparameters == ModelInfo.read(files["singles"][0]).hyperparameters
    assert ModelInfo.read(files["singles"][0]).committee_size == 1
    assert "committee_size" not in read_metadata(files["singles"][0]) or not read_metadata(files["singles"][0])[
        "committee_size"]


def test_deviations_equal_numpy_over_the_separate_exports(files, loaded):
    """The file's member outputs, and the deviations from them, equal an independent NumPy
    computation over the members' own exported files (float64, 1e-10)."""
    from equiformer.committee import deviations

    species, edge_index, vec = contract_inputs(molecule(1, amplitude=0.1))
    n = len(species)
    got = loaded["committee"](species, edge_index, vec, n)
    offset = ModelInfo.read(files["committee"]).energy_offset
    singles = [single(species, edge_index, vec, n) for single in loaded["singles"]]
    f = np.stack([s["forces"].numpy() for s in singles])
    w = np.stack([s["virial"].numpy() for s in singles])
    e = np.array([float(s["energy"]) + 0.3 * k for k, s in enumerate(singles)])  # member totals
    np.testing.assert_allclose(got["member_forces"].numpy(), f, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["member_virials"].numpy(), w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["member_energies"].numpy() + offset, e, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["forces"].numpy(), f.mean(0), rtol=0, atol=1e-10)
    assert float(got["energy"]) + offset == pytest.approx(e.mean(), abs=1e-10)
    sigma = np.sqrt(np.mean(np.sum((f - f.mean(0)) ** 2, axis=2), axis=0))
    devi_v = np.sqrt(np.mean((w - w.mean(0)) ** 2, axis=0)).ravel() / n
    expected = {"max_devi_f": sigma.max(), "min_devi_f": sigma.min(), "avg_devi_f": sigma.mean(),
                "max_devi_v": devi_v.max(), "min_devi_v": devi_v.min(), "avg_devi_v": devi_v.mean(),
                "devi_e": np.sqrt(np.mean((e - e.mean()) ** 2)) / n}
    devi = deviations(got["member_forces"].numpy(), got["member_virials"].numpy(), got["member_energies"].numpy())
    for key, value in expected.items():
        assert devi[key] == pytest.approx(value, abs=1e-10), key
    np.testing.assert_allclose(devi["sigma_F"], sigma, rtol=0, atol=1e-10)
    assert devi["max_devi_f"] > 1e-3  # different members do disagree


def test_chunked_route_of_the_file(loaded):
    species, edge_index, vec = contract_inputs(molecule(2, amplitude=0.1))
    committee = loaded["committee"]
    one_pass = committee(species, edge_index, vec, 5)
    threshold = committee.chunked_edges
    committee.chunked_edges = 0
    for m in committee.members.children():
        m.schedule.edge_chunk = 9
    chunked = committee(species, edge_index, vec, 5)
    committee.chunked_edges = threshold
    for m in committee.members.children():
        m.schedule.edge_chunk = 2048
    for key, value in one_pass.items():
        torch.testing.assert_close(chunked[key], value, rtol=1e-12, atol=1e-12)


def test_calculator_keys(calcs):
    atoms = molecule(3, amplitude=0.1)
    calc = calcs["committee"]
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    singles = []
    for single in calcs["singles"]:
        a = atoms.copy()
        a.calc = single
        singles.append((a.get_potential_energy(), a.get_forces()))
        assert "energy_std" not in a.calc.implemented_properties
    e = np.array([s[0] for s in singles])
    f = np.stack([s[1] for s in singles])
    assert energy == pytest.approx(e.mean(), abs=1e-10)
    np.testing.assert_allclose(forces, f.mean(0), atol=1e-10)
    assert calc.get_property("energy_std", atoms) == pytest.approx(e.std(), abs=1e-10)
    np.testing.assert_allclose(calc.get_property("member_energies", atoms), e, atol=1e-10)
    np.testing.assert_allclose(calc.get_property("member_forces", atoms), f, atol=1e-10)
    sigma = np.sqrt(np.mean(np.sum((f - f.mean(0)) ** 2, axis=2), axis=0))
    np.testing.assert_allclose(calc.get_property("forces_std", atoms), sigma, atol=1e-10)
    assert calc.results["model_deviation"]["max_devi_f"] == pytest.approx(sigma.max(), abs=1e-10)


@pytest.fixture(scope="module")
def trajectory(files, calcs):
    """Frames shaken more and more, and their max force deviation."""
    frames = [molecule(seed, amplitude=0.05 * seed) for seed in range(8)]
    calc = calcs["committee"]
    values = []
    for atoms in frames:
        calc.calculate(atoms, ["energy", "forces"])
        values.append(calc.results["model_deviation"]["max_devi_f"])
    path = str(files["dir"] / "traj.extxyz")
    write(path, frames)
    return path, np.array(values)


def test_select_counts_frames_at_the_bounds(files, trajectory, tmp_path, capsys):
    path, values = trajectory
    ordered = np.sort(values)
    # between frames (another load of the file may round differently); exact bounds: the unit test
    lo, hi = (ordered[1] + ordered[2]) / 2, (ordered[5] + ordered[6]) / 2
    out = str(tmp_path / "cand.extxyz")
    argv = [path, "--model", files["committee"], "--lo", repr(float(lo)), "--hi", repr(float(hi)), "-o", out]
    assert select_main(argv) == 0
    printed = capsys.readouterr().out
    assert "accurate" in printed and "eV/Angstrom" in printed
    assert f"accurate   (max_devi_f < {lo:g}):        2" in printed
    assert f"failed     (max_devi_f >= {hi:g}):       2" in printed
    picked = read(out, ":")
    assert len(picked) == 4
    got = sorted(a.info["max_devi_f"] for a in picked)
    np.testing.assert_allclose(got, ordered[2:6], rtol=1e-6)  # as extxyz writes them
    assert picked[0].arrays["sigma_f"].shape == (len(picked[0]),)
    assert np.max(picked[0].arrays["sigma_f"]) == pytest.approx(picked[0].info["max_devi_f"], rel=1e-6)
    # an existing output is never replaced without --overwrite
    assert select_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(read(out, ":")) == 4


def test_select_refuses_a_single_model(files, trajectory, tmp_path, capsys):
    assert select_main([trajectory[0], "--model", files["singles"][0], "--lo", "0.1", "--hi", "0.2",
                        "-o", str(tmp_path / "c.extxyz")]) == 2
    assert "single model, not a committee" in capsys.readouterr().err
    assert not (tmp_path / "c.extxyz").exists()


def test_eval_reports_members_and_calibration(files, calcs, tmp_path, capsys):
    """References from member 0 itself: its errors vanish, the others' do not; the calibration
    is in the report, the JSON and a plot."""
    frames = []
    ref = calcs["singles"][0]
    for seed in range(4):
        atoms = molecule(seed, amplitude=0.1)
        ref.calculate(atoms, ["energy", "forces"])
        atoms.calc = SinglePointCalculator(atoms, energy=ref.results["energy"], forces=ref.results["forces"])
        frames.append(atoms)
    data = str(tmp_path / "test.extxyz")
    write(data, frames)
    report = str(tmp_path / "m.json")
    assert eval_main([files["committee"], data, "--json", report, "--plots", str(tmp_path / "plots"),
                      "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "each member:" in printed and "Pearson" in printed and "Spearman" in printed
    summary = json.load(open(report))
    assert summary["committee_size"] == K and len(summary["members"]) == K
    # member 0 is off only by the references' rounding in extxyz
    assert summary["members"][0]["forces_mae"] < 1e-7 and summary["members"][1]["forces_mae"] > 1e-4
    cal = summary["calibration"]
    assert cal["num_atoms"] == 4 * 7 and -1.0 <= cal["pearson"] <= 1.0 and -1.0 <= cal["spearman"] <= 1.0
    assert os.path.getsize(tmp_path / "plots" / "calibration_forces.png") > 0


def _export_error(capsys, argv):
    assert export_main(argv) == 2
    return capsys.readouterr().err


def test_export_errors(files, tmp_path, capsys):
    out = str(tmp_path / "c.pt")
    a, b = files["ckpts"][:2]
    other = write_checkpoint(make_member(7, cutoff=3.5), str(tmp_path / "short" / "best.pt"))
    assert "cutoff" in (err := _export_error(capsys, [a, b, other, out])) and other in err and a in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    err = _export_error(capsys, [a, str(garbage), out])
    assert "committee member 1" in err and "garbage.pt" in err
    err = _export_error(capsys, [a, str(tmp_path / "gone.pt"), out])
    assert "committee member 1" in err and "does not exist" in err
    assert "not available yet: export a TorchScript .pt" in _export_error(capsys, [a, b, str(tmp_path / "c.pt2")])
    (tmp_path / "run" / "member-0").mkdir(parents=True)
    (tmp_path / "run" / "committee.yaml").write_text("size: 2\n")
    assert "member 0 has no best.pt" in _export_error(capsys, [str(tmp_path / "run"), out])
    assert "exists; pass --overwrite" in _export_error(capsys, [a, b, files["committee"]])
    assert not os.path.exists(out)
