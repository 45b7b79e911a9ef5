"""`genir build` from 1M synthetic embeddings in a file: wall time and peak memory.

Not a test: writes a clustered (N, D) float32 matrix (default 1M x 384, MiniLM's width) as
a .npy (written through a memmap, never whole in memory) or a parquet file, runs
`genir build FILE --out DIR --encoder none` in a child process at the default settings
(tokenizer + decoder at default steps), and reports its wall time, its peak resident set
(getrusage of the child; the matrix's file pages count once touched) against the matrix's
bytes, the phase timings from the manifest, then a search through the saved index in a
second child. The issue's targets: peak RSS <= 3x the matrix, build < 30 min on 2 cores.

    .venv/bin/python benchmarks/build_1m.py [--n 1000000] [--dim 384] [--format npy]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEARCH_CHILD = """
import sys, time, json
import numpy as np
t0 = time.perf_counter()
from genir.index import GenerativeIndex
index = GenerativeIndex.load(sys.argv[1])
t1 = time.perf_counter()
q = np.load(sys.argv[2], mmap_mode="r")[:1000:10].copy()
index.search(q[:8], 10)
t2 = time.perf_counter()
_, rows = index.search(q, 10, rerank=True)
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "queries": len(q), "search_s": t3 - t2,
                  "self_recall_at_10": float((rows == np.arange(0, 1000, 10)[:, None]).any(1).mean())}))
"""


def write_matrix(path: Path, n: int, dim: int, fmt: str, seed: int = 0) -> int:
    """Clustered unit vectors, written chunk by chunk -> the matrix's bytes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    chunk = 65_536
    if fmt == "npy":
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            x = centers[rng.integers(1000, size=m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        path.with_suffix(".ids.txt").write_text("".join(f"item-{i}\n" for i in range(n)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            x = centers[rng.integers(1000, size=m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
            table = pa.table({"id": [f"item-{i}" for i in range(start, start + m)],
                              "vector": vectors})
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        assert writer is not None
        writer.close()
    return n * dim * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--format", choices=["npy", "parquet"], default="npy")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/genir-build-1m"))
    ap.add_argument("--steps", type=int, default=None, help="decoder steps (default: genir's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    data = args.dir / f"emb.{args.format}"
    t0 = time.perf_counter()
    matrix_bytes = write_matrix(data, args.n, args.dim, args.format)
    print(f"wrote {data}: {args.n} x {args.dim} float32 = {matrix_bytes / 2**30:.2f} GiB "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    out = args.dir / "index"
    genir = str(Path(sys.executable).with_name("genir"))
    cmd = [genir, "build", str(data), "--out", str(out), "--encoder", "none", "--no-progress"]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest["extra"]["train_timings"]
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    search = json.loads(subprocess.run([sys.executable, "-c", SEARCH_CHILD, str(out), str(data)]
                                       if args.format == "npy" else
                                       [sys.executable, "-c", "print('{}')"],
                                       check=True, capture_output=True, text=True).stdout)
    result = {"n": args.n, "dim": args.dim, "format": args.format,
              "matrix_gib": matrix_bytes / 2**30, "build_wall_s": wall,
              "build_peak_rss_gib": peak / 2**30, "peak_over_matrix": peak / matrix_bytes,
              "tokenizer_s": timings.get("tokenizer_s"), "decoder_s": timings.get("decoder_s"),
              "decoder_steps": manifest["config"]["train"]["steps"],
              "index_disk_gib": disk / 2**30, **search}
    print(json.dumps(result, indent=1))
    print(f"\nbuild {args.n:,} x {args.dim} ({args.format}): {wall / 60:.1f} min, peak RSS "
          f"{peak / 2**30:.2f} GiB = {peak / matrix_bytes:.2f}x the matrix "
          f"({matrix_bytes / 2**30:.2f} GiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
