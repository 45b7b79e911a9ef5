"""What subnormal floats cost on this CPU, with genir's flush (the default) and without it.

    .venv/bin/python benchmarks/denormals.py

Each mode runs in its own process (the flush must be set before torch starts its worker
threads; `GENIR_KEEP_DENORMALS=1` turns genir's off), one after the other, and times
  gemm      a 1024^3 float32 matrix product, normal inputs and subnormal ones (1e-39)
  train     one training step (forward, backward, AdamW) of a T5-small-sized decoder
            (d 512, 6 layers, 30 prefix vectors) at batch 256 with fresh random weights:
            what the flush costs where there is nothing to flush
Prints the median of the repeats per row and the keep / flush ratio. Not a test. The
slowdown late in a real training run takes hundreds of steps to appear and is not
reproduced here; the measured run is in docs/benchmarks/denormals_training.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODES = {"flush (default)": {}, "keep denormals": {"GENIR_KEEP_DENORMALS": "1"}}


def measure(repeats: int) -> dict[str, float]:
    import numpy as np
    import torch

    from genir.decoder.model import T5_SMALL_SIZE, CodeDecoder, DecoderConfig

    def median_s(fn, n: int) -> float:
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    tiny = a * 1e-39                      # subnormal float32 (|x| < 1.2e-38); 0 under the flush
    out = {"gemm normal": median_s(lambda: a @ b, 5 * repeats),
           "gemm subnormal inputs": median_s(lambda: tiny @ b, repeats)}
    cfg = DecoderConfig(query_dim=256, **T5_SMALL_SIZE)
    query = torch.randn(256, 256, generator=g)
    codes = torch.randint(256, (256, 4), generator=g)
    torch.manual_seed(0)
    model = CodeDecoder(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> None:
        loss = model.loss(query, codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out["train step, fresh weights"] = median_s(step, repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats)))
        return
    results = {}
    for mode, env in MODES.items():
        run = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True)
        results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds, median of "
          f"{args.repeats} (gemm normal: {5 * args.repeats})")
    flush, keep = results["flush (default)"], results["keep denormals"]
    print(f"{'':24} {'flush (default)':>16} {'keep denormals':>16} {'keep/flush':>11}")
    for row in flush:
        print(f"{row:24} {flush[row]:16.4f} {keep[row]:16.4f} {keep[row] / flush[row]:10.1f}x")


if __name__ == "__main__":
    main()
