"""Test inputs for the C++ runtime tests (run by CTest as a fixture).

Writes into OUTDIR: analytic pair models (tests/analytic_models.py), files that must be
refused, `graphs.txt`: graphs with their closed-form reference answers, and `committee.txt`:
the members of the analytic committee on the first (periodic) graph.
"""

import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from analytic_models import (SYMBOLS, committee_reference, pair_reference, write_pair_committee,  # noqa: E402
                             write_pair_model)
from damaged_files import flip_bit  # noqa: E402


def periodic_graph(symbols, pos, cell, cutoff):
    """All directed edges (with periodic images) of atoms within the cutoff."""
    heights = np.abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reps = np.ceil(cutoff / heights).astype(int)
    src, dst, vec = [], [], []
    for i in range(len(pos)):
        for j in range(len(pos)):
            for a in range(-reps[0], reps[0] + 1):
                for b in range(-reps[1], reps[1] + 1):
                    for c in range(-reps[2], reps[2] + 1):
                        r = pos[j] + np.array([a, b, c]) @ cell - pos[i]
                        if 0 < r @ r < cutoff ** 2:
                            src.append(j), dst.append(i), vec.append(r)
    return src, dst, np.array(vec).reshape(-1, 3)


def write_case(out, name, symbols, src, dst, vec, n_local, ref):
    species = [SYMBOLS.index(s) for s in symbols]
    out.write(f"case {name}\n{len(species)} {len(src)} {n_local}\n")
    out.write(" ".join(map(str, species)) + "\n")
    out.write(" ".join(map(str, src)) + "\n" + " ".join(map(str, dst)) + "\n")
    out.write(" ".join(repr(float(v)) for v in np.ravel(vec)) + "\n")
    energy = ref["energies"][:n_local].sum()
    out.write(repr(float(energy)) + "\n")
    out.write(" ".join(repr(float(v)) for v in ref["energies"]) + "\n")
    forces = ref["forces"] if n_local == len(species) else np.full((len(species), 3), np.nan)
    virial = ref["virial"] if n_local == len(species) else np.full((3, 3), np.nan)
    out.write(" ".join(repr(float(v)) for v in np.ravel(forces)) + "\n")
    out.write(" ".join(repr(float(v)) for v in np.ravel(virial)) + "\n")


