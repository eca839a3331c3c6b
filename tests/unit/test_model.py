"""Whole-model checks of the Equiformer potential (tiny preset, float64 reference precision):
symmetries, forces and stress as derivatives of the energy, smoothness at the cutoff,
batching, TorchScript, float32, degenerate graphs, presets and hyperparameter validation."""

import numpy as np
import pytest
import torch
from ase import Atoms

from equiformer.data import keys
from equiformer.data.atoms import atoms_to_graph, collate
from equiformer.export.torchscript import EquiformerEngineModel
from equiformer.model import DEFAULTS, PRESETS, build_model, resolve_hparams
from model_variants import random_molecule, strain_derivative

SPECIES = ["H", "C", "O"]
E3 = {  # E(3): odd vectors, harmonics with '1o' labels
    "irreps_node": "8x0e+4x1o+2x2e",
    "irreps_sh": "1x0e+1x1o+1x2e",
    "irreps_head": "4x0e+2x1o+1x2e",
    "irreps_mlp": "16x0e+8x1o+4x2e",
}


def make_model(seed=0, dtype=torch.float64, **hp):
    torch.manual_seed(seed)
    model = build_model({"preset": "tiny", "species": SPECIES, **hp}, dtype=dtype)
    # non-trivial normalisation so that it is covered by every check
    model.set_energy_normalization(torch.tensor([-0.5, -1.5, -2.0]), 1.7)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def model_e3():
    return make_model(seed=1, **E3)


def molecule(seed=0, n=8, box=3.2, min_dist=0.9):
    """A random (hence chiral) molecule with no two atoms closer than min_dist."""
    return random_molecule(seed, n, box, min_dist, SPECIES)


def triclinic(seed=0):
    cell = np.array([[3.6, 0.0, 0.0], [0.7, 3.4, 0.0], [-0.4, 0.5, 3.8]])
    rng = np.random.default_rng(seed)
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.1], [0.25, 0.7, 0.55], [0.8, 0.2, 0.6]])
    frac = frac + rng.uniform(-0.03, 0.03, frac.shape)
    return Atoms("CHOH", scaled_positions=frac, cell=cell, pbc=True)


def evaluate(model, atoms, forces=True, stress=False, dtype=torch.float64):
    g = atoms_to_graph(atoms, model.species_symbols, model.cutoff, dtype=dtype)
    out = model(g, compute_forces=forces, compute_stress=stress)
    return {k: v.detach() for k, v in out.items()}


def energy(model, atoms):
    with torch.no_grad():
        return float(evaluate(model, atoms, forces=False)[keys.ENERGY][0])


def assert_close(a, b, rel, what=""):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= rel * scale, f"{what}: max deviation {err:.3g} > {rel * scale:.3g}"


# ----------------------------------------------------------------------------- symmetries


def _rotation(seed):
    from e3nn import o3

    torch.manual_seed(seed)
    return o3.rand_matrix(dtype=torch.float64).numpy()


@pytest.mark.parametrize("which", ["se3", "e3"])
def test_rotation_invariance(model, model_e3, which):
    m = model if which == "se3" else model_e3
    atoms = molecule()
    ref = evaluate(m, atoms)
    for seed in (1, 2):
        R = _rotation(seed)
        rot = atoms.copy()
        rot.positions = atoms.positions @ R.T
        out = evaluate(m, rot)
        assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-12, "energy")
        assert_close(out[keys.FORCES], ref[keys.FORCES] @ torch.tensor(R.T), 1e-10, "forces")


def test_rotation_invariance_periodic(model):
    atoms = triclinic()
    ref = evaluate(model, atoms, stress=True)
    R = _rotation(3)
    rot = atoms.copy()
    rot.set_cell(atoms.cell.array @ R.T, scale_atoms=True)
    out = evaluate(model, rot, stress=True)
    Rt = torch.tensor(R)
    assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-12, "energy")
    assert_close(out[keys.FORCES], ref[keys.FORCES] @ Rt.T, 1e-10, "forces")
    assert_close(out[keys.STRESS][0], Rt @ ref[keys.STRESS][0] @ Rt.T, 1e-10, "stress")


