"""The exported TorchScript model (docs/model-format.md), the ASE calculator and the
equiformer-export CLI: agreement with the eager model, the ghost-atom form used by domain
decomposition engines, layer-by-layer calls, metadata, units and clear errors on bad input."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from equiformer.calculator import EquiformerCalculator
from equiformer.cli.export import main as export_main
from equiformer.data import keys
from equiformer.data.atoms import atoms_to_graph
from equiformer.data.neighbors import neighbor_list
from equiformer.export import torchscript as ts
from equiformer.export.contract import FORMAT, FORMAT_VERSION, engine_outputs, read_metadata
from equiformer.export.torchscript import export_model
from equiformer.model import build_model
from equiformer.train.checkpoint import build_checkpoint, model_from_checkpoint, save_checkpoint
from equiformer.units import EV_IN_KCAL_PER_MOL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from damaged_files import flip_bit  # noqa: E402
from model_variants import random_molecule, strain_derivative  # noqa: E402

SPECIES = ["H", "C", "O"]
ATOM_REF = [-0.5, -1.5, -2.0]
SCALE = 1.7


def make_model(seed=0, **hp):
    torch.manual_seed(seed)
    model = build_model({"preset": "tiny", "species": SPECIES, **hp}, dtype=torch.float64)
    model.set_energy_normalization(torch.tensor(ATOM_REF), SCALE)
    return model.eval()


def write_checkpoint(model, path):
    norm = {"atom_ref": model.atom_ref.tolist(), "scale": float(model.energy_scale)}
    save_checkpoint(build_checkpoint(model, model.state_dict(), norm), path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint and its float64 / float32 exports (written once for the module)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(make_model(), d / "ckpt.pt")
    out = {"dir": d, "ckpt": ckpt, "f64": str(d / "model64.pt"), "f32": str(d / "model32.pt")}
    meta64 = export_model(model_from_checkpoint(ckpt), out["f64"], dtype="float64")
    meta32 = export_model(model_from_checkpoint(ckpt), out["f32"], dtype="float32")
    out["meta64"], out["meta32"] = meta64, meta32
    torch.set_num_threads(old)
    return out


@pytest.fixture(scope="module")
def eager(files):
    return model_from_checkpoint(files["ckpt"])


@pytest.fixture(scope="module")
def loaded(files):
    # (a freshly loaded TorchScript module spends its first calls profiling: load once)
    return torch.jit.load(files["f64"])


@pytest.fixture(scope="module")
def loaded32(files):
    return torch.jit.load(files["f32"])


@pytest.fixture(scope="module")
def calc64(files):
    return EquiformerCalculator(model=files["f64"])


@pytest.fixture(scope="module")
def calc32(files):
    return EquiformerCalculator(model=files["f32"])


@pytest.fixture(scope="module")
def calc_ckpt(files):
    return EquiformerCalculator(checkpoint=files["ckpt"])


def molecule(seed=0, n=7, box=3.0, min_dist=0.9):
    return random_molecule(seed, n, box, min_dist, SPECIES)


def triclinic():
    cell = np.array([[3.6, 0.0, 0.0], [0.7, 3.4, 0.0], [-0.4, 0.5, 3.8]])
    frac = np.array([[0.01, 0.02, 0.0], [0.5, 0.45, 0.1], [0.25, 0.7, 0.55], [0.8, 0.2, 0.6]])
    return Atoms("CHOH", scaled_positions=frac, cell=cell, pbc=True)


def small_cell():
    """Smaller than the cutoff (5) in every direction: every atom sees its own images."""
    return Atoms("CO", scaled_positions=[[0.0, 0.0, 0.0], [0.45, 0.5, 0.55]],
                 cell=[[2.6, 0.0, 0.0], [0.3, 2.5, 0.0], [0.2, -0.4, 2.7]], pbc=True)


def contract_inputs(atoms, cutoff, dtype=torch.float64):
    pbc = atoms.get_pbc()
    ei, shifts, _ = neighbor_list(atoms.positions, cutoff, atoms.cell.array if pbc.any() else None, pbc)
    vec = atoms.positions[ei[0]] - atoms.positions[ei[1]] + shifts
    species = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    return species, torch.from_numpy(ei), torch.tensor(vec, dtype=dtype)


def eager_reference(model, atoms):
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    out = model(g, compute_stress=True)
    return {k: v.detach() for k, v in out.items()}


def assert_close(a, b, rel, what=""):
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.float64).detach()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b, dtype=torch.float64).detach()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= rel * scale, f"{what}: max deviation {err:.3g} > {rel * scale:.3g}"


# ----------------------------------------------------------------------------- metadata


def test_metadata(files, eager):
    meta = read_metadata(files["f64"])
    assert meta["format"] == FORMAT == "equiformer-model"
    assert meta["format_version"] == str(FORMAT_VERSION) == "1"
    assert float(meta["cutoff"]) == 5.0
    assert meta["num_layers"] == "2"
    # edge-degree embedding + 2 blocks = 3 hops of 5 Angstrom
    assert float(meta["interaction_range"]) == 15.0
    assert meta["species_symbols"] == "H C O"
    assert meta["atomic_numbers"] == "1 6 8"
    assert meta["length_unit"] == "Angstrom" and meta["energy_unit"] == "eV"
    assert meta["dtype"] == "float64" and meta["device"] == "cpu"
    assert float(meta["energy_offset"]) == 0.0
    assert float(meta["min_distance"]) == 0.5  # Angstrom, the default
    assert meta["package_version"]
    hp = json.loads(meta["hyperparameters"])
    assert hp == json.loads(json.dumps(eager.hparams))
    assert read_metadata(files["f32"])["dtype"] == "float32"
    # export_model returns the same text
    assert files["meta64"] == meta


# ----------------------------------------------------------------------------- exported == eager


@pytest.mark.parametrize("structure", ["molecule", "triclinic", "small_cell"])
def test_loaded_equals_eager(loaded, eager, structure):
    atoms = {"molecule": molecule, "triclinic": triclinic, "small_cell": small_cell}[structure]()
    ref = eager_reference(eager, atoms)
    species, ei, vec = contract_inputs(atoms, 5.0)
    if structure == "small_cell":
        assert bool(((ei[0] == ei[1])).any())  # self images present
    out = loaded(species, ei, vec, len(atoms))
    for k in ("energy", "atom_energies", "forces", "virial", "atom_virial"):
        assert out[k].dtype == torch.float64
    assert_close(out["energy"], ref[keys.ENERGY][0], 1e-10, "energy")
    assert_close(out["atom_energies"], ref[keys.ATOM_ENERGIES], 1e-10, "atom energies")
    assert_close(out["forces"], ref[keys.FORCES], 1e-10, "forces")
    assert_close(out["virial"], ref[keys.VIRIAL][0], 1e-10, "virial")
    assert_close(out["atom_virial"].sum(0), out["virial"], 1e-12, "atom virial sum")


@pytest.mark.parametrize("structure", ["molecule", "triclinic", "small_cell"])
def test_calculator_equals_eager(calc64, calc_ckpt, eager, structure):
    atoms = {"molecule": molecule, "triclinic": triclinic, "small_cell": small_cell}[structure]()
    ref = eager_reference(eager, atoms)
    for calc in (calc64, calc_ckpt):
        atoms.calc = calc
        assert_close(atoms.get_potential_energy(), ref[keys.ENERGY][0], 1e-10, "energy")
        assert_close(atoms.get_potential_energies(), ref[keys.ATOM_ENERGIES], 1e-10, "energies")
        assert_close(atoms.get_forces(), ref[keys.FORCES], 1e-10, "forces")
        if atoms.pbc.all():
            s = ref[keys.STRESS][0].numpy()
            voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            assert_close(atoms.get_stress(), voigt, 1e-10, "stress")


# ----------------------------------------------------------------------------- ghost atoms


def ghost_form(atoms, cutoff, radius):
    """Local atoms plus every periodic image within `radius` of a local atom as ghost nodes
    (n_local = N); edges from a plain non-periodic neighbour list over all nodes."""
    pos, cell = atoms.positions, atoms.cell.array
    n = len(atoms)
    reach = int(np.ceil(radius / min(np.abs(np.linalg.eigvalsh(cell @ cell.T)) ** 0.5))) + 1
    ghost_pos, owner = [], []
    rng = range(-reach, reach + 1)
    for a in rng:
        for b in rng:
            for c in rng:
                if a == b == c == 0:
                    continue
                shifted = pos + np.array([a, b, c]) @ cell
                d = np.linalg.norm(shifted[:, None, :] - pos[None, :, :], axis=2).min(axis=1)
                for i in np.nonzero(d <= radius)[0]:
                    ghost_pos.append(shifted[i])
                    owner.append(i)
    all_pos = np.concatenate([pos, np.array(ghost_pos)])
    owner = np.concatenate([np.arange(n), np.array(owner, dtype=np.int64)])
    ei, _, _ = neighbor_list(all_pos, cutoff)
    vec = all_pos[ei[0]] - all_pos[ei[1]]
    species = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])[torch.from_numpy(owner)]
    return species, torch.from_numpy(ei), torch.tensor(vec), torch.from_numpy(owner)


def test_ghost_atoms_equal_periodic_shifts():
    """LAMMPS-style ghosts give the energy of the periodic system, and (after summing ghost
    forces onto their owners) its forces and virial. A short cutoff keeps the ghost shell
    small; the contract's forward is called directly (eager: the scripted forward equals it,
    see test_loaded_equals_eager)."""
    model = make_model(seed=3, cutoff=2.5)
    engine = ts.EquiformerEngineModel(model)
    atoms = triclinic()
    n = len(atoms)
    periodic = engine(*contract_inputs(atoms, 2.5), n)
    # a ghost at hop distance <= num_layers needs its own complete neighbourhood
    species, ei, vec, owner = ghost_form(atoms, 2.5, radius=(model.num_layers + 1) * 2.5 + 0.1)
    assert species.shape[0] > 10 * n
    ghost = engine(species, ei, vec, n)
    assert_close(ghost["energy"], periodic["energy"], 1e-10, "energy")
    assert_close(ghost["atom_energies"][:n], periodic["atom_energies"], 1e-10, "local atom energies")
    folded = torch.zeros(n, 3, dtype=torch.float64).index_add(0, owner, ghost["forces"])
    assert_close(folded, periodic["forces"], 1e-10, "forces")
    assert ghost["forces"][n:].abs().max() > 1e-6  # ghosts do carry force contributions
    assert_close(ghost["virial"], periodic["virial"], 1e-10, "virial")
    folded_av = torch.zeros(n, 3, 3, dtype=torch.float64).index_add(0, owner, ghost["atom_virial"])
    assert_close(folded_av.sum(0), periodic["virial"], 1e-10, "atom virial")


# ----------------------------------------------------------------------------- degenerate graphs


def test_atom_without_neighbours(loaded, eager):
    atoms = molecule(n=4) + Atoms("O", positions=[[40.0, 0.0, 0.0]])
    ref = eager_reference(eager, atoms)
    species, ei, vec = contract_inputs(atoms, 5.0)
    assert not bool((ei == 4).any())
    out = loaded(species, ei, vec, len(atoms))
    assert_close(out["energy"], ref[keys.ENERGY][0], 1e-10, "energy")
    assert torch.all(out["forces"][4] == 0) and torch.all(out["atom_virial"][4] == 0)
    lone = loaded(species[4:], torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64), 1)
    assert_close(out["atom_energies"][4], lone["atom_energies"][0], 1e-12, "isolated atom energy")


def test_structure_without_edges(calc64, loaded, eager):
    species = torch.tensor([0, 1, 2, 2])
    ei = torch.zeros(2, 0, dtype=torch.long)
    vec = torch.zeros(0, 3, dtype=torch.float64)
    out = loaded(species, ei, vec, 4)
    assert out["forces"].shape == (4, 3) and torch.all(out["forces"] == 0)
    assert out["virial"].shape == (3, 3) and torch.all(out["virial"] == 0)
    assert out["atom_virial"].shape == (4, 3, 3)
    assert torch.isfinite(out["atom_energies"]).all()
    assert_close(out["energy"], out["atom_energies"].sum(), 1e-12, "energy")
    assert_close(out["atom_energies"], eager.atom_energies(species, ei, vec).detach(), 1e-12, "eager")
    # n_local < N: only local atoms are counted
    assert_close(loaded(species, ei, vec, 2)["energy"], out["atom_energies"][:2].sum(), 1e-12, "n_local")
    # the calculator on atoms farther apart than the cutoff
    atoms = Atoms("HCO", positions=[[0, 0, 0], [8, 0, 0], [0, 8, 0]])
    atoms.calc = calc64
    assert np.all(atoms.get_forces() == 0)


_PATHS = {}


@pytest.fixture(autouse=True, scope="module")
def _remember_paths(files):
    _PATHS.update(files)


# ----------------------------------------------------------------------------- float32


def test_float32_export(loaded, loaded32, calc64, calc32):
    m32, m64 = loaded32, loaded
    for atoms in (molecule(), triclinic()):
        s, ei, vec = contract_inputs(atoms, 5.0)
        ref = m64(s, ei, vec, len(atoms))
        out = m32(s, ei, vec.to(torch.float32), len(atoms))
        for k in ("energy", "atom_energies", "forces", "virial"):
            assert out[k].dtype == torch.float64, k
        assert_close(out["energy"], ref["energy"], 1e-5, "energy")
        assert_close(out["forces"], ref["forces"], 1e-4, "forces")
        assert_close(out["virial"], ref["virial"], 1e-4, "virial")
    atoms = triclinic()
    atoms.calc = calc32
    e32, f32 = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = calc64
    assert abs(e32 - atoms.get_potential_energy()) < 1e-5 * max(1.0, abs(e32))
    assert np.abs(f32 - atoms.get_forces()).max() < 1e-4


# ----------------------------------------------------------------------------- layer by layer


def layered(module, species, ei, vec, num_layers):
    """Energies and forces evaluated as an engine with per-layer exchange does (the C++
    runtime's small-graph path): edge features once, each layer a separate call whose input
    is a fresh leaf (what crosses ranks), the backward layer by layer with grad_outputs,
    gradients with respect to the features summed and taken to the edge vectors once."""
    n = species.shape[0]
    vec_req = vec.clone().requires_grad_(True)
    features = module.edge_features(vec_req)
    leaves = [f.detach().requires_grad_(True) for f in features]
    inputs, outputs = [], []
    x = torch.zeros(0)
    for s in range(num_layers + 2):
        inputs.append(x.detach().requires_grad_(True))
        outputs.append(module.layer(s, species, inputs[-1], ei, leaves))
        x = outputs[-1]
    e_atoms = outputs[-1]
    grad_features = [torch.zeros_like(f) for f in features]
    g = torch.zeros_like(e_atoms)
    g[:n] = 1.0
    for s in reversed(range(num_layers + 2)):
        wrt = ([inputs[s]] if s > 0 else []) + leaves
        grads = torch.autograd.grad([outputs[s]], wrt, grad_outputs=[g], allow_unused=True)
        if s > 0:
            g = grads[0]
            assert g is not None and g.abs().max() > 0
            grads = grads[1:]
        for total, part in zip(grad_features, grads):
            if part is not None:
                total += part
    used = [(f, gf) for f, gf in zip(features, grad_features) if f.requires_grad]
    (g_vec,) = torch.autograd.grad([f for f, _ in used], [vec_req], grad_outputs=[gf for _, gf in used])
    return e_atoms.detach(), engine_outputs(ei, vec, g_vec, e_atoms.detach(), n)


def test_layer_by_layer_reproduces_forward(loaded, eager):
    atoms = triclinic()
    species, ei, vec = contract_inputs(atoms, 5.0)
    n = len(atoms)
    ref = loaded(species, ei, vec, n)
    num_layers = int(read_metadata(_PATHS["f64"])["num_layers"])
    for module in (loaded, ts.EquiformerEngineModel(eager)):
        e_atoms, out = layered(module, species, ei, vec, num_layers)
        assert e_atoms.dtype == torch.float64
        assert_close(e_atoms, ref["atom_energies"], 1e-10, "atom energies")
        assert_close(out["forces"], ref["forces"], 1e-10, "layered forces")
        assert_close(out["virial"], ref["virial"], 1e-10, "layered virial")
    with pytest.raises(Exception, match="out of range"):
        loaded.layer(num_layers + 2, species, torch.zeros(0), ei, loaded.edge_features(vec))


@pytest.mark.parametrize("which", ["exported", "attention-head"])
def test_layer_by_chunks_and_vjp_equal_autograd(loaded, which):
    """The large-graph path of the per-layer protocol: each layer by chunks (no graph) equals
    the whole-graph layer; each layer's chunked vector-Jacobian product equals autograd's; the
    features' VJP equals autograd's (edges shuffled: they need not come sorted). On the
    exported file and on an eager engine whose readout is an attention layer."""
    atoms = triclinic()
    species, ei, vec = contract_inputs(atoms, 5.0)
    perm = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(1))
    ei, vec = ei[:, perm], vec[perm]
    if which == "attention-head":
        loaded = ts.EquiformerEngineModel(make_model(seed=2, attention_head=True, irreps_feature="8x0e+2x1e"))
    num_layers = 2
    loaded.schedule.edge_chunk = 7  # several chunks, smaller than one centre's edges
    try:
        vec_req = vec.clone().requires_grad_(True)
        features = loaded.edge_features(vec_req)
        leaves = [f.detach().requires_grad_(True) for f in features]
        x = torch.zeros(0, dtype=torch.float64)
        for s in range(num_layers + 2):
            x_in = x.detach().requires_grad_(True)
            out = loaded.layer(s, species, x_in, ei, leaves)
            assert_close(loaded.layer_by_chunks(s, species, x_in.detach(), ei, features), out.detach(), 1e-12,
                         f"layer {s} by chunks")
            seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(s), dtype=out.dtype)
            got = loaded.layer_vjp(s, species, x_in.detach(), seed, ei, features)
            wrt = ([x_in] if s > 0 else []) + leaves
            want = torch.autograd.grad([out], wrt, grad_outputs=[seed], allow_unused=True)
            if s == 0:
                want = (torch.zeros_like(x_in),) + want
            for k, (a, b) in enumerate(zip(got, want)):
                assert_close(a, torch.zeros_like(a) if b is None else b, 1e-11, f"layer {s} vjp {k}")
            x = out.detach()
        seeds = [torch.randn(f.shape, generator=torch.Generator().manual_seed(9), dtype=f.dtype) for f in features]
        used = [(f, s) for f, s in zip(features, seeds) if f.requires_grad]
        (want,) = torch.autograd.grad([f for f, _ in used], [vec_req], grad_outputs=[s for _, s in used])
        seeds = [s if f.requires_grad else torch.zeros_like(s) for f, s in zip(features, seeds)]
        assert_close(loaded.edge_features_vjp(vec, seeds), want, 1e-12, "features vjp")
    finally:
        loaded.schedule.edge_chunk = 2048


# ----------------------------------------------------------------------------- ASE calculator


def test_calculator_finite_differences(calc64):
    atoms = triclinic()
    atoms.calc = calc64
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    h = 1e-5

    def e_at(a):
        a.calc = calc64
        return a.get_potential_energy()

    for i, c in [(0, 0), (1, 1), (2, 2), (3, 0)]:
        p, m = atoms.copy(), atoms.copy()
        p.positions[i, c] += h
        m.positions[i, c] -= h
        fd = -(e_at(p) - e_at(m)) / (2 * h)
        assert abs(forces[i, c] - fd) <= 1e-6 * max(1.0, abs(fd)), (i, c, forces[i, c], fd)
    for i, j in [(0, 0), (1, 2), (2, 0)]:
        fd = strain_derivative(e_at, atoms, i, j, h)
        sym = 0.5 * (stress[i, j] + stress[j, i])
        assert abs(sym - fd) <= 1e-6 * max(1.0, abs(fd)), (i, j, stress[i, j], fd)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)


def test_kcal_per_mol_model_speaks_ev(tmp_path, files, calc64):
    ev_model = model_from_checkpoint(files["ckpt"])
    kcal = make_model(energy_unit="kcal/mol")
    kcal.load_state_dict(ev_model.state_dict())  # the same numbers, now read as kcal/mol
    path = str(tmp_path / "kcal.pt")
    meta = export_model(kcal, path)
    assert meta["energy_unit"] == "kcal/mol"
    atoms = triclinic()
    atoms.calc = calc64
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    for calc in (EquiformerCalculator(model=path), EquiformerCalculator(checkpoint=write_checkpoint(kcal, tmp_path / "k.pt"))):
        atoms.calc = calc
        factor = 1.0 / EV_IN_KCAL_PER_MOL
        assert atoms.get_potential_energy() == pytest.approx(e * factor, rel=1e-12)
        assert_close(atoms.get_forces(), f * factor, 1e-12, "forces")
        assert_close(atoms.get_stress(), s * factor, 1e-12, "stress")
    assert 1.0 / EV_IN_KCAL_PER_MOL == pytest.approx(0.0433641, rel=1e-6)


def test_stress_of_non_periodic_structure_raises(calc64):
    atoms = molecule(n=4)
    atoms.calc = calc64
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_calculator_rejects_unknown_species(calc64):
    atoms = Atoms("HN", positions=[[0, 0, 0], [1, 0, 0]])
    atoms.calc = calc64
    with pytest.raises(ValueError, match=r"unknown species \['N'\]"):
        atoms.get_potential_energy()


# ----------------------------------------------------------------------------- bad input


def test_cli_export_roundtrip(files, tmp_path, capsys):
    out = str(tmp_path / "cli.pt")
    assert export_main([files["ckpt"], out, "--dtype", "float64"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_metadata(out)["species_symbols"] == "H C O"


def _cli_error(capsys, argv):
    rc = export_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "equiformer-export: error:" in err
    return err


def test_cli_missing_checkpoint(tmp_path, capsys):
    err = _cli_error(capsys, [str(tmp_path / "nope.pt"), str(tmp_path / "out.pt")])
    assert "does not exist" in err and "nope.pt" in err
    assert not (tmp_path / "out.pt").exists()


def test_cli_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    err = _cli_error(capsys, [str(bad), str(tmp_path / "out.pt")])
    assert "corrupt.pt" in err and "not a checkpoint" in err
    # a truncated real checkpoint
    real = open(_PATHS["ckpt"], "rb").read()
    bad.write_bytes(real[: len(real) // 2])
    err = _cli_error(capsys, [str(bad), str(tmp_path / "out.pt")])
    assert "corrupt.pt" in err


def test_cli_incompatible_checkpoint_version(tmp_path, capsys):
    ck = torch.load(_PATHS["ckpt"], weights_only=True)
    ck["format_version"] = 99
    path = tmp_path / "future.pt"
    torch.save(ck, path)
    err = _cli_error(capsys, [str(path), str(tmp_path / "out.pt")])
    assert "format version 99" in err


def test_cli_exported_model_given_as_checkpoint(files, tmp_path, capsys):
    err = _cli_error(capsys, [files["f64"], str(tmp_path / "out.pt")])
    assert "TorchScript" in err


@pytest.mark.parametrize("opt,match", [
    (["--dtype", "float16"], "unsupported dtype 'float16'"),
    (["--device", "tpu"], "--device 'tpu' is not a device this package runs on"),
])
def test_cli_bad_dtype_or_device_leaves_output_untouched(files, tmp_path, capsys, opt, match):
    out = tmp_path / "existing.pt"
    out.write_bytes(b"previous model")
    err = _cli_error(capsys, [files["ckpt"], str(out), "--overwrite"] + opt)
    assert match in err
    assert out.read_bytes() == b"previous model"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_export_cuda_without_cuda(eager, tmp_path):
    with pytest.raises(ValueError, match="no CUDA GPU is visible to torch"):
        export_model(eager, str(tmp_path / "x.pt"), device="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU is visible to torch"):
        export_model(eager, str(tmp_path / "x.pt"), device="cuda:1")


def test_export_to_missing_directory(eager, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(eager, str(tmp_path / "no" / "such" / "dir" / "m.pt"))


def test_export_to_unwritable_directory(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "model.pt"
    out.write_bytes(b"previous model")
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode bits: simulate the check's answer
            from equiformer.export import contract

            real_access = os.access
            monkeypatch.setattr(contract.os, "access",
                                lambda p, m, *a, **k: False if os.path.abspath(p) == str(ro) else real_access(p, m, *a, **k))
        with pytest.raises(PermissionError, match="not writable"):
            export_model(make_model(), str(out))
        err = _cli_error(capsys, [_PATHS["ckpt"], str(out), "--overwrite"])
        assert "not writable" in err
        assert out.read_bytes() == b"previous model"
    finally:
        ro.chmod(0o755)


def test_failed_probe_leaves_existing_file_untouched(tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous model")
    monkeypatch.setitem(ts.PROBE_TOLERANCE, torch.float64, -1.0)  # every probe comparison fails
    with pytest.raises(RuntimeError, match="nothing was written"):
        export_model(make_model(), str(out))
    assert out.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary leftovers


def test_failed_save_leaves_existing_file_untouched(tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous model")

    def broken_save(module, f, _extra_files=None):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(make_model(), str(out))
    assert out.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_calculator_rejects_non_exported_files(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ValueError, match="not an exported Equiformer model"):
        EquiformerCalculator(model=str(plain))
    script = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(script))
    with pytest.raises(ValueError, match="not an exported Equiformer model"):
        EquiformerCalculator(model=str(script))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EquiformerCalculator(model=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="exactly one"):
        EquiformerCalculator()
    # a checkpoint given as model=, an exported model given as checkpoint=
    with pytest.raises(ValueError, match="not an exported Equiformer model"):
        EquiformerCalculator(model=_PATHS["ckpt"])
    with pytest.raises(ValueError, match="TorchScript"):
        EquiformerCalculator(checkpoint=_PATHS["f64"])
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="not an exported Equiformer model"):
        EquiformerCalculator(model=str(bad))
    with pytest.raises(ValueError, match="not a checkpoint"):
        EquiformerCalculator(checkpoint=str(bad))


def test_calculator_rejects_other_format_version(tmp_path, loaded):
    path = str(tmp_path / "v2.pt")
    files = dict(read_metadata(_PATHS["f64"]))
    files["format_version"] = "2"
    torch.jit.save(loaded, path, _extra_files=files)
    with pytest.raises(ValueError, match="format version 2"):
        EquiformerCalculator(model=path)


def test_interaction_range_is_the_receptive_field(eager):
    """An atom's energy feels a neighbour `hops` edges away, and nothing further (a chain with
    spacing 0.9 cutoff): the metadata's interaction_range is what an engine's ghost shell needs."""
    hops = eager.num_hops
    spacing = 0.9 * eager.cutoff
    species = torch.zeros(hops + 2, dtype=torch.long)

    def atom0_energy(shift_last: float, n: int) -> float:
        pos = torch.zeros((n, 3), dtype=torch.float64)
        pos[:, 0] = spacing * torch.arange(n, dtype=torch.float64)
        pos[-1, 1] += shift_last
        d = torch.cdist(pos, pos)
        centre, neighbour = torch.nonzero((d < eager.cutoff) & (d > 0), as_tuple=True)
        vec = pos[neighbour] - pos[centre]
        return float(eager.atom_energies(species[:n], torch.stack([neighbour, centre]), vec)[0])

    # the last atom is `hops` edges from atom 0: felt
    assert abs(atom0_energy(0.3, hops + 1) - atom0_energy(0.0, hops + 1)) > 1e-10
    # one edge further: not felt
    assert abs(atom0_energy(0.3, hops + 2) - atom0_energy(0.0, hops + 2)) == 0.0


# ----------------------------------------------------------------------------- files are safe


def test_cli_never_writes_over_its_input(files, tmp_path, capsys):
    """`equiformer-export same.pt same.pt` used to replace the checkpoint with the model."""
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(open(files["ckpt"], "rb").read())
    before = ckpt.read_bytes()
    for out in (str(ckpt), str(tmp_path / "." / "ckpt.pt")):
        err = _cli_error(capsys, [str(ckpt), out, "--overwrite"])
        assert "is the input file" in err
    (tmp_path / "link.pt").symlink_to(ckpt)
    assert "is the input file" in _cli_error(capsys, [str(ckpt), str(tmp_path / "link.pt"), "--overwrite"])
    assert ckpt.read_bytes() == before


def test_cli_keeps_an_existing_output_unless_overwrite(files, tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous model")
    err = _cli_error(capsys, [files["ckpt"], str(out)])
    assert "exists; pass --overwrite" in err and out.read_bytes() == b"previous model"
    assert "min_distance" in _cli_error(capsys, [files["ckpt"], str(out), "--overwrite", "--min-distance", "-1"])
    assert out.read_bytes() == b"previous model"
    assert export_main([files["ckpt"], str(out), "--overwrite", "--min-distance", "0.8"]) == 0
    meta = read_metadata(str(out))
    assert meta["species_symbols"] == "H C O" and float(meta["min_distance"]) == 0.8


def test_corrupted_model_is_refused_by_every_python_loader(files, tmp_path):
    """A model with one flipped bit used to load and give other numbers."""
    from equiformer.export.contract import load_engine_model
    from equiformer.files import CorruptFileError

    bad = str(tmp_path / "bad.pt")
    entry = flip_bit(files["f64"], bad)
    for load in (lambda: EquiformerCalculator(model=bad), lambda: read_metadata(bad), lambda: load_engine_model(bad)):
        with pytest.raises(CorruptFileError, match=f"is damaged: the checksum of its entry '{entry}'"):
            load()


def test_corrupted_checkpoint_is_refused(files, tmp_path, capsys):
    from equiformer.files import CorruptFileError

    bad = str(tmp_path / "bad_ckpt.pt")
    flip_bit(files["ckpt"], bad)
    with pytest.raises(CorruptFileError, match="checkpoint .* is damaged"):
        model_from_checkpoint(bad)
    assert "is damaged" in _cli_error(capsys, [bad, str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


def test_calculator_warns_once_about_atoms_too_close(calc64):
    from equiformer.export.contract import CloseAtomsWarning

    atoms = Atoms("CHO", positions=[[0, 0, 0], [0.3, 0, 0], [2.0, 0, 0]])
    atoms.calc = calc64
    with pytest.warns(CloseAtomsWarning, match="0.3 Angstrom apart, closer than the 0.5 Angstrom"):
        atoms.get_potential_energy()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        atoms.positions[1, 0] = 0.2
        atoms.get_potential_energy()
