"""Durable item store: writes survive reopen, one writer at a time, corruption is caught,
and a writer killed mid-batch leaves exactly the acknowledged adds."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import clustered
from genir.decoder.model import DecoderConfig
from genir.decoder.train import TrainConfig
from genir.ids.rq import RQConfig
from genir.index import GenerativeIndex, IndexConfig
from genir.io import atomic_write_json, sha256_file
from genir.store import IndexLockedError, ItemStore, StoreCorruptError


def tiny_index() -> tuple[GenerativeIndex, np.ndarray]:
    x, _, _ = clustered(200, num_classes=4, dim=8, seed=3)
    cfg = IndexConfig(rq=RQConfig(num_levels=2, codebook_size=8),
                      decoder=DecoderConfig(d_model=16, num_layers=1, num_heads=2, num_prefix=2),
                      train=TrainConfig(steps=20, batch_size=32, warmup_steps=2))
    metas = [{"caption": f"item {i}"} for i in range(len(x))]
    return GenerativeIndex.build(x, config=cfg, item_meta=metas), x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    index, x = tiny_index()
    path = tmp_path_factory.mktemp("store") / "idx"
    index.save(path, thumbnails={"0": b"\x89PNG fake"})
    return path, x


@pytest.fixture
def folder(saved, tmp_path):
    """A private copy of the saved index for tests that write."""
    import shutil

    shutil.copytree(saved[0], tmp_path / "idx")
    return tmp_path / "idx"


def test_add_and_remove_survive_reopen(folder):
    index = GenerativeIndex.open(folder, writable=True)
    new = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    rows = index.add(new, ["a", "b", "c"], item_meta=[{"caption": "new a"}, {}, {}])
    removed = index.remove(["5", "b"])
    expected_ids = list(index.item_ids)
    q = index.item_emb[:7]
    expected = index.search(q, 5)
    index.close()
    assert rows.tolist() == [200, 201, 202] and removed == 2

    again = GenerativeIndex.load(folder)
    assert again.item_ids == expected_ids
    assert again.item_meta[again.row_of("a")] == {"caption": "new a"}
    assert again.item_meta[again.row_of("7")] == {"caption": "item 7"}
    got = again.search(q, 5)
    assert np.array_equal(got[1], expected[1]) and np.allclose(got[0], expected[0])
    store = ItemStore(folder)
    assert store.counts() == {"built": 199, "added": 2, "tombstones": 2}
    assert store.get("b") is None and store.get("a")["origin"] == "add"
    assert store.thumbnail("0") == b"\x89PNG fake"
    store.close()


def test_removed_id_can_be_added_again(folder):
    index = GenerativeIndex.open(folder, writable=True)
    index.remove(["3"])
    index.add(np.ones((1, 8), np.float32), ["3"], item_meta=[{"caption": "back"}])
    index.close()
    again = GenerativeIndex.load(folder)
    assert again.item_ids[-1] == "3" and again.item_meta[-1] == {"caption": "back"}
    assert again.item_ids.count("3") == 1


def test_failed_add_changes_nothing(folder):
    index = GenerativeIndex.open(folder, writable=True)
    before = list(index.item_ids)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.ones((2, 8), np.float32), ["new", "4"])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 8), np.nan, np.float32), ["nan"])
    with pytest.raises(KeyError, match="unknown item id"):
        index.remove(["1", "no-such-item"])
    assert index.item_ids == before
    index.close()
    assert GenerativeIndex.load(folder).item_ids == before


def test_second_writer_is_refused(folder):
    first = GenerativeIndex.open(folder, writable=True)
    with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
        GenerativeIndex.open(folder, writable=True)
    # a reader is not blocked, and sees committed adds
    first.add(np.ones((1, 8), np.float32), ["while-open"])
    assert "while-open" in GenerativeIndex.load(folder).item_ids
    first.close()
    GenerativeIndex.open(folder, writable=True).close()   # free again after close


def test_tampered_row_is_caught(folder):
    conn = sqlite3.connect(folder / "items.sqlite")
    conn.execute("UPDATE items SET meta = ? WHERE id = '9'", (json.dumps({"caption": "x"}),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorruptError, match="'9' fails its checksum"):
        GenerativeIndex.load(folder)


def test_truncated_store_is_caught(folder):
    db = folder / "items.sqlite"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises((StoreCorruptError, sqlite3.DatabaseError)):
        GenerativeIndex.load(folder)


def test_save_over_an_existing_index_replaces_it(folder):
    writer = GenerativeIndex.open(folder, writable=True)
    writer.add(np.ones((1, 8), np.float32), ["stale"])   # leaves a WAL beside the db
    writer.close()
    fresh, _ = tiny_index()
    fresh.save(folder)
    loaded = GenerativeIndex.load(folder)
    assert "stale" not in loaded.item_ids and len(loaded) == 200
    with pytest.raises(ValueError, match="own open store"):
        w = GenerativeIndex.open(folder, writable=True)
        try:
            w.save(folder)
        finally:
            w.close()


def test_save_refuses_foreign_folders_and_locked_indexes(folder, tmp_path):
    index = GenerativeIndex.load(folder)
    other = tmp_path / "papers"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="not a genir index folder"):
        index.save(other)
    assert (other / "thesis.tex").read_text() == "keep me" and len(list(other.iterdir())) == 1
    writer = GenerativeIndex.open(folder, writable=True)
    try:
        with pytest.raises(IndexLockedError):
            index.save(folder)
    finally:
        writer.close()
    index.save(tmp_path / "new" / "deeper")          # parents are made
    assert len(GenerativeIndex.load(tmp_path / "new" / "deeper")) == 200
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_format_1_index_still_loads(saved, tmp_path):
    """An index written by genir's first format (items in weights + items.json)."""
    from safetensors.torch import save_file

    index = GenerativeIndex.load(saved[0])
    path = tmp_path / "v1"
    path.mkdir()
    tensors = {f"decoder.{k}": v.contiguous() for k, v in index.decoder.state_dict().items()}
    tensors.update({f"tokenizer.{k}": v for k, v in index.tokenizer.state_dict().items()})
    tensors["item_emb"] = torch.from_numpy(index.item_emb)
    tensors["codes"] = torch.from_numpy(index.codes)
    save_file(tensors, path / "weights.safetensors")
    atomic_write_json(path / "items.json", index.item_ids)
    atomic_write_json(path / "manifest.json", {
        "format": "genir-index", "format_version": 1, "config": index.config.to_dict(),
        "files": {n: sha256_file(path / n) for n in ("weights.safetensors", "items.json")},
        "num_items": len(index), "extra": {}})
    old = GenerativeIndex.load(path)
    q = index.item_emb[:5]
    assert np.array_equal(old.search(q, 4)[1], index.search(q, 4)[1])
    with pytest.raises(ValueError, match="format-1"):
        GenerativeIndex.open(path, writable=True)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from genir.index import GenerativeIndex
    from genir.store import ItemStore

    folder, pause_at = sys.argv[1], int(sys.argv[2])
    index = GenerativeIndex.open(folder, writable=True)
    batch = 0

    def before_commit():
        # batch `pause_at` stops inside its transaction: rows written, not committed
        if batch == pause_at:
            print("inside", batch, flush=True)
            time.sleep(60)

    index.store._before_commit = before_commit
    rng = np.random.default_rng(0)
    while True:
        ids = [f"add-{batch}-{j}" for j in range(4)]
        index.add(rng.normal(size=(4, 8)).astype(np.float32), ids,
                  item_meta=[{"batch": batch}] * 4)
        print("ack", batch, flush=True)
        batch += 1
