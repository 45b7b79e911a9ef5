"""Search queries/s of this checkout against an earlier commit, in one process, in pairs.

Not a test: prints a table. The earlier commit's `src/genir` is exported (`git archive`)
into a temporary folder as a package renamed `genir_then`, so both versions load in one
process; a random index of the default decoder's size (as in `first_search.py`) is loaded
by each, and every batch is searched by both, alternating which goes first. Separate
processes on this VM drifted by ±30% between runs; pairs within one process do not.

    .venv/bin/python benchmarks/ab_versions.py c333fcb

Prints, per beam and batch size, both versions' queries/s (batch over the median call)
and the median and quartiles of the paired time ratios (this / then).
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from first_search import build

from genir.index import GenerativeIndex as Now

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, folder: Path) -> None:
    """`rev`'s src/genir as the package `genir_then` under `folder`."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src/genir"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "genir_then"
    (folder / "src" / "genir").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\b(from|import) genir\b", r"\1 genir_then",
                               text.replace('"genir.', '"genir_then.')))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the earlier commit")
    ap.add_argument("--items", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export(args.rev, folder)
        sys.path.insert(0, str(folder))
        from genir_then.index import GenerativeIndex as Then  # type: ignore[import-not-found]

        build(folder, args.items)
        q = np.load(folder / "queries.npy")
        index = {"this": Now.load(folder / "index"), "then": Then.load(folder / "index")}
        print(f"{args.items} items, this checkout against {args.rev}")
        for beam in (10, 30):
            for batch in (1, 32):
                for ix in index.values():
                    for _ in range(3):
                        ix.search(q[:batch], 10, beam_size=beam)
                times: dict[str, list[float]] = {"this": [], "then": []}
                for rep in range(200 if batch == 1 else 40):
                    start = rep * batch % (len(q) - batch)
                    for name in ("this", "then") if rep % 2 else ("then", "this"):
                        t0 = time.perf_counter()
                        index[name].search(q[start:start + batch], 10, beam_size=beam)
                        times[name].append(time.perf_counter() - t0)
                ratio = np.array(times["this"]) / np.array(times["then"])
                print(f"beam {beam:2d} batch {batch:2d}: then "
                      f"{batch / np.median(times['then']):6.0f} q/s, this "
                      f"{batch / np.median(times['this']):6.0f} q/s, time this / then "
                      f"{np.median(ratio):.3f} (quartiles {np.percentile(ratio, 25):.3f}-"
                      f"{np.percentile(ratio, 75):.3f})", flush=True)


if __name__ == "__main__":
    main()