def test_translation_invariance(model):
    atoms = molecule()
    ref = evaluate(model, atoms)
    moved = atoms.copy()
    moved.positions += np.array([12.3, -4.5, 7.25])
    out = evaluate(model, moved)
    assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-12, "energy")
    assert_close(out[keys.FORCES], ref[keys.FORCES], 1e-10, "forces")
    # periodic: translating (and wrapping) atoms leaves everything unchanged
    cell = triclinic()
    ref = evaluate(model, cell, stress=True)
    moved = cell.copy()
    moved.positions += np.array([1.1, 2.3, -0.7])
    moved.wrap()
    out = evaluate(model, moved, stress=True)
    assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-12, "energy")
    assert_close(out[keys.FORCES], ref[keys.FORCES], 1e-10, "forces")
    assert_close(out[keys.STRESS], ref[keys.STRESS], 1e-10, "stress")


def test_permutation_equivariance(model):
    atoms = molecule()
    ref = evaluate(model, atoms)
    perm = np.random.default_rng(5).permutation(len(atoms))
    out = evaluate(model, atoms[perm])
    assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-12, "energy")
    assert_close(out[keys.FORCES], ref[keys.FORCES][perm], 1e-10, "forces")
    assert_close(out[keys.ATOM_ENERGIES], ref[keys.ATOM_ENERGIES][perm], 1e-10, "atom energies")


def test_edge_order_does_not_matter(model):
    atoms = molecule()
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    ref = model(g)
    perm = torch.randperm(g[keys.EDGE_INDEX].shape[1], generator=torch.Generator().manual_seed(0))
    g2 = dict(g)
    g2[keys.EDGE_INDEX] = g[keys.EDGE_INDEX][:, perm]
    g2[keys.SHIFTS] = g[keys.SHIFTS][perm]
    out = model(g2)
    assert_close(out[keys.ENERGY].detach(), ref[keys.ENERGY].detach(), 1e-12, "energy")
    assert_close(out[keys.FORCES], ref[keys.FORCES], 1e-10, "forces")


def test_reflection(model, model_e3):
    atoms = molecule()
    mirrored = atoms.copy()
    mirrored.positions = atoms.positions * np.array([-1.0, 1.0, 1.0])
    inverted = atoms.copy()
    inverted.positions = -atoms.positions
    # E(3): invariant under any improper transformation, forces transform as vectors
    ref = evaluate(model_e3, atoms)
    for img, M in ((mirrored, np.diag([-1.0, 1.0, 1.0])), (inverted, -np.eye(3))):
        out = evaluate(model_e3, img)
        assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-12, "E(3) energy")
        assert_close(out[keys.FORCES], ref[keys.FORCES] @ torch.tensor(M.T), 1e-10, "E(3) forces")
    # SE(3) ('1e' labels): only rotations are symmetries; a chiral molecule and its mirror
    # image are different
    ref = evaluate(model, atoms)
    out = evaluate(model, mirrored)
    assert abs(float(out[keys.ENERGY] - ref[keys.ENERGY])) > 1e-6
    # ... while an achiral (planar) molecule equals its mirror image through its plane
    planar = atoms.copy()
    planar.positions[:, 2] = 0.0
    flip = planar.copy()
    flip.positions[:, 2] = -planar.positions[:, 2]
    assert_close(evaluate(model, flip)[keys.ENERGY], evaluate(model, planar)[keys.ENERGY], 1e-12, "planar")


# ----------------------------------------------------------------------------- derivatives


def test_forces_are_minus_energy_gradient(model):
    atoms = molecule(n=6)
    forces = evaluate(model, atoms)[keys.FORCES].numpy()
    h = 1e-5
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, c] += h
            minus.positions[i, c] -= h
            fd[i, c] = -(energy(model, plus) - energy(model, minus)) / (2 * h)
    assert np.abs(forces).max() > 1e-3  # a non-trivial check
    assert_close(forces, fd, 1e-6, "forces vs finite differences")
    # the net force on an isolated molecule vanishes (translation invariance)
    assert np.abs(forces.sum(0)).max() < 1e-10


