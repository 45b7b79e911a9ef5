"""Subnormal floats on the CPU: genir flushes them to zero (FTZ/DAZ), from import on.

Why: on x86 an operation that reads or writes subnormal float32 values (|x| < 1.2e-38)
takes a microcode assist per value; a 1024^3 matrix product of them ran 150-199x slower here
(`benchmarks/denormals.py`). Training makes them as it goes on (where in the model was
not measured): a T5-small-sized decoder on Fashion-MNIST slowed from 1.9 s to 9.8 s a
step within 275 steps without the flush, and stayed at 1.66-2.28 s with it
(docs/benchmarks.md). Flushing changes values only below
1.2e-38, where float32 has already lost most of its precision; TensorFlow runs its
kernels this way by default, PyTorch does not.

Scope: the flag lives in each thread's MXCSR register. `torch.set_flush_denormal` sets it
for the calling thread only, and torch's OpenMP workers copy it from the thread that
creates them when the first parallel operation runs. So `import genir` sets it, which
reaches every worker when genir is imported before any torch work (every `genir` command,
and scripts that import genir at the top); where torch already ran parallel work, call
`torch.set_flush_denormal(True)` first thing instead. `GENIR_KEEP_DENORMALS=1` in the
environment leaves IEEE subnormals alone.
What this is not: a precision setting (bf16/fp16 are untouched), or anything on a GPU.
"""

from __future__ import annotations

import os

import torch

KEEP_ENV = "GENIR_KEEP_DENORMALS"


def flush_denormals() -> bool:
    """Flush subnormal floats to zero in this thread (and the workers it starts later),
    unless `GENIR_KEEP_DENORMALS=1`. Returns whether the flush is on (False also where
    the CPU has no such mode)."""
    if os.environ.get(KEEP_ENV, "") not in ("", "0"):
        return False
    return bool(torch.set_flush_denormal(True))
