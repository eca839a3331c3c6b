"""equiformer.host_memory: opening a model for an engine keeps freed host memory for the next
call (large blocks from the heap, the heap never trimmed); EQUIFORMER_KEEP_FREED_MEMORY=0
leaves glibc's defaults. Each case runs in a fresh process (the setting is per process)."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's (mallopt); other C libraries are left alone")

# opens a TorchScript file as the engines do, then asks glibc where a 256 MB tensor came from
# (bytes in mmapped regions while it lives) and what the heap holds after it is freed
SCRIPT = r"""
import ctypes, json, sys
import torch
from equiformer.export.contract import open_engine_model

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

info = ctypes.CDLL(None).mallinfo2
info.restype = Mallinfo2
torch.jit.save(torch.jit.script(torch.nn.Identity()), sys.argv[1])
open_engine_model(sys.argv[1])
from equiformer.host_memory import keep_freed_memory
before = info().hblkhd
block = torch.ones(256 << 20, dtype=torch.uint8)
mapped = info().hblkhd - before
del block
print(json.dumps({"applied": keep_freed_memory(), "mapped": mapped, "heap_after": info().arena}))
"""


def _run(tmp_path, env_value):
    env = dict(os.environ)
    env.pop("EQUIFORMER_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["EQUIFORMER_KEEP_FREED_MEMORY"] = env_value
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "identity.pt")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_opening_a_model_keeps_freed_memory(tmp_path):
    got = _run(tmp_path, None)
    assert got["applied"] is True
    assert got["mapped"] == 0, "a 256 MB tensor was given an mmap of its own"
    assert got["heap_after"] >= 256 << 20, "the heap gave the freed tensor back"


def test_opt_out_leaves_glibc_defaults(tmp_path):
    got = _run(tmp_path, "0")
    assert got["applied"] is False
    assert got["mapped"] >= 256 << 20  # glibc's default: an mmap per large block
