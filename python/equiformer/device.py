"""The one device resolution of every Python route (docs/gpu.md).

Training (``run.device``), ``equiformer-eval --device``, ``equiformer-export --device``, the
ASE calculator, the OpenMM PythonForce and openmm-ml routes and `open_engine_model` all turn
the user's device into a `torch.device` here, so that they accept the same names and refuse
the same way:

    cpu         the CPU
    cuda        torch's current CUDA GPU (cuda:0 unless the program chose another)
    cuda:K      CUDA GPU number K (as torch numbers them, after CUDA_VISIBLE_DEVICES)
    auto        cuda:0 when torch sees a CUDA GPU, else cpu

A ``torch.device`` is accepted as well. Anything else (``mps``, ``tpu``, ``gpu``...) is
refused, and so is a CUDA device that torch cannot see: a `DeviceError` (a ValueError) that
names the problem and the fix, raised before any work is done.

The C++ engines (LAMMPS ``pair_style equiformer device ...``, the native OpenMM force's
``setDevice``) accept the same four names and refuse the same cases in libtorch.
"""

import re
from typing import Union

import torch

DEVICE_NAMES = "cpu, cuda, cuda:K or auto"
NO_GPU = "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"

_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceError(ValueError):
    """A device name this package does not run on, or a GPU that is not there."""


def _fix(option: str, *values: str) -> str:
    """How to write the fix in the caller's syntax: ``option`` has one ``{}`` for the value."""
    return " or ".join(option.format(v) for v in values)


def resolve_device(device: Union[str, torch.device, None] = "cpu", what: str = "device",
                   option: str = "device={!r}") -> torch.device:
    """``device`` (cpu, cuda, cuda:K, auto or a torch.device) as a `torch.device`, checked.

    ``what`` names the setting in messages (``--device``, ``run.device``), ``option`` shows how
    to write a value for it (``--device {}``, ``run.device: {}``)."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise DeviceError(f"{what} must be a device name ({DEVICE_NAMES}), not {device!r}")
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name in ("cpu", "cpu:0"):
        return torch.device("cpu")
    match = _CUDA.fullmatch(name)
    if match is None:
        raise DeviceError(f"{what} {device!r} is not a device this package runs on; use {DEVICE_NAMES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"{what} {device!r} asked for, but {NO_GPU}; use {_fix(option, 'cpu', 'auto')}")
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        seen = f"cuda:0 to cuda:{count - 1}" if count > 1 else "only cuda:0"
        raise DeviceError(f"{what} {device!r} asked for, but torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                          f"({seen}; CUDA_VISIBLE_DEVICES renumbers them); use "
                          f"{_fix(option, 'cuda:0', 'auto')}")
    return torch.device("cuda", index)


def device_kind(device: Union[str, torch.device]) -> str:
    """'cpu' or 'cuda' of a device (or of a resolved device name such as 'cuda:1')."""
    return torch.device(device).type
