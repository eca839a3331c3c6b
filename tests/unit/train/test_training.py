"""Short training runs on EMT copper: the loss goes down, resume is exact, CLIs work."""

import csv
import json
import os

import pytest
import torch

from equiformer.train.checkpoint import load_checkpoint
from equiformer.train.config import resolve_config
from equiformer.train.trainer import TrainingInterrupted, train

from train_helpers import tiny_config


def _rows(out_dir):
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_loss_and_writes_outputs(cu_xyz, tmp_path):
    out = tmp_path / "run"
    cfg = resolve_config(tiny_config(cu_xyz, out, optim={"epochs": 5, "scheduler": "constant", "lr": 5e-3},
                                     loss={"stress_weight": 1.0}))
    summary = train(cfg, log=lambda *a: None)
    rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    for col in ("val_energy_per_atom_mae", "val_forces_rmse", "val_stress_mae", "lr", "time_s"):
        assert rows[0][col] != ""
    assert sorted(os.listdir(out)) == ["best.pt", "config.yaml", "last.pt", "metrics.csv"]
    ck = load_checkpoint(out / "last.pt")
    assert ck["metadata"]["epoch"] == 5 and ck["training"]["epoch"] == 5
    assert ck["metadata"]["datasets"]["train"][0]["sha256"]
    assert ck["metadata"]["config"]["optim"]["epochs"] == 5
    assert ck["normalization"]["scale_method"] == "forces_rms"
    assert summary["best_epoch"] == load_checkpoint(out / "best.pt")["metadata"]["epoch"]
    # the checkpoint's weights are the EMA weights, distinct from the raw training weights
    raw = ck["training"]["state_dict"]
    assert any(not torch.equal(raw[k], v) for k, v in ck["model_state_dict"].items())


def _params(path):
    return load_checkpoint(path)["training"]


def _assert_same_state(a, b):
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"])
    assert a["global_step"] == b["global_step"]


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_resume_equals_uninterrupted(cu_xyz, tmp_path, scheduler):
    quiet = lambda *a: None  # noqa: E731
    ref_dir, res_dir = tmp_path / "ref", tmp_path / "res"
    extra = {"optim": {"epochs": 3, "scheduler": scheduler, "plateau_patience": 0}}
    train(resolve_config(tiny_config(cu_xyz, ref_dir, **extra)), log=quiet)
    # 9 training structures, batch 3: 3 steps per epoch. Stop mid-epoch 1, then at an epoch end
    cfg = resolve_config(tiny_config(cu_xyz, res_dir, **extra))
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, stop_after_steps=2, log=quiet)
    assert info.value.epoch == 0 and info.value.step == 2
    assert _params(res_dir / "last.pt")["step_in_epoch"] == 2
    cfg_resume = resolve_config(tiny_config(cu_xyz, res_dir, run={"resume": True}, **extra))
    with pytest.raises(TrainingInterrupted):
        train(cfg_resume, stop_after_steps=4, log=quiet)
    assert _params(res_dir / "last.pt")["epoch"] == 2
    train(cfg_resume, log=quiet)
    _assert_same_state(_params(ref_dir / "last.pt"), _params(res_dir / "last.pt"))
    ref_rows, res_rows = _rows(ref_dir), _rows(res_dir)
    assert len(ref_rows) == len(res_rows) == 3
    for r, s in zip(ref_rows, res_rows):
        for col in r:
            if col != "time_s":
                assert r[col] == s[col], col


def test_energy_only_loss(cu_xyz, tmp_path):
    """An energy-only loss: the model computes no forces, and the energy it returns keeps its
    graph for the loss (this used to fail with 'element 0 of tensors does not require grad')."""
    cfg = resolve_config(tiny_config(cu_xyz, tmp_path / "run", optim={"epochs": 2}, loss={"forces_weight": 0.0}))
    train(cfg, log=lambda *a: None)
    rows = _rows(tmp_path / "run")
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])


def test_existing_run_needs_resume_or_overwrite(cu_xyz, tmp_path):
    cfg = resolve_config(tiny_config(cu_xyz, tmp_path, optim={"epochs": 1}))
    train(cfg, log=lambda *a: None)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(cfg, log=lambda *a: None)


def test_missing_target_error(tmp_path):
    import ase.io
    from ase.build import bulk

    path = tmp_path / "nolabels.xyz"
    ase.io.write(path, [bulk("Cu") for _ in range(4)])
    cfg = resolve_config(tiny_config(path, tmp_path / "out"))
    with pytest.raises(ValueError, match=r"energy key 'energy' not found \(.*nolabels.xyz, frame 0\)"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "out").exists()  # a failed start leaves no empty run folder


def test_bad_model_hyperparameters_leave_no_run_folder(cu_xyz, tmp_path):
    cfg = resolve_config(tiny_config(cu_xyz, tmp_path / "out", model={"attention_cutoff": "hard"}))
    with pytest.raises(ValueError, match="attention_cutoff"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_cli_train_and_eval(cu_xyz, tmp_path, capsys):
    import yaml

    from equiformer.cli.evaluate import main as eval_main
    from equiformer.cli.train import main as train_main

    cfg = tiny_config(cu_xyz, tmp_path / "run", optim={"epochs": 1})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train_main([str(path)]) == 0
    assert train_main([str(path)]) == 1  # existing run
    assert "already holds a run" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(cfg, optim={"epoch": 3})))
    assert train_main([str(bad)]) == 2
    assert "optim.epoch" in capsys.readouterr().err
    js, plots = tmp_path / "m.json", tmp_path / "plots"
    rc = eval_main([str(tmp_path / "run" / "best.pt"), str(cu_xyz), "--json", str(js), "--plots", str(plots), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "energy_per_atom" in table and "forces" in table and "stress" in table
    metrics = json.loads(js.read_text())
    assert metrics["num_structures"] == 12 and metrics["forces_mae"] > 0
    assert sorted(os.listdir(plots)) == ["parity_energy_per_atom.png", "parity_forces.png", "parity_stress.png"]
    assert eval_main([str(cu_xyz), str(cu_xyz)]) == 1
    assert "not a PyTorch archive" in capsys.readouterr().err
