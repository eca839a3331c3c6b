"""The training configuration: schema, defaults, validation and loading from YAML.

A config is a mapping with the sections below (all optional except ``data.train``). Values
are resolved as *schema default <- training preset <- user file*; the ``model`` section is
free-form (merged key by key and handed to ``build_model``, which validates it).

Run ``python -m equiformer.train.config`` to print every option with its default and meaning.
"""

import copy
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import yaml

from equiformer.train.presets import TRAINING_PRESETS, training_preset

__all__ = ["ConfigError", "SCHEMA", "resolve_config", "load_config", "describe_schema", "DEFAULT_PRESET"]

DEFAULT_PRESET = "small"


class ConfigError(ValueError):
    """A malformed training configuration."""


@dataclass(frozen=True)
class Option:
    types: Tuple[type, ...]
    default: Any
    doc: str
    choices: Optional[Tuple[Any, ...]] = None
    nullable: bool = False
    minimum: Optional[float] = None
    list_of: Optional[type] = None  # also accept a list of this type


_F = (float, int)
SCHEMA: Dict[str, Dict[str, Option]] = {
    "data": {
        "train": Option((str,), None, "training data file (any ASE-readable file, e.g. extxyz), or a list of files", nullable=True, list_of=str),
        "validation": Option((str,), None, "validation data file(s); null: split off data.val_fraction of the training data", nullable=True, list_of=str),
        "val_fraction": Option(_F, 0.1, "fraction of the training data used for validation when data.validation is null", minimum=0.0),
        "n_train": Option((int,), None, "use this many training structures (random subset); null: all not used for validation", nullable=True, minimum=1),
        "n_val": Option((int,), None, "validation structures split off the training data; overrides val_fraction", nullable=True, minimum=0),
        "split_seed": Option((int,), None, "seed of the train/validation split; null: run.seed", nullable=True),
        "index": Option((str,), ":", "ASE frame selection applied to every file, e.g. ':' or '::10'"),
        "format": Option((str,), None, "ASE file format; null: guessed from the file name", nullable=True),
        "energy_key": Option((str,), "energy", "name of the total energy (calculator result or atoms.info key)"),
        "forces_key": Option((str,), "forces", "name of the forces (calculator result or atoms.arrays key)"),
        "stress_key": Option((str,), "stress", "name of the stress (calculator result or atoms.info key; Voigt-6 or 3x3, ASE sign)"),
    },
    "loss": {
        "kind": Option((str,), "mse", "error function of every term", choices=("mse", "l1", "huber")),
        "huber_delta": Option(_F, 0.01, "Huber transition point (in normalised units)", minimum=0.0),
        "energy_weight": Option(_F, 1.0, "weight of the per-atom energy term", minimum=0.0),
        "forces_weight": Option(_F, 10.0, "weight of the force-component term", minimum=0.0),
        "stress_weight": Option(_F, 0.0, "weight of the stress term (needs periodic structures with stress labels)", minimum=0.0),
    },
    "optim": {
        "epochs": Option((int,), 100, "number of training epochs", minimum=1),
        "batch_size": Option((int,), 4, "structures per training batch", minimum=1),
        "val_batch_size": Option((int,), None, "structures per validation batch; null: batch_size", nullable=True, minimum=1),
        "lr": Option(_F, 1e-3, "peak learning rate (AdamW)", minimum=0.0),
        "weight_decay": Option(_F, 1e-6, "AdamW weight decay (applied to weight matrices, not to biases, norms or scalars)", minimum=0.0),
        "betas": Option((list,), [0.9, 0.999], "AdamW betas"),
        "warmup_epochs": Option(_F, 2, "linear warm-up length in epochs (fractional allowed)", minimum=0.0),
        "warmup_lr": Option(_F, 1e-5, "learning rate at the start of the warm-up", minimum=0.0),
        "scheduler": Option((str,), "cosine", "schedule after the warm-up", choices=("cosine", "plateau", "constant")),
        "min_lr": Option(_F, 1e-5, "final learning rate of the cosine schedule / floor of the plateau schedule", minimum=0.0),
        "plateau_factor": Option(_F, 0.5, "plateau schedule: multiply the learning rate by this on a plateau", minimum=0.0),
        "plateau_patience": Option((int,), 10, "plateau schedule: epochs without validation improvement before decaying", minimum=0),
        "ema_decay": Option(_F, 0.99, "decay of the exponential moving average of the weights; null: no EMA", nullable=True, minimum=0.0),
        "clip_grad_norm": Option(_F, 10.0, "clip the global gradient norm to this; null: no clipping", nullable=True, minimum=0.0),
    },
    "normalization": {
        "atom_ref": Option((str, dict), "lstsq", "per-species reference energies: 'lstsq' (least squares on the training energies), 'zero', or a mapping symbol -> energy"),
        "scale": Option((str, float, int), "auto", "energy scale: 'auto' (force RMS if forces are trained, else per-atom energy std), 'forces_rms', 'energy_std', or a number"),
    },
    "run": {
        "seed": Option((int,), 0, "seed of the weights, the data order and the split"),
        "output_dir": Option((str,), "runs/equiformer", "directory for checkpoints (last.pt, best.pt), metrics.csv and config.yaml"),
        "device": Option((str,), "auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ..."),
        "dtype": Option((str,), "float64", "model and input dtype", choices=("float32", "float64")),
        "resume": Option((bool,), False, "continue from output_dir/last.pt when it exists"),
        "overwrite": Option((bool,), False, "start afresh even if output_dir holds a previous run (its checkpoints are replaced)"),
        "num_threads": Option((int,), None, "torch CPU threads; null: torch's default", nullable=True, minimum=1),
        "progress": Option((bool,), True, "show a tqdm progress bar"),
        "val_every": Option((int,), 1, "validate every this many epochs (and at the last epoch)", minimum=1),
    },
    "committee": {
        "size": Option((int,), 1, "members trained (committee: K is short for committee.size: K); member k uses seed "
                       "run.seed + k and writes output_dir/member-k", minimum=1),
        "split": Option((str,), "shared", "train/validation split of the members: 'shared' (all use data.split_seed, "
                        "or run.seed) or 'per_member' (member k splits with that seed + k)",
                        choices=("shared", "per_member")),
    },
}
SECTIONS = ("preset", "model") + tuple(SCHEMA)