def test_forces_finite_difference_periodic(model_e3):
    atoms = triclinic()
    forces = evaluate(model_e3, atoms)[keys.FORCES].numpy()
    h = 1e-5
    for i, c in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, c] += h
        minus.positions[i, c] -= h
        fd = -(energy(model_e3, plus) - energy(model_e3, minus)) / (2 * h)
        assert abs(forces[i, c] - fd) <= 1e-6 * max(1.0, abs(fd)), (i, c, forces[i, c], fd)


def test_stress_is_strain_derivative(model):
    atoms = triclinic()
    out = evaluate(model, atoms, stress=True)
    stress = out[keys.STRESS][0].numpy()
    volume = atoms.get_volume()
    fd = np.array([[strain_derivative(lambda a: energy(model, a), atoms, i, j) for j in range(3)] for i in range(3)])
    assert np.abs(stress).max() > 1e-4
    assert_close(stress, fd, 1e-6, "stress vs finite strain")
    # virial = -stress * volume, symmetric for a rotation-invariant energy
    virial = out[keys.VIRIAL][0].numpy()
    assert_close(virial, -stress * volume, 1e-12, "virial")
    assert_close(virial, virial.T, 1e-10, "virial symmetry")


def test_stress_small_cell_with_self_images(model):
    """A cell smaller than the cutoff: atoms see their own images (still a strain derivative)."""
    atoms = Atoms("CO", scaled_positions=[[0.0, 0.0, 0.0], [0.45, 0.5, 0.55]],
                  cell=[[2.6, 0.0, 0.0], [0.3, 2.5, 0.0], [0.2, -0.4, 2.7]], pbc=True)
    stress = evaluate(model, atoms, stress=True)[keys.STRESS][0].numpy()
    for i, j in [(0, 0), (0, 1), (2, 1)]:
        fd = strain_derivative(lambda a: energy(model, a), atoms, i, j)
        assert abs(stress[i, j] - fd) <= 1e-6 * max(1.0, abs(fd)), (i, j, stress[i, j], fd)


def test_stress_without_cell_is_nan(model):
    out = evaluate(model, molecule(n=4), stress=True)
    assert torch.isfinite(out[keys.VIRIAL]).all()
    assert torch.isnan(out[keys.STRESS]).all()


def test_create_graph_gives_trainable_forces(model):
    g = atoms_to_graph(molecule(n=4), SPECIES, model.cutoff)
    out = model(g, compute_forces=True, create_graph=True)
    loss = out[keys.FORCES].pow(2).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert any(gr is not None and gr.abs().max() > 0 for gr in grads)
    # without create_graph the forces are constants
    out = model(g, compute_forces=True)
    assert not out[keys.FORCES].requires_grad


# ----------------------------------------------------------------------------- cutoff


def _near_cutoff(model, r):
    """Atoms 0 and 2 at distance r (near the cutoff); atom 1 interacts with both."""
    u = np.array([0.6, 0.64, 0.48])  # unit vector
    pos = np.array([[0.0, 0.0, 0.0], 0.5 * model.cutoff * u + np.array([0.3, -0.6, 0.2]), r * u])
    return Atoms("COH", positions=pos)


def _without_pair(graph, i, j):
    ei = graph[keys.EDGE_INDEX]
    keep = ~(((ei[0] == i) & (ei[1] == j)) | ((ei[0] == j) & (ei[1] == i)))
    out = dict(graph)
    out[keys.EDGE_INDEX] = ei[:, keep]
    out[keys.SHIFTS] = graph[keys.SHIFTS][keep]
    return out


def _cutoff_jump(model, delta):
    """Change of energy and forces when the pair (0, 2) at rc - delta drops out of the graph:
    what happens when the atom crosses the cutoff, without the change of geometry."""
    atoms = _near_cutoff(model, model.cutoff - delta)
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    g_out = _without_pair(g, 0, 2)
    assert g_out[keys.EDGE_INDEX].shape[1] == g[keys.EDGE_INDEX].shape[1] - 2
    a, b = model(g), model(g_out)  # the energies keep their graph (forces were asked for)
    de = abs(float((a[keys.ENERGY] - b[keys.ENERGY]).detach()))
    df = float((a[keys.FORCES] - b[keys.FORCES]).abs().max())
    return de, df


