"""OpenMM systems and positions shared by the OpenMM tests (TorchForce/PythonForce routes,
the native plugin, committees): one topology builder, one System builder, and random
positions that keep a minimum distance."""

import numpy as np
import openmm
from openmm import app, unit


def make_topology(symbols, cell_nm=None, molecules=None):
    """One chain; one residue per molecule (lists of atom indices; default: all atoms in one)."""
    top = app.Topology()
    chain = top.addChain()
    groups = molecules or [list(range(len(symbols)))]
    for g in groups:
        res = top.addResidue("MOL", chain)
        for k in g:
            top.addAtom(f"{symbols[k]}{k}", app.Element.getBySymbol(symbols[k]), res)
    if cell_nm is not None:
        top.setPeriodicBoxVectors([openmm.Vec3(*row) for row in np.asarray(cell_nm)] * unit.nanometer)
    return top


def make_system(symbols, cell_nm=None, masses=None):
    """Particles with the elements' masses (or ``masses``), the default box ``cell_nm``."""
    system = openmm.System()
    for k, s in enumerate(symbols):
        system.addParticle(app.Element.getBySymbol(s).mass if masses is None else masses[k])
    if cell_nm is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(cell_nm)])
    return system


def spread(rng, n, draw, dmin):
    """n points from ``draw(1)`` (a [1, 3] array), each more than dmin from those before."""
    pos = draw(1)
    while len(pos) < n:
        p = draw(1)
        if np.min(np.linalg.norm(pos - p, axis=1)) > dmin:
            pos = np.vstack([pos, p])
    return pos


def periodic_positions(box, n, dmin, seed=2):
    """n points in the cell ``box`` or one image away (some outside it), more than dmin apart."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        x = rng.random(3) @ box + rng.integers(-1, 2, 3) @ box
        if all(np.linalg.norm(x - p) > dmin for p in pos):
            pos.append(x)
    return np.array(pos)
