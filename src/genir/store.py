"""`ItemStore`: the durable, mutable half of a saved index, in SQLite (WAL).

A saved index folder holds

    manifest.json          format version, config, sha256 of every immutable file
    weights.safetensors    decoder + tokenizer (fixed once trained)
    items.sqlite           one row per item: id, codes, embedding, metadata, thumbnail,
                           tombstone, and a sha256 of the row checked on load

Items are the part that changes while an index is served (`POST /items`, `DELETE
/items/{id}`), so they live in SQLite: an add or remove is one transaction, committed with
`synchronous=FULL` before the call returns, so it survives a killed process or a power
cut; a crash mid-transaction leaves the previous state. Rows are never half written, and
each carries a digest of its codes + embedding + metadata so a torn or edited row is
caught on load.

One writer at a time: `ItemStore(path, writable=True)` takes an exclusive `flock` on
`path/.writer.lock` and a second writer gets `IndexLockedError` at once. Readers take no
lock; WAL lets them read a consistent snapshot while the writer commits.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genir.io import fsync_dir

STORE_FILE = "items.sqlite"
LOCK_FILE = ".writer.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,   -- row order of live items
    id        TEXT NOT NULL UNIQUE,
    codes     BLOB NOT NULL,                       -- (M,) int64 little-endian
    emb       BLOB NOT NULL,                       -- (D,) float32 little-endian
    meta      TEXT NOT NULL,                       -- JSON object (caption, source...)
    digest    TEXT NOT NULL,                       -- sha256 of codes + emb + meta
    origin    TEXT NOT NULL,                       -- 'build' or 'add'
    added_at  REAL NOT NULL,
    deleted   INTEGER NOT NULL DEFAULT 0,          -- tombstone
    deleted_at REAL
);
CREATE TABLE IF NOT EXISTS thumbnails (id TEXT PRIMARY KEY, png BLOB NOT NULL);
"""


class IndexLockedError(RuntimeError):
    """Another process holds the index's writer lock."""


class StoreCorruptError(ValueError):
    """The item store fails its integrity check or a row fails its checksum."""


