"""Saving and opening a `GenerativeIndex`: weights (safetensors), the item store (SQLite,
`genir.store`) and a versioned manifest with checksums, written atomically.

    save_index(index, "idx")        # what GenerativeIndex.save runs
    open_index(GenerativeIndex, "idx", writable=True)

Format 2 keeps the items in `items.sqlite`; format 1 (items in the weights file plus
`items.json`) is still read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from genir.decoder.model import CodeDecoder
from genir.ids.registry import tokenizer_class
from genir.index import GenerativeIndex, IndexConfig
from genir.io import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file
from genir.store import LOCK_FILE, STORE_FILE, ItemStore, WriterLock

FORMAT_VERSION = 2   # 2: items in items.sqlite (store.py); 1: items in weights + items.json
READABLE_VERSIONS = (1, 2)


def save_index(index: GenerativeIndex, path: str | Path, *,
               thumbnails: dict[str, bytes] | None = None, progress: bool = False) -> None:
    """Write the index into folder `path`: weights (safetensors), the item store (SQLite)
    and, last, the manifest, each fsynced, all first in a temporary sibling folder that
    then takes the place of `path`. An index already at `path` is replaced only once
    the new one is complete (a crash leaves the old one, or both folders); its writer
    lock must be free. `thumbnails` maps item id -> PNG bytes."""
    path = Path(path).resolve()
    if index.store is not None and path == index.store.folder.resolve():
        raise ValueError(f"{path} is this index's own open store: its items are already "
                         "saved as they change; save to another folder")
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (
            (path / "manifest.json").exists() or (path / STORE_FILE).exists()))):
        raise ValueError(f"{path} exists and is not a genir index folder; save to a new "
                         "or empty folder")
    tensors = {f"decoder.{k}": v.contiguous() for k, v in index.decoder.state_dict().items()}
    tensors.update({f"tokenizer.{k}": v for k, v in index.tokenizer.state_dict().items()})
    from safetensors.torch import save as save_bytes

    if thumbnails is None and index.store is not None:
        thumbnails = {i: png for i in index.item_ids
                      if (png := index.store.thumbnail(i)) is not None}
    lock = WriterLock(path / LOCK_FILE) if (path / STORE_FILE).exists() else None
    tmp = path.parent / f".{path.name}.saving-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        atomic_write_bytes(tmp / "weights.safetensors", save_bytes(tensors))
        ItemStore.create(tmp, item_ids=index.item_ids, codes=index.codes, emb=index.item_emb,
                         metas=index.item_meta, thumbnails=thumbnails, progress=progress)
        atomic_write_json(tmp / "manifest.json", {
            "format": "genir-index", "format_version": FORMAT_VERSION,
            "config": index.config.to_dict(), "store": STORE_FILE,
            "files": {"weights.safetensors": sha256_file(tmp / "weights.safetensors")},
            "num_items": len(index), "extra": index.extra})
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            lock.close()


def open_index(cls: type[GenerativeIndex], path: str | Path, *, writable: bool = False
               ) -> GenerativeIndex:
    """Load an index; with writable=True keep its item store open under the writer lock
    so add/remove are committed to disk as they happen (call close() when done)."""
    path = Path(path)
    manifest = read_manifest(path)
    config = IndexConfig.from_dict(manifest["config"])
    tensors = load_file(str(path / "weights.safetensors"))
    decoder = CodeDecoder(config.decoder)
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in tensors.items()
                             if k.startswith("decoder.")})
    tokenizer = tokenizer_class(config.tokenizer).from_state(
        config.rq, {k[len("tokenizer."):]: v for k, v in tensors.items()
                    if k.startswith("tokenizer.")})
    extra = manifest.get("extra", {})
    if manifest["format_version"] == 1:
        if writable:
            raise ValueError(f"{path} is a format-1 index (no item store): load it and "
                             "save it to a new folder to make it writable")
        item_ids = json.loads((path / "items.json").read_text())
        return cls(tokenizer=tokenizer, decoder=decoder, item_emb=tensors["item_emb"].numpy(),
                   codes=tensors["codes"].numpy(), item_ids=item_ids, config=config,
                   extra=extra)
    store = ItemStore(path, writable=writable)
    try:
        store.check()
        item_ids, codes, emb, metas = store.load_live()
        index = cls(tokenizer=tokenizer, decoder=decoder, item_emb=emb, codes=codes,
                    item_ids=item_ids, config=config, extra=extra, item_meta=metas)
    except BaseException:
        store.close()
        raise
    if writable:
        index.store = store
    else:
        store.close()
    return index


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path} is not a genir index: no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != "genir-index":
        raise ValueError(f"{manifest_path} is not a genir index manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: index format version {manifest.get('format_version')} "
                         f"is not supported (this genir reads {READABLE_VERSIONS})")
    for name, digest in manifest["files"].items():
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: {name} is missing")
        if sha256_file(path / name) != digest:
            raise ValueError(f"{path}: {name} does not match its checksum in the manifest "
                             "(corrupt or modified)")
    return manifest
