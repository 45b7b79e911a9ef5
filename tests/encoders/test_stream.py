"""Streaming, resumable embedding into a memory-mapped file: a run killed part way and run
again equals an uninterrupted run, bit for bit, and embeds only what was left."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fixtures import png_bytes, put
from genir.encoders.stream import embed_to_disk


def fake_embed(batch: list) -> np.ndarray:
    """Deterministic per item: a vector seeded by the item's text."""
    rows = []
    for item in batch:
        seed = int(hashlib.sha256(str(item).encode()).hexdigest()[:8], 16)
        rows.append(np.random.default_rng(seed).normal(size=6))
    return np.asarray(rows, dtype=np.float32)


class Killed(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    items = [f"text {i}" for i in range(50)]
    whole, ok, failed = embed_to_disk(tmp_path / "whole", items, fake_embed, key="k",
                                      images=False, chunk=8)
    assert ok.all() and failed == [] and whole.shape == (50, 6)
    calls = []

    def dies_in_chunk_4(batch):
        calls.append(len(batch))
        if len(calls) == 4:
            raise Killed
        return fake_embed(batch)

    with pytest.raises(Killed):
        embed_to_disk(tmp_path / "part", items, dies_in_chunk_4, key="k", images=False, chunk=8)
    assert json.loads((tmp_path / "part" / "progress.json").read_text())["done"] == 3
    calls.clear()
    resumed, ok, _ = embed_to_disk(tmp_path / "part", items,
                                   lambda b: calls.append(len(b)) or fake_embed(b),
                                   key="k", images=False, chunk=8)
    assert calls == [8, 8, 8, 2]          # chunks 4..7 only
    assert ok.all() and np.array_equal(resumed, whole)
    assert resumed.tobytes() == whole.tobytes()


def test_changed_items_or_key_start_over(tmp_path):
    items = [f"t{i}" for i in range(20)]
    embed_to_disk(tmp_path, items, fake_embed, key="k", images=False, chunk=8)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return fake_embed(batch)

    embed_to_disk(tmp_path, items, counting, key="k", images=False, chunk=8)
    assert calls == []                     # all done: nothing re-embedded
    out, _, _ = embed_to_disk(tmp_path, items, counting, key="other encoder", images=False, chunk=8)
    out = np.array(out)   # the memmap reads the folder, which the next call rewrites
    assert calls == [8, 8, 4]
    out2, _, _ = embed_to_disk(tmp_path, items[::-1], counting, key="other encoder",
                               images=False, chunk=8)
    assert calls == [8, 8, 4] * 2 and np.array_equal(out2, out[::-1])


def test_sigkill_mid_chunk_then_rerun(tmp_path):
    """A real SIGKILL while a chunk is half written: the rerun redoes that chunk."""
    items = [f"item {i}" for i in range(40)]
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{os.path.dirname(__file__)!r}, {os.path.dirname(os.path.dirname(__file__))!r}]
        from test_stream import fake_embed
        from genir.encoders.stream import embed_to_disk
        calls = []
        def embed(batch):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return fake_embed(batch)
        embed_to_disk({str(tmp_path / "run")!r}, {items!r}, embed, key="k", images=False, chunk=8)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["done"] == 2
    resumed, ok, _ = embed_to_disk(tmp_path / "run", items, fake_embed, key="k", images=False,
                                   chunk=8)
    whole, _, _ = embed_to_disk(tmp_path / "whole", items, fake_embed, key="k", images=False,
                                chunk=8)
    assert ok.all() and resumed.tobytes() == whole.tobytes()


def test_unreadable_images_are_reported_and_skipped(tmp_path):
    for i in range(5):
        put(tmp_path, f"{i}.png", png_bytes((8 + i, 8)))
    (tmp_path / "2.png").write_bytes(b"this is not a png")
    paths = [str(tmp_path / f"{i}.png") for i in range(5)]
    seen = []

    def embed(batch):
        seen.extend(im.size for im in batch)     # PIL images, already decoded
        return np.ones((len(batch), 3), np.float32)

    emb, ok, failed = embed_to_disk(tmp_path / "w", paths, embed, key="k", images=True, chunk=2)
    assert ok.tolist() == [True, True, False, True, True]
    assert [i for i, _ in failed] == [2] and "2.png" in failed[0][1]
    assert seen == [(8, 8), (9, 8), (11, 8), (12, 8)]
    assert emb[2].tolist() == [0, 0, 0] and emb[3].tolist() == [1, 1, 1]


def test_a_first_chunk_without_a_readable_image_is_an_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"not a png")
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    with pytest.raises(ValueError, match="no readable image among the first 2 items"):
        embed_to_disk(tmp_path / "w", paths, lambda b: np.ones((len(b), 3), np.float32),
                      key="k", images=True, chunk=2)