def test_energy_and_forces_continuous_at_cutoff(model):
    for delta, f_tol in ((1e-6, 1e-6), (1e-8, 1e-8)):
        de, df = _cutoff_jump(model, delta)
        assert de < 1e-10, (delta, de)
        # the envelope is C1: the force jump vanishes linearly with the distance to the cutoff
        assert df < f_tol, (delta, df)
    # the same through the neighbour list: just inside vs just outside the cutoff, the
    # difference is the smooth change of geometry only (E(rc + d) - E(rc - d) ~ 2 d |F|)
    inside = evaluate(model, _near_cutoff(model, model.cutoff - 1e-7))
    outside = evaluate(model, _near_cutoff(model, model.cutoff + 1e-7))
    assert abs(float(inside[keys.ENERGY] - outside[keys.ENERGY])) < 1e-6
    assert float((inside[keys.FORCES] - outside[keys.FORCES]).abs().max()) < 1e-5


def test_hard_cutoff_is_discontinuous():
    """attention_cutoff="mask" (official behaviour): an edge enters the softmax and the degree
    sum with full weight, so the energy jumps when an atom crosses the cutoff."""
    m = make_model(attention_cutoff="mask")
    de, df = _cutoff_jump(m, 1e-6)
    assert de > 1e-6 and df > 1e-6


def test_edges_beyond_cutoff_are_ignored(model):
    """Edges longer than the cutoff may be passed (docs/model-format.md): no effect."""
    atoms = molecule(n=5)
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    far = atoms_to_graph(atoms, SPECIES, model.cutoff + 3.0)
    assert far[keys.EDGE_INDEX].shape[1] >= g[keys.EDGE_INDEX].shape[1]
    atoms.positions[4] += np.array([4.0, 4.0, 4.0])  # now some pairs are between rc and rc + 3
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    far = atoms_to_graph(atoms, SPECIES, model.cutoff + 3.0)
    assert far[keys.EDGE_INDEX].shape[1] > g[keys.EDGE_INDEX].shape[1]
    a, b = model(g), model(far)
    assert_close(b[keys.ENERGY].detach(), a[keys.ENERGY].detach(), 1e-12, "energy")
    assert_close(b[keys.FORCES], a[keys.FORCES], 1e-12, "forces")


# ----------------------------------------------------------------------------- batching


def test_batch_equals_single_structures(model):
    structures = [molecule(seed=1, n=5), triclinic(), molecule(seed=2, n=7)]
    graphs = [atoms_to_graph(a, SPECIES, model.cutoff) for a in structures]
    batched = model(collate(graphs), compute_stress=True)
    assert batched[keys.ENERGY].shape == (3,)
    offset = 0
    for b, g in enumerate(graphs):
        single = model(g, compute_stress=True)
        n = g[keys.POSITIONS].shape[0]
        assert_close(batched[keys.ENERGY][b].detach(), single[keys.ENERGY][0].detach(), 1e-12, "energy")
        assert_close(batched[keys.FORCES][offset: offset + n], single[keys.FORCES], 1e-10, "forces")
        assert_close(batched[keys.ATOM_ENERGIES][offset: offset + n].detach(),
                     single[keys.ATOM_ENERGIES].detach(), 1e-12, "atom energies")
        assert_close(batched[keys.VIRIAL][b], single[keys.VIRIAL][0], 1e-10, "virial")
        if b == 1:
            assert_close(batched[keys.STRESS][b], single[keys.STRESS][0], 1e-10, "stress")
        else:
            assert torch.isnan(batched[keys.STRESS][b]).all()
        offset += n


def test_atom_energies_sum_to_energy(model):
    out = evaluate(model, molecule())
    assert_close(out[keys.ATOM_ENERGIES].sum(), out[keys.ENERGY][0], 1e-12, "sum")
    assert out[keys.ENERGY].dtype == torch.float64 and out[keys.FORCES].dtype == torch.float64


# ----------------------------------------------------------------------------- TorchScript, dtypes