def row_digest(codes: bytes, emb: bytes, meta: str) -> str:
    h = hashlib.sha256()
    for part in (codes, emb, meta.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


class WriterLock:
    """An exclusive, non-blocking `flock` on a file; released by close() or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise IndexLockedError(f"{path.parent} is open for writing by another process "
                                   f"(pid {holder}); stop it or open the index read-only") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def close(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class ItemStore:
    """Items of one index folder. Not thread-safe: callers serialise writes."""

    def __init__(self, folder: str | Path, *, writable: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STORE_FILE
        if not self.path.exists():
            raise FileNotFoundError(f"{self.folder}: {STORE_FILE} is missing")
        self.writable = writable
        self._lock = WriterLock(self.folder / LOCK_FILE) if writable else None
        try:
            uri = f"file:{self.path}?mode={'rw' if writable else 'ro'}"
            self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False,
                                        isolation_level=None)
            if writable:
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            version = self.info().get("schema_version")
            if version != str(SCHEMA_VERSION):
                raise StoreCorruptError(f"{self.path}: item store schema version {version} is not "
                                        f"supported (this genir reads {SCHEMA_VERSION})")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, folder: str | Path, *, item_ids: Sequence[str], codes: np.ndarray,
               emb: np.ndarray, metas: Sequence[dict[str, Any]] | None = None,
               thumbnails: dict[str, bytes] | None = None, progress: bool = False) -> None:
        """Write a new items.sqlite into `folder` atomically (temp file, fsync, rename).

        An existing store there is replaced whole; its WAL files are removed first so they
        cannot be replayed onto the new database.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STORE_FILE}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO info VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("created_at", repr(time.time())),
                ("num_levels", str(codes.shape[1])), ("dim", str(emb.shape[1]))])
            conn.executemany(
                "INSERT INTO items (id, codes, emb, meta, digest, origin, added_at) "
                "VALUES (?, ?, ?, ?, ?, 'build', ?)",
                tqdm(_rows(item_ids, codes, emb, metas), total=len(item_ids), unit="item",
                     desc="write items", disable=not progress))
            if thumbnails:
                conn.executemany("INSERT INTO thumbnails VALUES (?, ?)", thumbnails.items())
            conn.execute("COMMIT")
        finally:
            conn.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        for suffix in ("-wal", "-shm"):
            (folder / (STORE_FILE + suffix)).unlink(missing_ok=True)
        os.replace(tmp, folder / STORE_FILE)
        fsync_dir(folder)

    # ------------------------------------------------------------------ read
    def info(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM info").fetchall())

    def load_live(self) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """(ids, codes (N, M) int64, emb (N, D) float32, metadata) of live items in row
        order; verifies every row's digest."""
        rows = self.conn.execute("SELECT id, codes, emb, meta, digest FROM items "
                                 "WHERE deleted = 0 ORDER BY seq").fetchall()
        info = self.info()
        m, d = int(info["num_levels"]), int(info["dim"])
        ids, metas = [], []
        codes = np.empty((len(rows), m), dtype=np.int64)
        emb = np.empty((len(rows), d), dtype=np.float32)
        for i, (item_id, c, e, meta, digest) in enumerate(rows):
            if row_digest(c, e, meta) != digest or len(c) != 8 * m or len(e) != 4 * d:
                raise StoreCorruptError(f"{self.path}: item {item_id!r} fails its checksum "
                                        "(corrupt or modified)")
            ids.append(item_id)
            metas.append(json.loads(meta))
            codes[i] = np.frombuffer(c, dtype="<i8")
            emb[i] = np.frombuffer(e, dtype="<f4")
        return ids, codes, emb, metas

    def check(self) -> None:
        """SQLite's own structural check; raises StoreCorruptError."""
        result = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise StoreCorruptError(f"{self.path}: SQLite integrity check failed: {result}")

    def get(self, item_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT id, codes, meta, origin, added_at, deleted FROM items WHERE id = ?",
            (item_id,)).fetchone()
        if row is None or row[5]:
            return None
        return {"id": row[0], "codes": np.frombuffer(row[1], dtype="<i8").tolist(),
                "metadata": json.loads(row[2]), "origin": row[3], "added_at": row[4]}

    def thumbnail(self, item_id: str) -> bytes | None:
        row = self.conn.execute("SELECT png FROM thumbnails WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def counts(self) -> dict[str, int]:
        live_build, live_add, dead = self.conn.execute(
            "SELECT SUM(deleted = 0 AND origin = 'build'), SUM(deleted = 0 AND origin = 'add'), "
            "SUM(deleted = 1) FROM items").fetchone()
        return {"built": live_build or 0, "added": live_add or 0, "tombstones": dead or 0}

    # ------------------------------------------------------------------ write
    def add(self, item_ids: Sequence[str], codes: np.ndarray, emb: np.ndarray,
            metas: Sequence[dict[str, Any]] | None = None,
            thumbnails: dict[str, bytes] | None = None) -> None:
        """Insert items in one durable transaction. An id that was removed earlier may be
        added again (its tombstone is replaced); a live id is refused."""
        self._check_writable()
        with self._transaction() as conn:
            live = [i for i in item_ids if conn.execute(
                "SELECT 1 FROM items WHERE id = ? AND deleted = 0", (i,)).fetchone()]
            if live:
                raise ValueError(f"item ids already in the index: {live[:5]}")
            conn.executemany("DELETE FROM items WHERE id = ? AND deleted = 1",
                             [(i,) for i in item_ids])
            conn.executemany("DELETE FROM thumbnails WHERE id = ?", [(i,) for i in item_ids])
            conn.executemany(
                "INSERT INTO items (id, codes, emb, meta, digest, origin, added_at) "
                "VALUES (?, ?, ?, ?, ?, 'add', ?)", _rows(item_ids, codes, emb, metas))
            if thumbnails:
                conn.executemany("INSERT INTO thumbnails VALUES (?, ?)", thumbnails.items())
            self._before_commit()

    def remove(self, item_ids: Sequence[str]) -> None:
        """Tombstone items in one durable transaction; unknown ids raise KeyError."""
        self._check_writable()
        with self._transaction() as conn:
            now = time.time()
            for item_id in item_ids:
                cur = conn.execute("UPDATE items SET deleted = 1, deleted_at = ? "
                                   "WHERE id = ? AND deleted = 0", (now, item_id))
                if cur.rowcount != 1:
                    raise KeyError(f"unknown item id {item_id!r}")
            self._before_commit()

    def _before_commit(self) -> None:
        """Test hook: runs inside a write transaction, just before COMMIT."""

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the body raises."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _check_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.folder} is open read-only; open it with writable=True")

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _rows(item_ids: Sequence[str], codes: np.ndarray, emb: np.ndarray,
          metas: Sequence[dict[str, Any]] | None):
    codes = np.ascontiguousarray(codes, dtype="<i8")
    emb = np.ascontiguousarray(emb, dtype="<f4")
    if len(codes) != len(item_ids) or len(emb) != len(item_ids):
        raise ValueError("item_ids, codes and emb must have one row per item")
    if metas is not None and len(metas) != len(item_ids):
        raise ValueError("metas must have one entry per item")
    now = time.time()
    for i, item_id in enumerate(item_ids):
        c, e = codes[i].tobytes(), emb[i].tobytes()
        meta = json.dumps(metas[i] if metas is not None else {}, sort_keys=True)
        yield item_id, c, e, meta, row_digest(c, e, meta), now


__all__ = ["LOCK_FILE", "STORE_FILE", "IndexLockedError", "ItemStore", "StoreCorruptError",
           "WriterLock", "row_digest"]
