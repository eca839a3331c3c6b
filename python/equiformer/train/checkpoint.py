"""Training checkpoints (format ``equiformer-checkpoint``, version 1; see docs/training.md).

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, loadable
with ``torch.load(path, weights_only=True)``:

```
format              "equiformer-checkpoint"
format_version      1
package_version     version of the equiformer package that wrote it
model_hparams       model.hparams (JSON-serialisable; build_model(model_hparams) rebuilds it)
species_symbols     list of chemical symbols in species-index order
cutoff              float, length_unit
length_unit, energy_unit
dtype               "float32" | "float64"
normalization       {"atom_ref": [S floats], "scale": float, "atom_ref_method", "scale_method", "species"}
model_state_dict    the weights to use: the EMA weights when EMA is on
training            resume state (below), or None in a stripped checkpoint
metadata            {"kind": "last" | "best", "epoch", "created", "config", "datasets", "metrics", "best"}
```

``training`` holds ``state_dict`` (raw, non-averaged weights), ``optimizer``, ``scheduler``,
``ema`` (or None), ``epoch`` (completed epochs), ``step_in_epoch`` (steps done in the epoch
being trained when the run stopped mid-epoch, else 0), ``global_step``, ``partial_metrics``,
``best_metric``, ``best_epoch`` and ``rng`` (torch CPU/CUDA, numpy and Python RNG states).
"""

import datetime
import os
import random
import tempfile
import zipfile
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

import equiformer
from equiformer.files import check_archive

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "build_checkpoint",
    "get_rng_state",
    "set_rng_state",
]

FORMAT = "equiformer-checkpoint"
FORMAT_VERSION = 1

_REQUIRED = ("format", "format_version", "model_hparams", "model_state_dict", "normalization")


class CheckpointError(ValueError):
    """A file that is not a usable Equiformer training checkpoint."""


def get_rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dtype_name(model: torch.nn.Module) -> str:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return "float64"


def build_checkpoint(
    model: torch.nn.Module,
    model_state_dict: Dict[str, torch.Tensor],
    normalization: Dict[str, Any],
    training: Optional[Dict[str, Any]] = None,
    metadata: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Assemble the checkpoint dictionary (tensors are moved to the CPU)."""
    hp = dict(model.hparams)
    meta = dict(metadata or {})
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": equiformer.__version__,
        "model_hparams": hp,
        "species_symbols": list(model.species_symbols),
        "cutoff": float(model.cutoff),
        "length_unit": str(hp.get("length_unit", "Angstrom")),
        "energy_unit": str(hp.get("energy_unit", "eV")),
        "dtype": _dtype_name(model),
        "normalization": normalization,
        "model_state_dict": _to_cpu(model_state_dict),
        "training": _to_cpu(training) if training is not None else None,
        "metadata": meta,
    }


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(checkpoint: Dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """Write atomically: a temporary file in the same directory, then ``os.replace``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the modes of any new file
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load and check a checkpoint; raises FileNotFoundError or CheckpointError with a clear cause."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        hint = os.path.join(path, "last.pt")
        raise CheckpointError(f"{path} is a directory, not a checkpoint file" + (f"; did you mean {hint}?" if os.path.isfile(hint) else ""))
    hint = "use RUN_DIR/best.pt or RUN_DIR/last.pt written by equiformer-train"
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a checkpoint: not a PyTorch archive (a text or data file, or a truncated / corrupt "
            f"checkpoint); {hint}"
        )
    check_archive(path, "checkpoint", "use another copy (e.g. RUN_DIR/last.pt or best.pt) or train again")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        try:  # a TorchScript file: probably an exported model
            torch.jit.load(path, map_location="cpu")
            is_script = True
        except Exception:
            is_script = False
        if is_script:
            raise CheckpointError(
                f"{path} is a TorchScript file (an exported model?), not a training checkpoint; {hint}"
            ) from None
        if "Weights only load failed" in first or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path} is a PyTorch file holding arbitrary Python objects, not an Equiformer training checkpoint "
                f"(checkpoints contain only tensors and plain data); {hint}"
            ) from None
        raise CheckpointError(f"{path} is a corrupt or truncated checkpoint ({first}); {hint}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an Equiformer training checkpoint (no format tag {FORMAT!r}); "
            f"{hint}"
        )
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, this package (equiformer "
            f"{equiformer.__version__}) reads version {FORMAT_VERSION}; use the package version that wrote it "
            f"({ckpt.get('package_version', 'unknown')})"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is an incomplete checkpoint: missing {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(
    source: Union[str, os.PathLike, Dict[str, Any]], device: Union[str, torch.device, None] = None
) -> torch.nn.Module:
    """Rebuild the model of a checkpoint (path or loaded dict) with its weights, in eval mode."""
    from equiformer.model import build_model, saved_hparams

    ckpt = load_checkpoint(source) if not isinstance(source, dict) else source
    model = build_model(saved_hparams(ckpt["model_hparams"]))
    dtype = getattr(torch, str(ckpt.get("dtype", "float64")))
    model.to(dtype)
    norm = ckpt["normalization"]
    model.set_energy_normalization(torch.tensor(norm["atom_ref"], dtype=torch.float64), float(norm["scale"]))
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"the checkpoint's weights do not fit the model rebuilt from its hyperparameters: {exc}; "
            "the model code changed since it was written"
        ) from None
    if device is not None:
        model.to(device)
    model.eval()
    return model