def test_torchscript_equals_eager(model):
    engine = EquiformerEngineModel(model)
    scripted = torch.jit.script(engine)
    atoms = triclinic()
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    ei = g[keys.EDGE_INDEX]
    vec = g[keys.POSITIONS][ei[0]] - g[keys.POSITIONS][ei[1]] + g[keys.SHIFTS]
    ref = model(g, compute_stress=True)
    n = len(atoms)
    for fn in (engine, scripted):
        out = fn(g[keys.SPECIES], ei, vec, n)
        assert_close(out["energy"], ref[keys.ENERGY][0].detach(), 1e-12, "energy")
        assert_close(out["forces"], ref[keys.FORCES], 1e-10, "forces")
        assert_close(out["virial"], ref[keys.VIRIAL][0], 1e-10, "virial")
        assert_close(out["atom_energies"], ref[keys.ATOM_ENERGIES].detach(), 1e-12, "atom energies")
        assert_close(out["atom_virial"].sum(0), out["virial"], 1e-12, "atom virial")
    # the scripted model's own atom_energies too
    assert_close(scripted.model.atom_energies(g[keys.SPECIES], ei, vec), ref[keys.ATOM_ENERGIES].detach(), 1e-12,
                 "scripted atom_energies")


def test_float32_close_to_float64(model):
    m32 = make_model()  # (e3nn's harmonics hold a ScriptFunction: no copy.deepcopy)
    m32.load_state_dict(model.state_dict())
    m32 = m32.to(torch.float32)
    assert m32.energy_dtype() == torch.float32
    assert m32.atom_ref.dtype == torch.float64 and m32.energy_scale.dtype == torch.float64
    for atoms in (molecule(), triclinic()):
        ref = evaluate(model, atoms, stress=atoms.pbc.all())
        out = evaluate(m32, atoms, stress=atoms.pbc.all(), dtype=torch.float32)
        assert out[keys.ENERGY].dtype == torch.float64
        assert_close(out[keys.ENERGY], ref[keys.ENERGY], 1e-5, "float32 energy")
        assert_close(out[keys.FORCES], ref[keys.FORCES], 1e-4, "float32 forces")
        if atoms.pbc.all():
            assert_close(out[keys.STRESS], ref[keys.STRESS], 1e-4, "float32 stress")


# ----------------------------------------------------------------------------- degenerate graphs


def test_isolated_atom(model):
    """No edges: energy is a per-species constant (atom_ref + scaled network output), no force.

    Note: the network output of an isolated atom is not zero (biases), so the energy is not
    atom_ref alone; it shifts exactly with atom_ref.
    """
    single = Atoms("O", positions=[[1.0, 2.0, 3.0]])
    out = evaluate(model, single, stress=False)
    assert out[keys.FORCES].shape == (1, 3) and torch.all(out[keys.FORCES] == 0)
    e_o = float(out[keys.ENERGY][0])
    assert np.isfinite(e_o)
    m = make_model()
    m.load_state_dict(model.state_dict())
    m.set_energy_normalization(torch.tensor([-0.5, -1.5, -7.0]), 1.7)
    assert abs(float(evaluate(m, single)[keys.ENERGY][0]) - (e_o - 5.0)) < 1e-12
    m.set_energy_normalization(torch.tensor([-0.5, -1.5, -7.0]), 0.0)
    assert abs(float(evaluate(m, single)[keys.ENERGY][0]) - (-7.0)) < 1e-12
    # the same atom far from a molecule adds exactly its isolated energy, and feels no force
    mol = molecule(n=5)
    both = mol + Atoms("O", positions=[[50.0, 50.0, 50.0]])
    out_both = evaluate(model, both)
    assert abs(float(out_both[keys.ENERGY][0]) - (energy(model, mol) + e_o)) < 1e-10
    assert torch.all(out_both[keys.FORCES][-1] == 0)
    # position independent
    single.positions += 7.0
    assert float(evaluate(model, single)[keys.ENERGY][0]) == pytest.approx(e_o, abs=1e-12)


