"""Host memory between calls: keep what a call freed for the next call.

One energy+forces call of a large graph allocates and frees gigabytes of per-edge tensors on
the CPU. glibc serves each allocation above its mmap threshold (at most 32 MB) with a fresh
mmap and gives it back to the system on free, so every call page-faults its whole working set
in again, and the kernel zeroes every page first: at the paper's L3 settings on 500 atoms that
was more than half of a compiled package's call (docs/benchmarks.md). MD repeats the same call, so
the engines (this module for Python's, the C++ runtime for LAMMPS and OpenMM) ask glibc once
per process to serve large blocks from the heap and never to trim it: the second call on finds
its memory mapped already. The process's resident memory then stays at its largest call.

EQUIFORMER_KEEP_FREED_MEMORY=0 leaves the allocator as it is. Other C libraries: nothing is
changed (mallopt is glibc's).
"""

import ctypes
import os
import platform
from typing import Optional

ENV = "EQUIFORMER_KEEP_FREED_MEMORY"
# glibc's <malloc.h>: M_TRIM_THRESHOLD -1 (-1 disables trimming), M_MMAP_MAX -4 (0: no mmap)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4

_applied: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc, once per process, to keep freed memory for reuse (module
    docstring). Returns whether it is set (False: opted out, or not glibc)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV) == "0":  # as the C++ runtime reads it
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
