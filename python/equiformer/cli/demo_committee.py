"""The demo's committee part: where the shipped copper committee trusts itself.

The committee (``models/cu/committee.pt``: four members of one config, seeds 0-3) is
evaluated with the ASE calculator on structures inside its training data's range (the
held-out test set: fcc, strained, vacancy, surface and liquid cells at 300-2000 K; and the
demo's own 800 K NVT frames) and outside it (fcc compressed beyond the training strains of
+-4 %, and an EAM liquid at 4000 K, twice the hottest training temperature). The maximum
per-atom force deviation of each structure (docs/committees.md) should stay low inside and
rise outside; the demo reports the medians, their ratio, and a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

HOT_T = 4000.0  # K: twice the hottest training temperature (2000 K)
COMPRESSIONS = (1.0, 0.96, 0.92, 0.88, 0.84, 0.80)  # lattice constant / a0; training strains reach 4 %


def max_force_deviation(calc, frames) -> np.ndarray:
    """max_i sigma_F[i] of each structure (eV/A)."""
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append(float(np.max(calc.get_property("forces_std", atoms))))
    return np.array(out)


def fcc(reps: int, a: float, rattle: float, seed: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=a, cubic=True) * (reps, reps, reps)
    if rattle > 0:
        atoms.rattle(rattle, seed=seed)
    return atoms


def dump_frames(frames: List[Dict[str, np.ndarray]]):
    """ASE Atoms of LAMMPS dump frames (orthogonal periodic box)."""
    from ase import Atoms

    return [Atoms("Cu" * len(fr["x3"]), positions=fr["x3"] - fr["lo"], cell=np.diag(fr["box"]), pbc=True)
            for fr in frames]


def hot_liquid_input(reps: int, steps: int, every: int, dump: str, a0: float, mass: float, eam: str) -> str:
    """EAM Cu melted at HOT_T (1 fs steps): the frames the committee never saw."""
    return "\n".join([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {a0}", f"region box block 0 {reps} 0 {reps} 0 {reps}",
        "create_box 1 box", "create_atoms 1 box", f"mass 1 {mass}",
        "pair_style eam", f"pair_coeff 1 1 {eam}", "neighbor 1.0 bin", "timestep 0.001",
        f"velocity all create {2 * HOT_T} 7719 mom yes rot no dist gaussian",
        f"fix md all nvt temp {HOT_T} {HOT_T} 0.1",
        f"run {steps}",
        f"dump hot all custom {every} {dump} id type x y z", "dump_modify hot sort id format float %.10g",
        f"run {steps}", "",
    ])


def committee_part(out: Path, committee: Path, test_file: Path, md_frames: List[Dict[str, np.ndarray]],
                   quick: bool, run_lmp, eam: str, a0: float, mass: float, log) -> Dict[str, object]:
    import ase.io

    from ..calculator import EquiformerCalculator
    from .demo import read_dump

    calc = EquiformerCalculator(model=str(committee))
    k = calc.info.committee_size
    log(f"committee: {committee.name}, {k} members; max force deviation per structure inside and outside the "
        "training range ...")
    test = ase.io.read(test_file, ":")
    if quick:
        test = test[::10]
    groups = {
        "test set (300-2000 K)": max_force_deviation(calc, test),
        "demo NVT, 800 K": max_force_deviation(calc, dump_frames(md_frames)),
    }
    work = out / "lammps"
    steps = 400 if quick else 4000
    run_lmp(work, "in.hot_liquid", hot_liquid_input(3, steps, steps // 5, "hot_liquid.dump", a0, mass, eam), 1, log)
    groups[f"EAM liquid, {HOT_T:.0f} K"] = max_force_deviation(calc, dump_frames(read_dump(work / "hot_liquid.dump")))
    compressed = np.array([max_force_deviation(calc, [fcc(3, a0 * s, 0.05, 11)])[0] for s in COMPRESSIONS])
    res: Dict[str, object] = {"members": k, "unit": "eV/A", "hot_liquid_K": HOT_T}
    res["median_max_devi_f"] = {name: float(np.median(v)) for name, v in groups.items()}
    res["compressed_max_devi_f"] = {f"{s:.2f}": float(v) for s, v in zip(COMPRESSIONS, compressed)}
    inside = float(np.median(np.concatenate([groups["test set (300-2000 K)"], groups["demo NVT, 800 K"]])))
    res["median_inside_eV_A"] = inside
    res["ratio_hot_liquid_to_inside"] = res["median_max_devi_f"][f"EAM liquid, {HOT_T:.0f} K"] / inside
    res["ratio_compressed_0.80_to_inside"] = float(compressed[-1]) / inside
    res["rises_outside"] = bool(res["ratio_hot_liquid_to_inside"] > 1.5 and res["ratio_compressed_0.80_to_inside"] > 1.5)
    np.savetxt(work / "committee_compressed.txt", np.c_[COMPRESSIONS, compressed],
               header="lattice_constant_over_a0 max_force_deviation_eV_A")
    plot(out, groups, compressed)
    log("  median max force deviation (meV/A): " + ", ".join(
        f"{name} {1e3 * v:.1f}" for name, v in res["median_max_devi_f"].items())
        + f"; fcc at 0.80 a0 {1e3 * compressed[-1]:.1f}; outside / inside: hot liquid "
        f"x{res['ratio_hot_liquid_to_inside']:.1f}, compressed x{res['ratio_compressed_0.80_to_inside']:.1f}"
        + ("" if res["rises_outside"] else " (NOT rising outside the training range)"))
    return res


def plot(out: Path, groups: Dict[str, np.ndarray], compressed: np.ndarray) -> None:
    from .demo import _plt

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(groups)
    ax[0].boxplot([1e3 * groups[n] for n in names], showfliers=True)
    ax[0].set_xticks(range(1, len(names) + 1), [n.replace(", ", "\n") for n in names], fontsize=8)
    ax[0].set(ylabel="max force deviation (meV/A)", yscale="log", title="Cu committee: per structure")
    ax[1].plot(COMPRESSIONS, 1e3 * compressed, "o-")
    ax[1].axvspan(0.96, 1.04, color="0.9", label="training strains")
    ax[1].set(xlabel="lattice constant / a0 (fcc, rattled 0.05 A)", ylabel="max force deviation (meV/A)",
              yscale="log", title="compression")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cu_committee_deviation.png", dpi=110)
    plt.close(fig)
