"""``equiformer-select TRAJ --model committee.pt --lo 0.05 --hi 0.30``: the frames of a
trajectory whose committee force deviation says they need new reference data.

A frame with max_devi_f < lo is accurate (the members agree), one with lo <= max_devi_f < hi
a candidate (written to extxyz, for labelling), one with max_devi_f >= hi failed (too far
from the training data to trust even as a configuration). Thresholds in eV/Angstrom.
"""

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

from ..committee import DEVIATION_KEYS


def select(frames, calc, lo: float, hi: float):
    """(candidate frames, counts {'accurate', 'candidates', 'failed'}, max_devi_f per frame).
    Candidates are copies without a calculator, carrying the deviations in ``info`` and each
    atom's force deviation in ``arrays['sigma_f']``."""
    counts = {"accurate": 0, "candidates": 0, "failed": 0}
    candidates, worst = [], []
    for atoms in frames:
        calc.calculate(atoms, ["energy", "forces"])
        devi = calc.results["model_deviation"]
        worst.append(devi["max_devi_f"])
        if devi["max_devi_f"] < lo:
            counts["accurate"] += 1
        elif devi["max_devi_f"] < hi:
            counts["candidates"] += 1
            frame = atoms.copy()  # no calculator: nothing that looks like a reference label
            frame.info.update(devi)
            frame.arrays["sigma_f"] = np.array(calc.results["forces_std"])
            candidates.append(frame)
        else:
            counts["failed"] += 1
    return candidates, counts, np.array(worst)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="equiformer-select",
                                description="Frames of a trajectory whose committee force deviation lies between two "
                                            "bounds (candidates for new reference data), written as extxyz.")
    p.add_argument("trajectory", help="any trajectory ASE reads (extxyz, ASE .traj, LAMMPS dump, ...)")
    p.add_argument("--model", required=True, help="committee file (equiformer-export a.pt b.pt ... committee.pt)")
    p.add_argument("--lo", type=float, required=True, help="lower bound of max_devi_f (eV/Angstrom): below it a frame "
                                                           "is accurate")
    p.add_argument("--hi", type=float, required=True, help="upper bound of max_devi_f (eV/Angstrom): at or above it "
                                                           "a frame failed")
    p.add_argument("-o", "--output", default="candidates.extxyz", help="extxyz file for the candidates "
                                                                        "(default candidates.extxyz)")
    p.add_argument("--index", default=":", help="ASE frame selection (default ':', every frame)")
    p.add_argument("--format", default=None, help="ASE file format (default: from the file name)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:K or auto (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (default: refuse)")
    args = p.parse_args(argv)
    try:
        if not 0.0 <= args.lo < args.hi:
            raise ValueError(f"the bounds must satisfy 0 <= --lo < --hi, got --lo {args.lo} --hi {args.hi}")
        if os.path.lexists(args.output) and not args.overwrite:
            raise ValueError(f"{args.output} exists; pass --overwrite to replace it, or choose another path with -o")
        if os.path.realpath(args.output) == os.path.realpath(args.trajectory):
            raise ValueError(f"{args.output} is the input trajectory; choose another output path")
        from ..calculator import EquiformerCalculator
        from ..model_info import ModelInfo

        info = ModelInfo.read(args.model)
        if info.committee_size < 2:
            raise ValueError(f"{args.model} is a single model, not a committee: selection needs the members' "
                             "disagreement; export several checkpoints together (equiformer-export a.pt b.pt c.pt "
                             "d.pt committee.pt, docs/committees.md)")
        from ase.io import read, write

        frames = read(args.trajectory, index=args.index, format=args.format)
        if not isinstance(frames, list):
            frames = [frames]
        calc = EquiformerCalculator(model=args.model, device=args.device)
        candidates, counts, worst = select(frames, calc, args.lo, args.hi)
        if candidates:
            tmp = args.output + ".partial"
            write(tmp, candidates, format="extxyz")
            os.replace(tmp, args.output)
    except (ValueError, OSError) as exc:
        print(f"equiformer-select: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(frames)} frames of {args.trajectory}, committee of {info.committee_size} ({args.model})")
    print(f"max force deviation max_devi_f (eV/Angstrom): lo {args.lo:g}, hi {args.hi:g}; over the frames: min "
          f"{worst.min():.4g}, median {np.median(worst):.4g}, max {worst.max():.4g}")
    print(f"  accurate   (max_devi_f < {args.lo:g}):        {counts['accurate']}")
    print(f"  candidates ({args.lo:g} <= max_devi_f < {args.hi:g}): {counts['candidates']}")
    print(f"  failed     (max_devi_f >= {args.hi:g}):       {counts['failed']}")
    if candidates:
        print(f"candidates written to {args.output} (deviations in atoms.info: {', '.join(DEVIATION_KEYS)}; "
              "per-atom force deviation in arrays['sigma_f'])")
    else:
        print(f"no candidates: {args.output} not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
