"""Time to a first result after `GenerativeIndex.load`, and steady queries/s at batch 1 and 32.

Not a test: prints a table and writes JSON. A random index of the default decoder's size
(synthetic codes and embeddings) is saved once; each measurement runs in a new process:
- first result: import, `GenerativeIndex.load`, then the first search (one query) and the
  second, with numba's cache empty (NUMBA_CACHE_DIR pointing at a new folder: everything
  compiles) and then warm (the same folder: what `genir compile` leaves behind);
- queries/s at batch 1 and 32 (beam 30, the default; the batch size over the median time
  of a search call, searching for 4 s) after two untimed searches, for this checkout
  and, with --compare-with DIR, another checkout's `src/`, run in alternation so that
  both are measured in the same machine state.

    .venv/bin/python benchmarks/first_search.py --compare-with /tmp/genir-before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD_FIRST = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from genir.index import GenerativeIndex
t1 = time.perf_counter()
index = GenerativeIndex.load(sys.argv[1])
t2 = time.perf_counter()
q = np.load(sys.argv[2])
index.search(q[:1], 10)
t3 = time.perf_counter()
index.search(q[1:2], 10)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_search_s": t3 - t2,
                  "second_search_s": t4 - t3}))
"""

CHILD_QPS = """
import json, sys, time
import numpy as np
from genir.index import GenerativeIndex
index = GenerativeIndex.load(sys.argv[1])
q = np.load(sys.argv[2])
out = {}
for batch in (1, 32):
    for _ in range(2):
        index.search(q[:batch], 10)
    times, start, t_end = [], 0, time.perf_counter() + 4.0
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        index.search(q[start:start + batch], 10)
        times.append(time.perf_counter() - t0)
        start = (start + batch) % (len(q) - batch)
    out[f"batch_{batch}_qps"] = batch / float(np.median(times))
print(json.dumps(out))
"""


def child(code: str, src: Path, *args: str, cache: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True)
    if run.returncode:
        raise RuntimeError(f"the child failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def build(folder: Path, num_items: int) -> Path:
    import torch

    from genir.decoder.model import CodeDecoder, DecoderConfig
    from genir.ids.rq import ResidualQuantizer, RQConfig
    from genir.index import GenerativeIndex, IndexConfig

    rng = np.random.default_rng(0)
    cfg = DecoderConfig()
    emb = rng.normal(size=(num_items, cfg.query_dim)).astype(np.float32)
    codes = rng.integers(cfg.codebook_sizes[0], size=(num_items, cfg.num_levels))
    torch.manual_seed(0)
    tokenizer = ResidualQuantizer(RQConfig()).fit(emb)     # (its codebooks are saved)
    index = GenerativeIndex(tokenizer=tokenizer, item_emb=emb, codes=codes,
                            decoder=CodeDecoder(cfg).eval(), config=IndexConfig(),
                            item_ids=[str(i) for i in range(num_items)])
    index.save(folder / "index")
    q = rng.normal(size=(1024, cfg.query_dim)).astype(np.float32)
    np.save(folder / "queries.npy", q / np.linalg.norm(q, axis=1, keepdims=True))
    return folder / "index"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating queries/s rounds")
    ap.add_argument("--compare-with", type=Path, help="another checkout (its src/ is run)")
    ap.add_argument("--json", type=Path, default=Path("runs/first_search.json"))
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"this": here}
    if args.compare_with:
        trees["other"] = args.compare_with.resolve() / "src"
    result: dict = {"items": args.items, "cpu": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        index = build(folder, args.items)
        q = str(folder / "queries.npy")
        for name, src in trees.items():
            cache = folder / f"numba-{name}"
            cache.mkdir()
            result[f"{name}_fresh_cache"] = child(CHILD_FIRST, src, str(index), q, cache=cache)
            result[f"{name}_warm_cache"] = child(CHILD_FIRST, src, str(index), q, cache=cache)
        for r in range(args.rounds):
            for name, src in trees.items():
                got = child(CHILD_QPS, src, str(index), q, cache=folder / f"numba-{name}")
                result.setdefault(f"{name}_qps", []).append(got)
                print(f"round {r}: {name} {got}", flush=True)
    for name in trees:
        for cache in ("fresh", "warm"):
            t = result[f"{name}_{cache}_cache"]
            print(f"{name:6s} {cache} cache: import {t['import_s']:.2f} s, load "
                  f"{t['load_s']:.2f} s, first search {t['first_search_s']:.3f} s, second "
                  f"{t['second_search_s']:.4f} s")
        for batch in (1, 32):
            runs = [r[f"batch_{batch}_qps"] for r in result[f"{name}_qps"]]
            print(f"{name:6s} batch {batch:2d}: {np.median(runs):8.1f} q/s (median of "
                  f"{len(runs)}: {', '.join(f'{v:.0f}' for v in runs)})")
    if len(trees) == 2:
        for batch in (1, 32):
            ratios = [a[f"batch_{batch}_qps"] / b[f"batch_{batch}_qps"]
                      for a, b in zip(result["this_qps"], result["other_qps"], strict=True)]
            result[f"ratio_batch_{batch}"] = ratios
            print(f"this / other, batch {batch:2d}: {', '.join(f'{v:.3f}' for v in ratios)}")
    result["when"] = time.strftime("%Y-%m-%d %H:%M")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
