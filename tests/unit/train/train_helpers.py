"""Shared helpers of the training tests: EMT copper data and a tiny config."""

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def emt_copper(n=12, seed=0):
    """Small rattled and strained 2-atom Cu cells labelled with ASE's EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
        a.rattle(0.08, seed=seed * 1000 + k)
        a.set_cell(a.cell * (1 + 0.02 * rng.standard_normal()), scale_atoms=True)
        a.calc = EMT()
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        frames.append(a)
    return frames



def tiny_config(data_path, out_dir, **sections):
    cfg = {
        "model": {"preset": "tiny", "cutoff": 3.0},
        "data": {"train": str(data_path), "val_fraction": 0.25},
        "loss": {"kind": "mse", "energy_weight": 1.0, "forces_weight": 10.0},
        "optim": {"epochs": 2, "batch_size": 3, "lr": 2e-3, "warmup_epochs": 0.5, "warmup_lr": 1e-4,
                  "scheduler": "cosine", "min_lr": 1e-4, "ema_decay": 0.9, "clip_grad_norm": 10.0},
        "run": {"output_dir": str(out_dir), "device": "cpu", "progress": False, "seed": 3},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg
