"""pair_style equiformer with a committee file (issue 16): the mean drives the dynamics, the
`deviation` keyword writes the DP-GEN columns, `compute pair` / `fix pair` expose them.

The references are independent of the plugin: the analytic pair committee's closed form
(tests/analytic_models.py: `committee_reference`, `model_deviation`), and for a real
Equiformer committee the file's own member outputs on a brute-force periodic graph with the
package's `equiformer.committee.deviations`. LAMMPS runs are few and shared (module-scoped).
"""

import os
import sys
from typing import Dict

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from analytic_models import (DEVIATION_COLUMNS, committee_matrices, committee_reference,  # noqa: E402
                             model_deviation, write_pair_committee, write_pair_model)
from test_lammps import (MD, parse_dump, run_lammps, triclinic_system,  # noqa: E402
                         write_data)

pytestmark = pytest.mark.lammps

TYPES = ["H", "C", "O", "Cu"]
K = 4
OFFSETS = (1.0, 2.0, 3.0, 6.0)  # members' energy offsets: the file's energy_offset is their mean, 3
STEPS = 8
HEADER = ("#       step         max_devi_v         min_devi_v         avg_devi_v         max_devi_f"
          "         min_devi_f         avg_devi_f             devi_e")
PRINT_DEVI = "print \"DEVI " + " ".join(f"$(c_cp[{k}]:%.17g)" for k in range(1, 8)) + "\"\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, str]:
    d = tmp_path_factory.mktemp("committee_models")
    return {
        "committee": write_pair_committee(str(d / "committee.pt"), K, energy_offsets=OFFSETS),
        # the committee's mean is the pair model with the mean A and the mean offset
        "mean": write_pair_model(str(d / "mean.pt"), a=np.mean(committee_matrices(K), axis=0),
                                 energy_offset=float(np.mean(OFFSETS))),
        "single": write_pair_model(str(d / "single.pt")),
    }


def committee_input(model: str, pair_extra: str, steps: int = STEPS, newton: str = "on") -> str:
    """Step 0 (run 0: deviations printed at full precision, per-atom sigma_F and forces dumped),
    then STEPS NVE steps; deviations written every 2 steps with the per-atom columns."""
    return (f"units metal\natom_style atomic\nboundary p p p\nnewton {newton}\nread_data data.lmp\n"
            f"pair_style equiformer {pair_extra}\npair_coeff * * {model} {' '.join(TYPES)}\n"
            + ("compute cp all pair equiformer\nfix fp all pair 1 equiformer force_deviation 0\n"
               "dump d all custom 4 out.dump id x y z fx fy fz f_fp\n" if "deviation" in pair_extra else
               "dump d all custom 4 out.dump id x y z fx fy fz\n")
            + "dump_modify d sort id format float %.17g\nthermo_style custom step pe\nthermo 1\n"
            + "run 0\n" + (PRINT_DEVI if "deviation" in pair_extra else "")
            + MD + f"run {steps}\n" + (PRINT_DEVI if "deviation" in pair_extra else "")
            + 'print "PE $(pe:%.17g)"\n')


def read_devi(path) -> np.ndarray:
    lines = open(path).read().splitlines()
    assert lines[0] == HEADER
    assert not any(line.startswith("#") for line in lines[1:]), "the header is written once"
    return np.array([[float(v) for v in line.split()] for line in lines[1:]])


def printed(stdout: str, tag: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split()[1:]] for line in stdout.splitlines()
                     if line.startswith(tag + " ")])