def _type_name(opt: Option) -> str:
    names = sorted({t.__name__ for t in opt.types})
    if opt.list_of is not None:
        names.append(f"list of {opt.list_of.__name__}")
    if opt.nullable:
        names.append("null")
    return " or ".join(names)


def _check_value(section: str, key: str, value: Any, opt: Option) -> Any:
    where = f"{section}.{key}"
    if value is None:
        if opt.nullable:
            return None
        raise ConfigError(f"{where} must not be null; expected {_type_name(opt)}: {opt.doc}")
    if opt.list_of is not None and isinstance(value, list):
        bad = [v for v in value if not isinstance(v, opt.list_of)]
        if bad or not value:
            raise ConfigError(f"{where} must be {_type_name(opt)}, got {value!r}")
        return list(value)
    ok = isinstance(value, opt.types) and not (isinstance(value, bool) and bool not in opt.types)
    if not ok:
        raise ConfigError(
            f"{where} must be {_type_name(opt)}, got {type(value).__name__} {value!r} ({opt.doc})"
        )
    if float in opt.types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r} ({opt.doc})")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, opt.choices))}; got {value!r}")
    if opt.minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < opt.minimum:
        raise ConfigError(f"{where} must be >= {opt.minimum}, got {value!r}")
    return value


def resolve_config(raw: Optional[Dict[str, Any]], require_data: bool = True) -> Dict[str, Any]:
    """Validate ``raw`` and fill in preset values and defaults. Raises ConfigError."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; allowed sections: {', '.join(SECTIONS)}")
    preset_name = raw.get("preset", DEFAULT_PRESET)
    if not isinstance(preset_name, str) or preset_name not in TRAINING_PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(TRAINING_PRESETS)}; got {preset_name!r}")
    preset = training_preset(preset_name)

    if isinstance(raw.get("committee"), int) and not isinstance(raw["committee"], bool):
        raw = dict(raw, committee={"size": raw["committee"]})  # `committee: 4` is committee.size: 4
    cfg: Dict[str, Any] = {"preset": preset_name}
    model = dict(preset.get("model", {}))
    user_model = raw.get("model", {}) or {}
    if not isinstance(user_model, dict):
        raise ConfigError(f"model must be a mapping of model hyperparameters (e.g. preset, cutoff, species), got {user_model!r}")
    model.update(copy.deepcopy(user_model))
    if "species" in model and model["species"] is not None:
        sp = model["species"]
        if not (isinstance(sp, list) and sp and all(isinstance(s, str) for s in sp)):
            raise ConfigError(f"model.species must be a list of chemical symbols or null, got {sp!r}")
        from ase.data import atomic_numbers

        bad = [s for s in sp if s not in atomic_numbers]
        if bad:
            raise ConfigError(f"model.species contains unknown chemical symbols {bad}")
    if "cutoff" in model and not (isinstance(model["cutoff"], (int, float)) and not isinstance(model["cutoff"], bool) and model["cutoff"] > 0):
        raise ConfigError(f"model.cutoff must be a positive number, got {model['cutoff']!r}")
    cfg["model"] = model

    for section, options in SCHEMA.items():
        values = {k: copy.deepcopy(o.default) for k, o in options.items()}
        values.update(copy.deepcopy(preset.get(section, {})))
        user = raw.get(section, {})
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError(f"section {section} must be a mapping with keys {', '.join(options)}; got {user!r}")
        bad = [k for k in user if k not in options]
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in bad)}; allowed keys in {section}: {', '.join(options)}")
        values.update(user)
        for key, opt in options.items():
            values[key] = _check_value(section, key, values[key], opt)
        cfg[section] = values

    betas = cfg["optim"]["betas"]
    if not (len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
    ar = cfg["normalization"]["atom_ref"]
    if isinstance(ar, str) and ar not in ("lstsq", "zero"):
        raise ConfigError(f"normalization.atom_ref must be 'lstsq', 'zero' or a mapping symbol -> energy; got {ar!r}")
    if isinstance(ar, dict) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ar.values()):
        raise ConfigError(f"normalization.atom_ref values must be numbers, got {ar!r}")
    sc = cfg["normalization"]["scale"]
    if isinstance(sc, str) and sc not in ("auto", "forces_rms", "energy_std"):
        raise ConfigError(f"normalization.scale must be 'auto', 'forces_rms', 'energy_std' or a positive number; got {sc!r}")
    if not isinstance(sc, str) and not sc > 0:
        raise ConfigError(f"normalization.scale must be positive, got {sc!r}")
    ema = cfg["optim"]["ema_decay"]
    if ema is not None and not ema < 1:
        raise ConfigError(f"optim.ema_decay must be in [0, 1) or null, got {ema!r}")
    if require_data and not cfg["data"]["train"]:
        raise ConfigError("data.train is required: the training data file(s)")
    loss = cfg["loss"]
    if loss["energy_weight"] == 0 and loss["forces_weight"] == 0 and loss["stress_weight"] == 0:
        raise ConfigError("all loss weights are 0; set loss.energy_weight, loss.forces_weight or loss.stress_weight")
    return cfg


def load_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Read a YAML config, apply ``overrides`` ({"section.key": value}), resolve and validate.

    Relative data paths are taken relative to the config file's directory.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must contain a mapping of sections ({', '.join(SECTIONS)})")
    for dotted, value in (overrides or {}).items():
        parts = dotted.split(".")
        if len(parts) == 1:
            raw[parts[0]] = value
            continue
        if len(parts) != 2:
            raise ConfigError(f"override {dotted!r} must look like section.key")
        section = raw.setdefault(parts[0], {})
        if section is None:
            section = raw[parts[0]] = {}
        if not isinstance(section, dict):
            raise ConfigError(f"cannot override {dotted}: section {parts[0]} is not a mapping")
        section[parts[1]] = value
    base = os.path.dirname(os.path.abspath(path))
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation"):
            v = data.get(key)
            if isinstance(v, str):
                data[key] = _rel(base, v)
            elif isinstance(v, list):
                data[key] = [_rel(base, p) if isinstance(p, str) else p for p in v]
    cfg = resolve_config(raw)
    return cfg


def _rel(base: str, p: str) -> str:
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))


def describe_schema() -> str:
    """Every option with its type, default and meaning (printed by ``equiformer-train --help-config``)."""
    lines = [
        "preset: training preset, one of " + ", ".join(TRAINING_PRESETS) + f" (default {DEFAULT_PRESET}); see equiformer/train/presets.py",
        "model: model hyperparameters for build_model (preset, species, cutoff, overrides); species null: inferred from the data",
    ]
    for section, options in SCHEMA.items():
        lines.append(f"{section}:")
        for key, opt in options.items():
            choices = f" [{' | '.join(map(str, opt.choices))}]" if opt.choices else ""
            lines.append(f"  {key}: {_type_name(opt)}{choices} = {opt.default!r}  -- {opt.doc}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe_schema())
