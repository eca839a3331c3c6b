"""Write cu_emt.xyz: 200 rattled, strained fcc copper cells labelled with ASE's EMT.

    python examples/make_emt_copper.py && equiformer-train examples/train_small.yaml
"""

import os

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def main(n: int = 200, path: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cu_emt.xyz")):
    rng = np.random.default_rng(0)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms
        atoms.set_cell(atoms.cell * (1 + 0.03 * rng.standard_normal()), scale_atoms=True)
        atoms.rattle(0.1, seed=k)
        atoms.calc = EMT()
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        frames.append(atoms)
    ase.io.write(path, frames)
    print(f"wrote {len(frames)} structures to {path}")


if __name__ == "__main__":
    main()