def test_structure_without_edges(model):
    atoms = Atoms("HCO", positions=[[0, 0, 0], [10, 0, 0], [0, 10, 0]])
    g = atoms_to_graph(atoms, SPECIES, model.cutoff)
    assert g[keys.EDGE_INDEX].shape == (2, 0)
    out = model(g, compute_forces=True, compute_stress=True)
    assert torch.all(out[keys.FORCES] == 0)
    assert torch.all(out[keys.VIRIAL] == 0)
    singles = sum(energy(model, atoms[[i]]) for i in range(3))
    assert abs(float(out[keys.ENERGY][0].detach()) - singles) < 1e-10
    # and the engine contract, eager and scripted
    engine = EquiformerEngineModel(model)
    res = engine(g[keys.SPECIES], g[keys.EDGE_INDEX], torch.zeros(0, 3, dtype=torch.float64), 3)
    assert torch.all(res["forces"] == 0) and res["virial"].shape == (3, 3)
    assert abs(float(res["energy"]) - singles) < 1e-10


# ----------------------------------------------------------------------------- presets, hparams


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_resolve(preset):
    hp = resolve_hparams({"preset": preset, "species": SPECIES})
    assert set(hp) == set(DEFAULTS)
    for k, v in PRESETS[preset].items():
        assert hp[k] == v


def test_small_presets_build_and_run():
    atoms = Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [-0.6, 0.9, 0.1]])
    for preset in ("small", "md17-l2"):
        torch.manual_seed(0)
        m = build_model({"preset": preset, "species": SPECIES}, dtype=torch.float64).eval()
        out = evaluate(m, atoms)
        assert torch.isfinite(out[keys.ENERGY]).all() and torch.isfinite(out[keys.FORCES]).all()
        assert np.abs(out[keys.FORCES].sum(0).numpy()).max() < 1e-10
    # the paper's MD17 L=2 model size (~3.5 M parameters)
    n = sum(p.numel() for p in m.parameters())
    assert 3.4e6 < n < 3.6e6, n


@pytest.mark.parametrize("hp,match", [
    ({"preset": "tiny", "species": SPECIES, "num_layer": 2}, "unknown model hyperparameter.*num_layer"),
    ({"preset": "huge", "species": SPECIES}, "unknown model preset 'huge'"),
    ({"preset": "tiny"}, "'species' is required"),
    ({"preset": "tiny", "species": []}, "'species' is required"),
    ({"preset": "tiny", "species": ["H", "Xx"]}, "unknown chemical symbol.*Xx"),
    ({"preset": "tiny", "species": ["H", "H"]}, "twice"),
    ({"preset": "tiny", "species": SPECIES, "cutoff": 0.0}, "'cutoff' must be positive"),
    ({"preset": "tiny", "species": SPECIES, "radial_basis": "no-such-basis"}, "radial_basis"),
    ({"preset": "tiny", "species": SPECIES, "irreps_node": "4x1e+8x0e+2x2e"}, "irreps_node irreps .* sorted"),
    ({"preset": "tiny", "species": SPECIES, "irreps_mlp": "16x0e+8x1e+4x2e+4x1e"}, "irreps_mlp irreps .* once"),
    ({"preset": "tiny", "species": SPECIES, "irreps_head": "2x1e+4x0e"}, "irreps_head"),
    ({"preset": "tiny", "species": SPECIES, "irreps_sh": "1x0e+1x2e"}, "irreps_sh must be"),
    ({"preset": "tiny", "species": SPECIES, "irreps_sh": "1x0e+2x1e"}, "irreps_sh must be"),
])
def test_bad_hyperparameters(hp, match):
    with pytest.raises(ValueError, match=match):
        build_model(hp)


def test_gaussian_basis_variant(model):
    m = make_model(radial_basis="gaussian", nonlinear_message=False, rescale_degree=True)
    atoms = molecule(n=5)
    out = evaluate(m, atoms)
    R = _rotation(7)
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    out_r = evaluate(m, rot)
    assert_close(out_r[keys.ENERGY], out[keys.ENERGY], 1e-12, "energy")
    assert_close(out_r[keys.FORCES], out[keys.FORCES] @ torch.tensor(R.T), 1e-10, "forces")
