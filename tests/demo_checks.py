"""The checks of one `equiformer-demo --quick` run (LAMMPS on 2 MPI ranks + EAM rerun + OpenMM
with the shipped models, the Cu crystal checks), shared by the tests that run it."""

import json


def check_quick_demo(out, proc):
    """``out``: the demo's --out folder (a pathlib.Path); ``proc``: its completed process."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("summary.json", "summary.md", "demo.log", "cu_model.pt", "aspirin_model.pt", "cu_rdf.png",
                 "cu_energy_force_errors.png", "cu_force_parity.png", "aspirin_openmm.png", "cu_eos.png", "cu_nve.png",
                 "lammps/traj_equiformer.dump", "lammps/rerun_eam.dump", "openmm/aspirin_md.xyz",
                 "lammps/log.crystal_equiformer.lammps", "lammps/log.crystal_eam.lammps", "lammps/eos.txt",
                 "cu_committee_deviation.png", "lammps/hot_liquid.dump", "lammps/committee_compressed.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    cu, asp = s["lammps_cu"], s["openmm_aspirin"]
    assert cu["mpi_ranks"] == 2 and cu["frames"] >= 3
    # the shipped Cu model against EAM on its own trajectory: loose sanity bounds (the trained
    # model's held-out errors are in docs/models.md)
    assert cu["energy_per_atom_mae_eV"] < 0.03
    assert cu["force_mae_eV_A"] < 0.06
    assert 2.3 < cu["rdf_first_peak_A"]["equiformer"] < 2.8
    assert 100 < cu["mean_temperature_K"] < 3000
    assert asp["intact"] and asp["steps"] == s["steps"]
    assert 50 < asp["mean_temperature_K"] < 3000
    assert "summary:" in proc.stdout
    _check_crystal(s["crystal_cu"])
    _check_committee(s["committee_cu"])
    assert "bulk modulus" in (out / "summary.md").read_text()


def _check_crystal(xt):
    """The --quick crystal checks: perfect-lattice minimisation (the model in float64), E(V) at
    5 points, 30 NVE steps."""
    assert xt["atoms"] == 108 and xt["fmax_tolerance_eV_A"] == 1e-4
    for name in ("equiformer_float64", "eam"):
        m = xt[name]["minimise"]["perfect"]
        assert m["iterations"] >= 0 and m["fmax_final_eV_A"] < 1e-4 and m["converged"], (name, m)
        assert "rattled" not in xt[name]["minimise"]  # --quick: perfect lattice only
    for name in ("equiformer", "eam"):
        r = xt[name]
        eos = r["eos"]
        assert len(eos["points_a_A_V_A3_E_eV"]) == 5 and eos["a0_in_scanned_range"], (name, eos)
        # Cu_u3.eam: a0 3.615 A, B 138 GPa (experiment ~140 GPa); the model must be close to both
        assert abs(eos["a0_A"] - 3.615) < 0.02 * 3.615, (name, eos["a0_A"])
        assert 80 < eos["B_GPa"] < 220, (name, eos["B_GPa"])
        assert -3.6 < eos["E0_eV_per_atom"] < -3.45, (name, eos["E0_eV_per_atom"])
        assert eos["fit_rms_meV_per_atom"] < 1.0, (name, eos)  # a smooth curve: a noisy one fits badly
        nve = r["nve"]
        assert nve["steps"] == 30 and 100 < nve["mean_temperature_K"] < 300, (name, nve)
        # measured 0.008 meV/atom for both (the velocity-Verlet fluctuation of the first 30 fs)
        assert nve["etot_max_deviation_meV_per_atom"] < 0.05, (name, nve)
    assert abs(xt["eam"]["eos"]["a0_A"] - 3.615) < 0.002 and abs(xt["eam"]["eos"]["B_GPa"] - 138) < 5
    assert xt["minimise_converged"] == {"equiformer_float64": True, "eam": True}


def _check_committee(c):
    """The shipped Cu committee: small deviations inside its training range, larger outside."""
    assert c["members"] == 4
    med = c["median_max_devi_f"]
    assert len(med) == 3 and all(v > 0 for v in med.values()), med
    assert c["median_inside_eV_A"] < 0.1, c  # eV/A: a committee that agrees where it was trained
    assert c["rises_outside"], c  # hot liquid and 20 % compression both > 1.5x the inside median
    assert list(c["compressed_max_devi_f"]) == ["1.00", "0.96", "0.92", "0.88", "0.84", "0.80"]