COMMITTEE_OFFSETS = (0.5, 1.0, 3.0)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    write_pair_model(os.path.join(outdir, "pair64.pt"), dtype=torch.float64)
    write_pair_model(os.path.join(outdir, "pair32.pt"), dtype=torch.float32)
    write_pair_model(os.path.join(outdir, "pair_units.pt"), cutoff=0.3, length_unit="nm", energy_unit="kcal/mol",
                     energy_offset=-12.5, num_layers=2)
    # the analytic two-layer message-passing model with embed / block / readout
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    from mp_model import write_mp_model

    write_mp_model(os.path.join(outdir, "mp.pt"), cutoff=2.5, num_layers=2)
    # a TorchScript file without the format metadata
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), os.path.join(outdir, "plain_torchscript.pt"))
    # an exported-looking file of a future format version
    module = torch.jit.load(os.path.join(outdir, "pair64.pt"))
    extra = {k: "" for k in ("format", "format_version", "cutoff", "species_symbols", "length_unit",
                             "energy_unit", "dtype")}
    torch.jit.load(os.path.join(outdir, "pair64.pt"), _extra_files=extra)
    extra["format_version"] = "2"
    torch.jit.save(module, os.path.join(outdir, "future_version.pt"), _extra_files=extra)
    extra["format_version"] = "1"
    extra["dtype"] = "bfloat16"
    torch.jit.save(module, os.path.join(outdir, "bfloat16.pt"), _extra_files=extra)
    extra["dtype"] = "float64"
    extra["cutoff"] = ""
    torch.jit.save(module, os.path.join(outdir, "no_cutoff.pt"), _extra_files=extra)
    # metadata that is not a number / not an integer
    extra["cutoff"] = "1.5x"
    torch.jit.save(module, os.path.join(outdir, "cutoff_not_a_number.pt"), _extra_files=extra)
    extra["cutoff"] = "3.0"
    extra["num_layers"] = "2.5"
    torch.jit.save(module, os.path.join(outdir, "layers_not_an_integer.pt"), _extra_files=extra)
    del extra["num_layers"]
    # damaged copies of pair64.pt: a bit flipped in a tensor (stored) and in code (deflated),
    # and a truncated one
    flip_bit(os.path.join(outdir, "pair64.pt"), os.path.join(outdir, "flipped_data.pt"), "/data/")
    flip_bit(os.path.join(outdir, "pair64.pt"), os.path.join(outdir, "flipped_code.pt"), "/code/")
    raw = open(os.path.join(outdir, "pair64.pt"), "rb").read()
    with open(os.path.join(outdir, "truncated.pt"), "wb") as f:
        f.write(raw[: len(raw) - 100])
    # a checkpoint (torch.save), and random bytes
    torch.save({"state_dict": {"w": torch.zeros(2)}}, os.path.join(outdir, "checkpoint.pt"))
    with open(os.path.join(outdir, "garbage.pt"), "wb") as f:
        f.write(os.urandom(4096))

    # a committee of three pair members with their own energy offsets; a committee_size the
    # file's forward does not honour (no member outputs), and an impossible one
    write_pair_committee(os.path.join(outdir, "committee.pt"), 3, energy_offsets=COMMITTEE_OFFSETS)
    extra["cutoff"] = "3.0"
    extra["committee_size"] = "2"
    torch.jit.save(module, os.path.join(outdir, "committee_without_members.pt"), _extra_files=extra)
    extra["committee_size"] = "0"
    torch.jit.save(module, os.path.join(outdir, "committee_of_none.pt"), _extra_files=extra)

    rng = np.random.default_rng(7)
    with open(os.path.join(outdir, "graphs.txt"), "w") as out:
        # periodic triclinic, multi-species, small cell (atoms see their own images)
        cell = np.array([[4.2, 0.0, 0.0], [0.9, 4.0, 0.0], [-0.6, 0.7, 4.4]])
        symbols = ["H", "C", "O", "Cu", "C", "H", "O", "H"]
        pos = rng.uniform(0, 1, (len(symbols), 3)) @ cell
        src, dst, vec = periodic_graph(symbols, pos, cell, 3.0)
        write_case(out, "periodic", symbols, src, dst, vec, len(symbols), pair_reference(symbols, pos, cell, 3.0))
        # the committee's members on the same graph: K N, then their total energies [K], per-atom
        # energies [K N], forces [K N 3] and virials [K 9]
        ref = committee_reference(symbols, pos, cell, 3.0, 3, COMMITTEE_OFFSETS)
        with open(os.path.join(outdir, "committee.txt"), "w") as members:
            members.write(f"3 {len(symbols)}\n")
            for key in ("member_energies", "member_atom_energies", "member_forces", "member_virials"):
                members.write(" ".join(repr(float(v)) for v in np.ravel(ref[key])) + "\n")
        # molecule, no cell; the last three atoms are "ghosts" (n_local = 5): energy of the first five
        symbols = ["C", "O", "H", "H", "Cu", "H", "C", "O"]
        pos = rng.uniform(0, 3.5, (len(symbols), 3))
        src, dst, vec = [], [], []
        for i in range(len(pos)):
            for j in range(len(pos)):
                r = pos[j] - pos[i]
                if i != j and r @ r < 9.0:
                    src.append(j), dst.append(i), vec.append(r)
        ref = pair_reference(symbols, pos, None, 3.0)
        write_case(out, "molecule", symbols, src, dst, np.array(vec), len(symbols), ref)
        write_case(out, "ghosts", symbols, src, dst, np.array(vec), 5, ref)
        # isolated atoms: no edges at all
        symbols = ["H", "Cu"]
        pos = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
        write_case(out, "isolated", symbols, [], [], np.zeros((0, 3)), 2, pair_reference(symbols, pos, None, 3.0))


if __name__ == "__main__":
    main(sys.argv[1])
