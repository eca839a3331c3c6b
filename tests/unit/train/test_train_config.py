"""Config validation, presets and defaults."""

import pytest

from equiformer.train.config import ConfigError, SCHEMA, describe_schema, load_config, resolve_config
from equiformer.train.presets import TRAINING_PRESETS


def test_defaults_and_preset():
    cfg = resolve_config({"data": {"train": "x.xyz"}})
    assert cfg["preset"] == "small" and cfg["model"] == {"preset": "small"}
    assert cfg["run"]["seed"] == 0 and cfg["optim"]["scheduler"] == "cosine"
    for section, options in SCHEMA.items():
        assert set(cfg[section]) == set(options)


@pytest.mark.parametrize("name,lr,wd,batch,epochs,fw", [("md17-l2", 5e-4, 1e-6, 8, 1500, 80.0), ("md17-l3", 2e-4, 1e-6, 5, 2000, 100.0)])
def test_paper_presets(name, lr, wd, batch, epochs, fw):
    cfg = resolve_config({"preset": name, "data": {"train": "x.xyz"}})
    o = cfg["optim"]
    assert (o["lr"], o["weight_decay"], o["batch_size"], o["epochs"]) == (lr, wd, batch, epochs)
    assert o["warmup_epochs"] == 10 and o["scheduler"] == "cosine"
    assert o["ema_decay"] is None and o["clip_grad_norm"] is None
    assert cfg["loss"]["forces_weight"] == fw and cfg["model"]["preset"] == name


def test_user_overrides_preset():
    cfg = resolve_config({"preset": "md17-l2", "data": {"train": "x"}, "optim": {"lr": 1e-3, "epochs": 3}, "model": {"cutoff": 4}})
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["batch_size"] == 8
    assert cfg["model"] == {"preset": "md17-l2", "cutoff": 4}


@pytest.mark.parametrize("raw,match", [
    ({"trian": {}}, r"unknown config section.*'trian'.*allowed sections: preset, model, data"),
    ({"optim": {"learning_rate": 1}}, r"unknown key\(s\) optim.learning_rate; allowed keys in optim: epochs, batch_size"),
    ({"optim": {"epochs": "ten"}}, r"optim.epochs must be int, got str 'ten'"),
    ({"optim": {"epochs": 2.5}}, r"optim.epochs must be int"),
    ({"run": {"resume": 1}}, r"run.resume must be bool"),
    ({"optim": {"lr": True}}, r"optim.lr must be float or int"),
    ({"optim": {"scheduler": "step"}}, r"optim.scheduler must be one of cosine, plateau, constant; got 'step'"),
    ({"run": {"dtype": "float16"}}, r"run.dtype must be one of float32, float64"),
    ({"optim": {"lr": -1.0}}, r"optim.lr must be >= 0"),
    ({"optim": {"lr": float("nan")}}, r"optim.lr must be a finite number, got nan"),
    ({"loss": {"forces_weight": float("inf")}}, r"loss.forces_weight must be a finite number"),
    ({"preset": "huge"}, r"preset must be one of small, md17-l2, md17-l3"),
    ({"optim": {"ema_decay": 1.0}}, r"ema_decay must be in \[0, 1\)"),
    ({"model": {"species": ["H", "Xx"]}}, r"unknown chemical symbols \['Xx'\]"),
    ({"model": "small"}, r"model must be a mapping"),
    ({"loss": {"energy_weight": 0, "forces_weight": 0}}, r"all loss weights are 0"),
    ({"normalization": {"scale": "max"}}, r"normalization.scale must be"),
    ({"data": {"train": ["a.xyz", 3]}}, r"data.train must be str or list of str"),
])
def test_bad_config_errors(raw, match):
    raw = dict(raw)
    if not isinstance(raw.get("data"), dict):
        raw.setdefault("data", {"train": "x.xyz"})
    else:
        raw["data"] = {"train": "x.xyz", **raw["data"]}
    with pytest.raises(ConfigError, match=match):
        resolve_config(raw)


def test_train_required():
    with pytest.raises(ConfigError, match="data.train is required"):
        resolve_config({})


def test_load_config_relative_paths_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data:\n  train: data/train.xyz\noptim:\n  epochs: 5\n")
    cfg = load_config(str(path), {"optim.lr": 1e-4, "run.seed": 7})
    assert cfg["data"]["train"] == str(tmp_path / "sub" / "data" / "train.xyz")
    assert cfg["optim"]["lr"] == 1e-4 and cfg["optim"]["epochs"] == 5 and cfg["run"]["seed"] == 7
    path.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_describe_schema_mentions_every_option():
    text = describe_schema()
    for section, options in SCHEMA.items():
        for key in options:
            assert f"  {key}:" in text
    for name in TRAINING_PRESETS:
        assert name in text
