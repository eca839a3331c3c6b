"""Training: configuration, presets, normalisation, loss, EMA, schedule, checkpoints, loop."""

from equiformer.train.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from equiformer.train.config import ConfigError, load_config, resolve_config
from equiformer.train.presets import TRAINING_PRESETS

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "ConfigError",
    "load_config",
    "resolve_config",
    "TRAINING_PRESETS",
    "train",
]


def train(cfg, **kwargs):
    """Run a training run from a resolved config (see equiformer.train.trainer.train)."""
    from equiformer.train.trainer import train as _train

    return _train(cfg, **kwargs)
