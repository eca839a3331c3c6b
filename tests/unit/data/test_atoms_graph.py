"""ASE Atoms -> graph, targets, collate, datasets and the batch loader."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
import ase.io

from equiformer.data import keys
from equiformer.data.atoms import atoms_to_graph, collate, read_targets
from equiformer.data.dataset import GraphDataset, GraphLoader, infer_species, split_indices


def _labelled_cu(seed=0):
    a = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    a.rattle(0.05, seed=seed)
    a.calc = EMT()
    e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
    a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
    return a


def test_atoms_to_graph_periodic():
    a = _labelled_cu()
    g = atoms_to_graph(a, ["Cu"], 4.0, torch.float32, energy_key="energy", forces_key="forces", stress_key="stress")
    n = len(a)
    assert g[keys.POSITIONS].shape == (n, 3) and g[keys.POSITIONS].dtype == torch.float32
    assert g[keys.SPECIES].dtype == torch.int64 and (g[keys.SPECIES] == 0).all()
    assert g[keys.EDGE_INDEX].dtype == torch.int64 and g[keys.EDGE_INDEX].shape[0] == 2
    assert g[keys.SHIFTS].shape == (g[keys.EDGE_INDEX].shape[1], 3)
    assert g[keys.CELL].shape == (1, 3, 3) and g[keys.PBC].tolist() == [[True] * 3]
    assert g[keys.BATCH].tolist() == [0] * n and g[keys.NUM_ATOMS].tolist() == [n]
    assert g[keys.ENERGY].dtype == torch.float64 and g[keys.ENERGY].shape == (1,)
    assert g[keys.FORCES].shape == (n, 3) and g[keys.FORCES].dtype == torch.float64
    np.testing.assert_allclose(g[keys.STRESS][0].numpy(), a.get_stress(voigt=False))
    # the edge vectors are real distances below the cutoff
    ei = g[keys.EDGE_INDEX]
    vec = g[keys.POSITIONS][ei[0]] - g[keys.POSITIONS][ei[1]] + g[keys.SHIFTS]
    assert (vec.norm(dim=1) < 4.0 + 1e-5).all()


def test_atoms_to_graph_open_has_zero_cell():
    g = atoms_to_graph(molecule("H2O"), ["H", "O"], 3.0)
    assert torch.equal(g[keys.CELL], torch.zeros(1, 3, 3, dtype=torch.float64))
    assert g[keys.EDGE_INDEX].shape[1] == 6  # all ordered pairs
    assert g[keys.SPECIES].tolist() == [1, 0, 0]


def test_unknown_species_error_lists_symbols():
    with pytest.raises(ValueError, match=r"unknown species \['N'\].*knows only \['H', 'C', 'O'\]"):
        atoms_to_graph(Atoms("HCN", positions=[[0, 0, 0], [1, 0, 0], [2, 0, 0]]), ["H", "C", "O"], 3.0)


def test_targets_from_info_and_arrays_with_custom_keys():
    a = molecule("H2O")
    a.info["REF_energy"] = -14.2
    a.arrays["REF_forces"] = np.arange(9.0).reshape(3, 3)
    t = read_targets(a, "REF_energy", "REF_forces")
    assert float(t[keys.ENERGY]) == -14.2
    assert torch.equal(t[keys.FORCES], torch.arange(9.0, dtype=torch.float64).reshape(3, 3))
    with pytest.raises(ValueError, match=r"forces key 'forces' not found \(water.xyz, frame 3\).*REF_forces"):
        read_targets(a, "REF_energy", "forces", where="water.xyz, frame 3")


def test_missing_key_in_file_names_file_frame_key(tmp_path):
    frames = [_labelled_cu(i) for i in range(3)]
    bare = frames[2].copy()  # no calculator: no energy
    path = tmp_path / "data.xyz"
    ase.io.write(path, frames[:2] + [bare])
    with pytest.raises(ValueError, match=r"energy key 'energy' not found \(.*data.xyz, frame 2\)"):
        GraphDataset.from_file(path, ["Cu"], 4.0, energy_key="energy")
    ds = GraphDataset.from_file(path, ["Cu"], 4.0)  # no targets asked for: fine
    assert len(ds) == 3


def test_bad_structure_error_names_frame(tmp_path):
    a = _labelled_cu()
    a.positions[0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 7.*NaN"):
        atoms_to_graph(a, ["Cu"], 4.0, where="x.xyz, frame 7")


def test_collate_offsets():
    g1 = atoms_to_graph(molecule("H2O"), ["H", "O"], 3.0, energy_key=None)
    g2 = atoms_to_graph(_labelled_cu(), ["H", "O", "Cu"], 3.0)
    g3 = atoms_to_graph(molecule("H2"), ["H", "O"], 3.0)
    b = collate([g1, g2, g3])
    n1, n2 = 3, 2
    assert b[keys.NUM_ATOMS].tolist() == [3, 2, 2]
    assert b[keys.BATCH].tolist() == [0, 0, 0, 1, 1, 2, 2]
    e1, e2 = g1[keys.EDGE_INDEX].shape[1], g2[keys.EDGE_INDEX].shape[1]
    assert torch.equal(b[keys.EDGE_INDEX][:, :e1], g1[keys.EDGE_INDEX])
    assert torch.equal(b[keys.EDGE_INDEX][:, e1:e1 + e2], g2[keys.EDGE_INDEX] + n1)
    assert torch.equal(b[keys.EDGE_INDEX][:, e1 + e2:], g3[keys.EDGE_INDEX] + n1 + n2)
    assert b[keys.CELL].shape == (3, 3, 3) and b[keys.PBC].shape == (3, 3)
    assert b[keys.SHIFTS].shape[0] == b[keys.EDGE_INDEX].shape[1]
    # collating batches again keeps consistent offsets
    bb = collate([collate([g1, g2]), g3])
    for k in b:
        assert torch.equal(b[k], bb[k]), k
    with pytest.raises(ValueError, match="same targets"):
        collate([g1, atoms_to_graph(_labelled_cu(), ["H", "O", "Cu"], 3.0, energy_key="energy")])


def test_loader_shuffle_is_seeded_per_epoch():
    graphs = [atoms_to_graph(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.5 + 0.01 * i]]), ["H"], 3.0) for i in range(10)]
    ds = GraphDataset(graphs)

    def order(loader, epoch):
        loader.set_epoch(epoch)
        return [round(float(b[keys.POSITIONS][1::2, 2].sum()), 4) for b in loader]

    a, b = GraphLoader(ds, 3, shuffle=True, seed=1), GraphLoader(ds, 3, shuffle=True, seed=1)
    assert len(a) == 4
    assert order(a, 0) == order(b, 0)
    assert order(a, 0) != order(a, 1)
    assert order(a, 0) != order(GraphLoader(ds, 3, shuffle=True, seed=2), 0)
    a.set_epoch(3)
    full = [b_[keys.NUM_ATOMS].sum().item() for b_ in a]
    assert full == [6, 6, 6, 2]
    assert len(list(a.batches(2))) == 2
    assert len(GraphLoader(ds, 3, drop_last=True)) == 3


def test_split_and_species():
    tr, va = split_indices(20, 0.2, seed=0)
    assert len(tr) == 16 and len(va) == 4 and not set(tr) & set(va)
    tr2, va2 = split_indices(20, 0.2, seed=0)
    assert (tr == tr2).all() and (va == va2).all()
    tr, va = split_indices(100, 0.1, seed=0, n_train=10, n_val=5)
    assert len(tr) == 10 and len(va) == 5
    with pytest.raises(ValueError, match="cannot split"):
        split_indices(10, 0.0, 0, n_train=8, n_val=5)
    assert infer_species([molecule("CH3OH"), bulk("Cu")]) == ["H", "C", "O", "Cu"]