# ranks, pair_style options, newton (off: the pair style sums the ghost forces itself)
RUNS = {"np1-map": (1, "mode map", "on"), "np1-ghost": (1, "mode ghost", "on"), "np2": (2, "", "on"),
        "np4": (4, "mode ghost", "off")}


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory) -> Dict[str, dict]:
    """The committee with deviation output on 1 (map, ghost), 2 (auto) and 4 (ghost, newton off)
    ranks, and the mean pair model on one rank, on the same periodic triclinic system."""
    system = triclinic_system(n=48)
    out = {}
    for name, (np_, mode, newton) in list(RUNS.items()) + [("mean", (1, "", "on"))]:
        d = tmp_path_factory.mktemp(name)
        write_data(str(d / "data.lmp"), system, TYPES)
        model = files["mean" if name == "mean" else "committee"]
        extra = mode if name == "mean" else f"{mode} deviation every 2 file devi.out atomic yes"
        proc = run_lammps(d, committee_input(model, extra, newton=newton), np_=np_)
        out[name] = {"dir": d, "stdout": proc.stdout, "dump": parse_dump(d / "out.dump")}
        if name != "mean":
            out[name]["devi"] = read_devi(d / "devi.out")
            out[name]["printed"] = printed(proc.stdout, "DEVI")
        out[name]["pe"] = printed(proc.stdout, "PE")[-1, 0]
    ref = committee_reference(system.symbols, system.positions, system.cell, 3.0, K, OFFSETS)
    out["reference"] = {**ref, **model_deviation(ref["member_forces"], ref["member_virials"], ref["member_energies"])}
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_deviations_equal_the_reference(runs, name):
    """Step 0: compute pair's 7 values and fix pair's sigma_F equal the closed form (1e-10),
    the file's line equals it to its 7 printed digits; the forces are the members' mean."""
    ref, run = runs["reference"], runs[name]
    want = np.array([ref[c] for c in DEVIATION_COLUMNS])
    assert np.allclose(run["printed"][0], want, rtol=1e-10, atol=0)
    frame0 = run["dump"][0]
    assert np.allclose(frame0[:, 7], ref["force_deviation"], rtol=0, atol=1e-10 * ref["force_deviation"].max())
    assert np.allclose(frame0[:, 4:7], ref["forces"], rtol=0, atol=1e-10 * np.abs(ref["forces"]).max())
    line0 = run["devi"][0]
    assert line0[0] == 0
    assert np.allclose(line0[1:8], want, rtol=6e-7, atol=0)
    assert np.allclose(line0[8:], ref["force_deviation"], rtol=6e-7, atol=1e-300), "atomic columns, atom-ID order"
    # every 2 steps, one line per step although run 0 and run 8 both evaluate step 0
    assert run["devi"][:, 0].tolist() == list(range(0, STEPS + 1, 2))
    assert run["devi"].shape[1] == 8 + 48
    assert f"committee of {K} models" in run["stdout"]


def test_ranks_and_modes_agree(runs):
    """The deviation file and the 8-step trajectory are the same on 1, 2 and 4 ranks, in map
    and ghost mode (mode auto picks ghost for a committee on several ranks), newton on and off."""
    base = runs["np1-map"]
    assert "mode map" in base["stdout"] and "mode ghost" in runs["np2"]["stdout"]
    for name in ("np1-ghost", "np2", "np4"):
        run = runs[name]
        assert np.allclose(run["devi"], base["devi"], rtol=1e-6, atol=0), name
        assert np.allclose(run["printed"], base["printed"], rtol=1e-9, atol=0), name
        assert np.allclose(run["dump"][-1][:, 1:], base["dump"][-1][:, 1:], rtol=0, atol=1e-9), name


def test_mean_drives_the_dynamics(runs):
    """The committee's trajectory is that of the pair model with the members' mean A (and mean
    offset): energies, forces and positions after 8 NVE steps."""
    mean, committee = runs["mean"], runs["np1-map"]
    assert abs(mean["pe"] - committee["pe"]) <= 1e-10 * abs(mean["pe"])
    for a, b in zip(mean["dump"], committee["dump"]):
        assert np.allclose(a[:, :7], b[:, :7], rtol=0, atol=1e-10)


def test_fix_halt_on_force_deviation(tmp_path, files, runs):
    """fix halt with a variable on compute pair's max_devi_f stops the run on 2 ranks."""
    threshold = 0.5 * float(runs["reference"]["max_devi_f"])
    write_data(str(tmp_path / "data.lmp"), triclinic_system(n=48), TYPES)
    script = ("units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
              f"pair_style equiformer deviation\npair_coeff * * {files['committee']} {' '.join(TYPES)}\n"
              "compute cp all pair equiformer\nvariable d equal c_cp[4]\n" + MD
              + f"fix h all halt 3 v_d > {threshold!r} error soft\nthermo 1\nrun 50\n"
              'print "LAST $(step)"\n')
    proc = run_lammps(tmp_path, script, np_=2)
    assert "Fix halt condition for fix-id h met on step 3" in proc.stdout
    assert printed(proc.stdout, "LAST")[-1, 0] == 3


