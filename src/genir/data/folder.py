"""A folder of images as a corpus: every image under it, labels from sub-folders, captions.

    corpus = load_folder("photos/")          # photos/cats/1.jpg -> id "cats/1.jpg", label "cats"

Images are found recursively by the extensions Pillow reads (hidden files and folders are
left out); item ids are paths relative to the folder, in sorted order. Labels come from the
first sub-folder level (an image directly in the folder has none, label -1). Captions,
optional: a `captions.jsonl` ({"id" or "path": ..., "caption" or "text": ...} per line) or
`captions.csv` (columns id/path and caption/text) in the folder, or a `.txt` file with the
image's stem beside it. Images are not opened here: an unreadable one is reported and
skipped when it is embedded (`genir.encoders.stream`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genir.data.corpus import Corpus
from genir.data.readers import jsonl

CAPTION_FILES = ("captions.jsonl", "captions.csv")
ID_KEYS = ("id", "path", "image")
CAPTION_KEYS = ("caption", "text")


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions of the formats this Pillow opens (".jpg", ".png", ...)."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def load_folder(root: str | Path) -> Corpus:
    """Every image under `root` -> a Corpus (modality "image"), ids = relative posix paths.

    texts: each image's caption ("" for none), None when no image has one. labels: the first
    sub-folder's name index (label_names sorted), -1 for images at the top level; None when
    no image is in a sub-folder. ValueError: not a folder, no image in it, or a captions file
    naming an image that is not there.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    exts = image_extensions()
    paths: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        paths += [(rel / f).as_posix() for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts]
    paths.sort()
    if not paths:
        raise ValueError(f"{root} holds no image (looked for {', '.join(sorted(exts)[:8])}, ... "
                         "recursively)")
    tops = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    labels, label_names = None, None
    if any(t is not None for t in tops):
        label_names = sorted({t for t in tops if t is not None})
        index = {name: i for i, name in enumerate(label_names)}
        labels = np.array([index[t] if t is not None else -1 for t in tops], dtype=np.int64)
    captions = _captions(root, paths)
    return Corpus(name=f"folder:{root}", item_ids=paths, modality="image",
                  images=[str(root / p) for p in paths],
                  texts=captions if any(captions) else None, labels=labels,
                  label_names=label_names, metadata={"root": str(root)})


def _captions(root: Path, paths: list[str]) -> list[str]:
    """Per image its caption: a captions file's entry, else its same-stem .txt, else ""."""
    known = {p: i for i, p in enumerate(paths)}
    out = [""] * len(paths)
    for i, p in enumerate(paths):
        txt = (root / p).with_suffix(".txt")
        if txt.is_file():
            out[i] = txt.read_text(encoding="utf-8", errors="replace").strip()
    for name in CAPTION_FILES:
        path = root / name
        if not path.is_file():
            continue
        for where, item_id, caption in _caption_rows(path):
            if item_id not in known:
                raise ValueError(f"{where}: {item_id!r} names no image under {root} "
                                 "(ids are paths relative to the folder, e.g. "
                                 f"{paths[0]!r})")
            out[known[item_id]] = caption.strip()
    return out


def _caption_rows(path: Path) -> list[tuple[str, str, str]]:
    """(file:line, image id, caption) rows of a captions.jsonl / captions.csv file."""
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
        records: Iterator[tuple[int, dict[str, Any]]]
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            records = ((reader.line_num, r) for r in reader)
        else:
            records = jsonl(path)
        for lineno, record in records:
            where = f"{path}:{lineno}"
            item_id = next((record[k] for k in ID_KEYS if record.get(k)), None)
            caption = next((record[k] for k in CAPTION_KEYS if record.get(k) is not None), None)
            if not isinstance(item_id, str) or not isinstance(caption, str):
                raise ValueError(f"{where}: expected an image id ({'/'.join(ID_KEYS)}) and a "
                                 f"caption ({'/'.join(CAPTION_KEYS)}) as strings, got {record!r}")
            rows.append((where, item_id.replace(os.sep, "/"), caption))
    return rows
