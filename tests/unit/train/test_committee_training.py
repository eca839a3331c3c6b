"""Committee training: K members of one config, seeds run.seed + k, one run folder each."""

import os

import pytest
import torch
import yaml

from equiformer.cli.train import main as train_main
from equiformer.train.checkpoint import load_checkpoint
from equiformer.train.committee import member_config, train_committee
from equiformer.train.config import ConfigError, resolve_config
from equiformer.train.trainer import TrainingInterrupted, train

from train_helpers import tiny_config

QUIET = lambda *a: None  # noqa: E731


def _committee_cfg(cu_xyz, out, committee=3, **sections):
    sections.setdefault("optim", {"epochs": 1})
    raw = tiny_config(cu_xyz, out, **sections)
    raw["committee"] = committee
    return resolve_config(raw)


def test_shorthand_and_member_configs(cu_xyz, tmp_path):
    cfg = _committee_cfg(cu_xyz, tmp_path / "c")
    assert cfg["committee"] == {"size": 3, "split": "shared"}
    seeds = [member_config(cfg, k)["run"]["seed"] for k in range(3)]
    assert seeds == [3, 4, 5]  # run.seed is 3 in tiny_config
    assert {member_config(cfg, k)["data"]["split_seed"] for k in range(3)} == {3}
    assert member_config(cfg, 2)["run"]["output_dir"] == str(tmp_path / "c" / "member-2")
    per = _committee_cfg(cu_xyz, tmp_path / "c", committee={"size": 2, "split": "per_member"})
    assert [member_config(per, k)["data"]["split_seed"] for k in range(2)] == [3, 4]
    with pytest.raises(ValueError, match="member 3 does not exist"):
        member_config(cfg, 3)
    with pytest.raises(ConfigError, match="committee.size must be >= 1"):
        resolve_config(dict(tiny_config(cu_xyz, tmp_path), committee=0))
    with pytest.raises(ConfigError, match="committee.split must be one of"):
        resolve_config(dict(tiny_config(cu_xyz, tmp_path), committee={"size": 2, "split": "random"}))


def test_members_equal_single_runs_with_their_seed(cu_xyz, tmp_path):
    """Member k is exactly the single-model run with seed run.seed + k (same split)."""
    out = tmp_path / "committee"
    train_committee(_committee_cfg(cu_xyz, out, committee=2), log=QUIET)
    desc = yaml.safe_load(open(out / "committee.yaml"))
    assert desc["size"] == 2 and [m["seed"] for m in desc["members"]] == [3, 4]
    single = resolve_config(tiny_config(cu_xyz, tmp_path / "single", optim={"epochs": 1},
                                        run={"seed": 4}, data={"split_seed": 3}))
    train(single, log=QUIET)
    a = load_checkpoint(out / "member-1" / "best.pt")["model_state_dict"]
    b = load_checkpoint(tmp_path / "single" / "best.pt")["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    m0 = load_checkpoint(out / "member-0" / "best.pt")["model_state_dict"]
    assert any(not torch.equal(m0[k], a[k]) for k in a)  # different seeds, different members


def test_resume_skips_finished_members_and_continues_partial(cu_xyz, tmp_path):
    out = tmp_path / "committee"
    cfg = _committee_cfg(cu_xyz, out, committee=2, optim={"epochs": 2})
    train_committee(cfg, members=[0], log=QUIET)
    with pytest.raises(TrainingInterrupted):
        train_committee(cfg, members=[1], log=QUIET, stop_after_steps=2)  # member 1 partial
    assert load_checkpoint(out / "member-0" / "last.pt")["training"]["epoch"] == 2
    assert load_checkpoint(out / "member-1" / "last.pt")["training"]["epoch"] == 0
    before = os.path.getmtime(out / "member-0" / "last.pt")
    with pytest.raises(FileExistsError, match="--resume"):
        train_committee(cfg, log=QUIET)
    lines = []
    resumed = _committee_cfg(cu_xyz, out, committee=2, optim={"epochs": 2}, run={"resume": True})
    train_committee(resumed, log=lines.append)
    assert os.path.getmtime(out / "member-0" / "last.pt") == before
    assert any("nothing to do" in line for line in lines)
    assert load_checkpoint(out / "member-1" / "last.pt")["training"]["epoch"] == 2


def test_cli_member_option(cu_xyz, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    raw = tiny_config(cu_xyz, tmp_path / "committee", optim={"epochs": 1})
    raw["committee"] = 3
    cfg_path.write_text(yaml.safe_dump(raw))
    assert train_main([str(cfg_path), "--member", "2", "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "committee")) == ["committee.yaml", "member-2"]
    assert "equiformer-export" in capsys.readouterr().out
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(tiny_config(cu_xyz, tmp_path / "s")))
    assert train_main([str(single), "--member", "1"]) == 2
    assert "--member needs a committee config" in capsys.readouterr().err
    # a folder that holds another committee is not reused
    raw["committee"] = 2
    cfg_path.write_text(yaml.safe_dump(raw))
    assert train_main([str(cfg_path), "--member", "0", "--no-progress"]) == 1
    assert "already holds a committee of size 3" in capsys.readouterr().err