""")


@pytest.mark.parametrize("pause_at", [0, 5])
def test_writer_killed_mid_batch_keeps_exactly_the_acknowledged_adds(folder, tmp_path, pause_at):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(pause_at)],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            word, batch = line.split()
            if word == "inside":
                break
            acked.append(int(batch))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert acked == list(range(pause_at))

    reopened = GenerativeIndex.open(folder, writable=True)   # the dead writer's lock is gone
    added = [i for i in reopened.item_ids if i.startswith("add-")]
    assert added == [f"add-{b}-{j}" for b in acked for j in range(4)]
    assert len(reopened) == 200 + 4 * len(acked)
    scores, rows = reopened.search(reopened.item_emb[-3:], 3)
    assert (rows >= 0).all()
    reopened.close()


def test_reader_sees_each_committed_batch_whole(folder):
    writer = GenerativeIndex.open(folder, writable=True)
    reader = ItemStore(folder)    # opened once, before the writes
    for b in range(3):
        writer.add(np.ones((5, 8), np.float32) * b, [f"w{b}-{j}" for j in range(5)])
        assert len(reader.load_live()[0]) == 200 + 5 * (b + 1)
    reader.close()
    writer.close()


def test_read_only_store_refuses_writes(folder):
    store = ItemStore(folder)
    with pytest.raises(PermissionError, match="read-only"):
        store.add(["x"], np.zeros((1, 2), np.int64), np.zeros((1, 8), np.float32))
    store.close()


def test_unsupported_schema_is_named(folder):
    conn = sqlite3.connect(folder / "items.sqlite")
    conn.execute("UPDATE info SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorruptError, match="schema version 99"):
        GenerativeIndex.load(folder)