def _error(tmp_path, model: str, pair_style: str, np_: int = 1) -> str:
    write_data(str(tmp_path / "data.lmp"), triclinic_system(n=8), TYPES)
    script = ("units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
              f"pair_style {pair_style}\npair_coeff * * {model} {' '.join(TYPES)}\nrun 0\n")
    proc = run_lammps(tmp_path, script, np_=np_, check=False, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert errors, proc.stdout[-2000:]
    return "\n".join(errors)


def test_errors(tmp_path, files):
    """Clear errors, on every rank at once (no hang): deviation with a single model, mode layer
    with a committee, malformed deviation keywords, a file that cannot be written."""
    c = files["committee"]
    assert "deviation needs a committee file" in _error(tmp_path, files["single"], "equiformer deviation", np_=2)
    msg = _error(tmp_path, c, "equiformer mode layer", np_=2)
    assert "mode layer is not available for a committee" in msg and "mode ghost or mode map" in msg
    assert "must follow the keyword deviation" in _error(tmp_path, c, "equiformer every 10 file x.out")
    assert "needs N >= 1" in _error(tmp_path, c, "equiformer deviation every 0 file x.out")
    assert "Expected integer" in _error(tmp_path, c, "equiformer deviation every ten file x.out")
    assert "need file FILE" in _error(tmp_path, c, "equiformer deviation every 10")
    assert "needs a value" in _error(tmp_path, c, "equiformer deviation every 10 file")
    assert "cannot open the deviation file" in _error(tmp_path, c,
                                                      f"equiformer deviation file {tmp_path}/no/such/dir.out", np_=2)


def test_append_keeps_the_file(tmp_path, files):
    """append yes adds lines (no second header) to an existing file; the default overwrites it."""
    write_data(str(tmp_path / "data.lmp"), triclinic_system(n=8), TYPES)

    def run(extra):
        script = ("units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
                  f"pair_style equiformer deviation file devi.out {extra}\n"
                  f"pair_coeff * * {files['committee']} {' '.join(TYPES)}\nrun 0\n"
                  f"pair_style equiformer deviation file devi.out append yes\n"
                  f"pair_coeff * * {files['committee']} {' '.join(TYPES)}\nrun 1\n")
        run_lammps(tmp_path, script)
        return read_devi(tmp_path / "devi.out")[:, 0].tolist()

    assert run("") == [0, 0, 1]  # a new pair_style command: a new file (here appended to)
    assert run("append yes") == [0, 0, 1, 0, 0, 1]
    assert run("append no") == [0, 0, 1]


def _has_export_committee() -> bool:
    try:
        from equiformer.committee import export_committee  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_export_committee(), reason="equiformer.committee.export_committee not available")
def test_real_equiformer_committee(tmp_path):
    """Two tiny-preset Equiformer members (float64) in one file: the deviation file on 1 and 2
    ranks equals `equiformer.committee.deviations` of the file's member outputs on a brute-force
    periodic graph of the same frame."""
    import torch

    from equiformer.committee import deviations, export_committee
    from equiformer.export.contract import legacy_executor
    from equiformer.model import build_model
    from mp_model import brute_force_graph
    from test_lammps import _cu_system

    members = []
    for seed in range(2):  # two keep the export and TorchScript's first-call optimisation short
        torch.manual_seed(seed)
        members.append(build_model({"preset": "tiny", "species": ["Cu"], "cutoff": 4.0}, dtype=torch.float64))
    model = str(tmp_path / "committee.pt")
    export_committee(members, model, "float64")

    system = _cu_system()
    module = torch.jit.load(model, map_location="cpu")
    index, vec = brute_force_graph(system.positions, system.cell, 4.0)
    n = len(system.symbols)
    with legacy_executor():  # as the runtime runs it (one compilation, not the profiling executor's two)
        out = module(torch.zeros(n, dtype=torch.long), torch.from_numpy(index), torch.from_numpy(vec), n)
    ref = deviations(out["member_forces"].numpy(), out["member_virials"].numpy(), out["member_energies"].numpy())
    want = np.array([ref[c] for c in DEVIATION_COLUMNS])

    got = {}
    for np_ in (1, 2):
        d = tmp_path / f"np{np_}"
        d.mkdir()
        write_data(str(d / "data.lmp"), system, ["Cu"])
        script = ("units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
                  f"pair_style equiformer deviation every 1 file devi.out\npair_coeff * * {model} Cu\n"
                  "compute cp all pair equiformer\nfix fp all pair 1 equiformer force_deviation 0\n"
                  "dump d all custom 1 out.dump id f_fp\ndump_modify d sort id format float %.17g\n"
                  "thermo_style custom step pe\nrun 0\n" + PRINT_DEVI)
        proc = run_lammps(d, script, np_=np_)
        got[np_] = (read_devi(d / "devi.out")[0], printed(proc.stdout, "DEVI")[0], parse_dump(d / "out.dump")[0])
        assert np.allclose(got[np_][0][1:], want, rtol=6e-7, atol=0)
        assert np.allclose(got[np_][1], want, rtol=1e-8, atol=0)
        assert np.allclose(got[np_][2][:, 1], ref["sigma_F"], rtol=0, atol=1e-8 * ref["sigma_F"].max())
    assert np.allclose(got[1][1], got[2][1], rtol=1e-9, atol=0)
