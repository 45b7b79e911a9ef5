"""Embed many items into an on-disk, memory-mapped matrix, resumably.

    emb, ok, failures = embed_to_disk(work / "image", images, embed_images, key=enc.cache_key())

Items are embedded in fixed chunks (always the same boundaries, so a resumed run feeds the
encoder the same batches and writes the same bits as an uninterrupted one). After each chunk
the rows are flushed and fsynced, then a small progress file records how many chunks are
done, atomically; a run killed at any point continues from the last recorded chunk when the
same call is made again with the same items and encoder key. Memory holds one chunk of
inputs, never all of them; the result is a copy-on-write memmap (the file is never changed through it).

An image that cannot be read is reported (its index and the reason), its row left zero and
`ok[i]` False; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from genir.encoders.base import ImageLoadError, load_image
from genir.io import atomic_write_json

CHUNK = 1024          # items per chunk: the unit of progress and of resumption
STREAM_VERSION = 1


def items_digest(items: Sequence[Any]) -> str:
    """sha256 over the item list as given (paths or texts, not file contents: re-reading a
    million images to resume would cost as much as embedding them)."""
    h = hashlib.sha256(f"{len(items)}".encode())
    for item in items:
        h.update(str(item).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def embed_to_disk(folder: str | Path, items: Sequence[Any],
                  embed: Callable[[list[Any]], np.ndarray], *, key: str, images: bool,
                  chunk: int = CHUNK, progress: bool = False, desc: str = "embed"
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Embed `items` (image paths when `images`, else texts) with `embed(batch) -> (B, D)`
    into `folder` (created), resuming a run of the same items and key.

    -> ((N, D) float32 read-only memmap, (N,) bool ok, [(index, reason)] of skipped images)
    """
    from tqdm.auto import tqdm

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(items)
    if n == 0:
        raise ValueError(f"{desc}: nothing to embed")
    state_path, data_path, ok_path = folder / "progress.json", folder / "emb.f32", folder / "ok.u8"
    want = {"version": STREAM_VERSION, "key": key, "items": items_digest(items), "n": n,
            "chunk": chunk}
    state = _read_state(state_path)
    if state is None or any(state.get(k) != v for k, v in want.items()) or \
            not data_path.exists() or not ok_path.exists():
        state = {**want, "dim": None, "done": 0, "failed": []}
    done, dim = int(state["done"]), state["dim"]
    failed: list[tuple[int, str]] = [(int(i), str(r)) for i, r in state["failed"]]
    emb: np.memmap | None = None
    ok: np.memmap | None = None
    if dim is not None:
        emb = np.memmap(data_path, dtype=np.float32, mode="r+", shape=(n, dim))
        ok = np.memmap(ok_path, dtype=np.uint8, mode="r+", shape=(n,))
    num_chunks = -(-n // chunk)
    pool = ThreadPoolExecutor(max_workers=2) if images else None
    try:
        with tqdm(total=n, initial=min(done * chunk, n), desc=desc, unit="item",
                  disable=not progress) as bar:
            for c in range(done, num_chunks):
                lo, hi = c * chunk, min((c + 1) * chunk, n)
                batch = list(items[lo:hi])
                good = np.ones(hi - lo, dtype=bool)
                if pool is not None:
                    loaded = list(pool.map(_try_load, batch))
                    for j, (_, error) in enumerate(loaded):
                        if error is not None:
                            good[j] = False
                            failed.append((lo + j, error))
                    batch = [im for im, error in loaded if error is None]
                out = np.asarray(embed(batch), dtype=np.float32) if batch else None
                if emb is None:
                    if out is None:
                        raise ValueError(f"{desc}: no readable image among the first {hi} items")
                    dim = int(out.shape[1])
                    emb = _create(data_path, np.float32, (n, dim))
                    ok = _create(ok_path, np.uint8, (n,))
                assert ok is not None
                if out is not None:
                    if out.shape != (int(good.sum()), emb.shape[1]):
                        raise ValueError(f"{desc}: the encoder returned {out.shape} for "
                                         f"{int(good.sum())} items of width {emb.shape[1]}")
                    emb[lo:hi][good] = out
                ok[lo:hi] = good
                emb.flush()
                ok.flush()
                _fsync(data_path)
                _fsync(ok_path)
                atomic_write_json(state_path, {**want, "dim": dim, "done": c + 1,
                                               "failed": [list(f) for f in failed]})
                bar.update(hi - lo)
    finally:
        if pool is not None:
            pool.shutdown()
    assert dim is not None
    rows = np.memmap(data_path, dtype=np.float32, mode="c", shape=(n, dim))   # copy-on-write
    mask = np.fromfile(ok_path, dtype=np.uint8, count=n).astype(bool)
    return rows, mask, failed


def _try_load(path: Any) -> tuple[Any, str | None]:
    try:
        return load_image(path), None
    except ImageLoadError as exc:
        return None, str(exc)


def _create(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    with open(path, "wb") as f:
        f.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
