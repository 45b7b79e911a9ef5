"""genir flushes subnormal floats to zero from import on, in every torch worker thread,
unless GENIR_KEEP_DENORMALS=1 (see genir.numerics). Checked in fresh processes: the flag is
per thread and set once, so this test process cannot show it either way."""

from __future__ import annotations

import os
import subprocess
import sys

# the smallest positive subnormal float32, made from its bits (no float arithmetic, which
# would itself be flushed), then read by a 2-thread elementwise product (1M elements, so
# torch splits it between its workers) and by a matrix product
PROBE = """
import genir, numpy as np, torch
torch.set_num_threads(2)
tiny = torch.from_numpy(np.full(1 << 20, 1, dtype=np.uint32).view(np.float32))
product = tiny * 1.0
gemm = tiny[:1 << 16].view(256, 256) @ torch.ones(256, 256)
print(int((product != 0).sum()), int((gemm != 0).sum()))
"""


def _probe(**env: str) -> tuple[int, int]:
    run = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    nonzero, gemm_nonzero = run.stdout.split()
    return int(nonzero), int(gemm_nonzero)


def test_import_flushes_subnormals_in_every_thread():
    assert _probe() == (0, 0)


def test_keep_denormals_leaves_them():
    nonzero, gemm_nonzero = _probe(GENIR_KEEP_DENORMALS="1")
    assert nonzero == 1 << 20 and gemm_nonzero == 256 * 256
