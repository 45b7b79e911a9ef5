"""Tables and embedding files as sources: one record per item.

    corpus = load_table("docs.jsonl")                       # id + text (and/or image) [+ label]
    ids, vectors, labels, names = load_vectors("emb.npy", ids="emb.ids.txt")

Tables are `.jsonl`, `.csv` or `.parquet` (parquet needs pyarrow, the `tables` extra). Column
names are options; an image column holds paths relative to the table's folder. Embeddings
are a `.npy` (N, D) float matrix (memory-mapped, not read into memory when it is float32)
with an ids file (one id per line), or a parquet file with an id column and a vector column
(a list of floats per row). Every problem raises ValueError naming the file, the row or the
column.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genir.data.corpus import Corpus
from genir.data.readers import jsonl

TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
FINITE_CHUNK = 65_536   # rows checked for NaN / inf at a time (bounded extra memory)


@dataclass(frozen=True)
class Columns:
    """Which column holds what; text and image are each optional, not both absent."""

    id: str = "id"
    text: str = "text"
    image: str = "image"
    label: str = "label"
    vector: str = "vector"


def load_table(path: str | Path, columns: Columns = Columns()) -> Corpus:
    """A table of items -> Corpus. With an image column the items are images (the text column,
    if any, their captions); with only a text column they are texts. Labels (optional) are any
    strings or ints, mapped to 0.. in sorted order; an empty label is -1."""
    path = Path(path)
    records = list(_records(path))
    if not records:
        raise ValueError(f"{path} has no rows")
    present = set().union(*(r.keys() for _, r in records[:1000]))
    has_text, has_image = columns.text in present, columns.image in present
    if columns.id not in present:
        raise ValueError(f"{path}: no {columns.id!r} column (columns: {sorted(present)}); "
                         "name the id column with --id-column")
    if not has_text and not has_image:
        raise ValueError(f"{path}: neither a {columns.text!r} nor an {columns.image!r} column "
                         f"(columns: {sorted(present)}); name them with --text-column / "
                         "--image-column")
    ids: list[str] = []
    texts: list[str] = []
    images: list[str] = []
    raw_labels: list[Any] = []
    first_row: dict[str, str] = {}
    for where, record in records:
        item_id = record.get(columns.id)
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        if not isinstance(item_id, str) or not item_id.strip():
            raise ValueError(f"{where}: {columns.id!r} must be a non-empty string, got {item_id!r}")
        if item_id in first_row:
            raise ValueError(f"{where}: id {item_id!r} repeats {first_row[item_id]}")
        first_row[item_id] = where
        ids.append(item_id)
        text = record.get(columns.text)
        if not isinstance(text, (str, type(None))):
            raise ValueError(f"{where}: {columns.text!r} must be a string, got {text!r}")
        if has_image:
            image = record.get(columns.image)
            if not isinstance(image, str) or not image.strip():
                raise ValueError(f"{where}: {columns.image!r} must be an image path, got {image!r}")
            images.append(str(path.parent / image))
        elif not text or not text.strip():
            raise ValueError(f"{where}: {columns.text!r} is empty (a text item needs its text)")
        texts.append((text or "").strip())
        raw_labels.append(record.get(columns.label))
    labels, label_names = _labels(raw_labels)
    return Corpus(name=f"table:{path}", item_ids=ids, modality="image" if has_image else "text",
                  images=images if has_image else None,
                  texts=texts if (not has_image or any(texts)) else None,
                  labels=labels, label_names=label_names, metadata={"table": str(path)})


def load_vectors(path: str | Path, *, ids: str | Path | None = None,
                 columns: Columns = Columns()
                 ) -> tuple[list[str], np.ndarray, np.ndarray | None, list[str] | None]:
    """Your own embeddings -> (ids, (N, D) float32 vectors, labels or None, label names).

    `.npy`: ids from `ids` (one per line); without it, from `<stem>.ids.txt` beside the file
    when present, else the row numbers "0".."N-1". `.parquet`: the id, vector and optional
    label columns. Float32 .npy files stay memory-mapped. ValueError: not a 2-D float
    matrix, a count that differs from the ids', repeated ids, or a NaN / inf (the first row
    with one is named)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    labels, label_names = None, None
    if path.suffix == ".npy":
        try:
            vectors = np.load(path, mmap_mode="c")   # copy-on-write: writable, file untouched
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy file: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.dtype.kind != "f":
            raise ValueError(f"{path}: expected a non-empty (N, D) float matrix, got "
                             f"{vectors.dtype} of shape {vectors.shape}")
        ids_path = Path(ids) if ids is not None else path.with_suffix(".ids.txt")
        if ids is not None or ids_path.is_file():
            item_ids = _read_ids(ids_path)
        else:
            item_ids = [str(i) for i in range(len(vectors))]
        if vectors.dtype != np.float32:
            vectors = np.asarray(vectors, dtype=np.float32)
    elif path.suffix == ".parquet":
        item_ids, vectors, raw = _parquet_vectors(path, columns)
        if raw is not None:
            labels, label_names = _labels(raw)
    else:
        raise ValueError(f"{path}: embeddings must be a .npy matrix or a .parquet file")
    if len(item_ids) != len(vectors):
        raise ValueError(f"{path} has {len(vectors)} vectors but {len(item_ids)} ids")
    if len(set(item_ids)) != len(item_ids):
        dup = next(i for i, count in Counter(item_ids).items() if count > 1)
        raise ValueError(f"{path}: id {dup!r} is repeated")
    for start in range(0, len(vectors), FINITE_CHUNK):
        bad = ~np.isfinite(vectors[start:start + FINITE_CHUNK]).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise ValueError(f"{path}: row {row} (id {item_ids[row]!r}) has a NaN or inf")
    return item_ids, vectors, labels, label_names


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"ids file {path} does not exist")
    ids = path.read_text(encoding="utf-8").splitlines()
    while ids and not ids[-1].strip():
        ids.pop()
    for n, item_id in enumerate(ids, start=1):
        if not item_id.strip():
            raise ValueError(f"{path}:{n}: empty id")
    return [i.strip() for i in ids]


def _parquet_vectors(path: Path, columns: Columns) -> tuple[list[str], np.ndarray, list | None]:
    pq = _pyarrow_parquet()
    try:
        file = pq.ParquetFile(path)
    except Exception as exc:   # pyarrow raises ArrowInvalid / OSError on a bad file
        raise ValueError(f"{path}: not a readable parquet file: {exc}") from exc
    names = file.schema_arrow.names
    for col in (columns.id, columns.vector):
        if col not in names:
            raise ValueError(f"{path}: no {col!r} column (columns: {names}); name it with "
                             f"--{'id' if col == columns.id else 'vector'}-column")
    has_label = columns.label in names
    n = file.metadata.num_rows
    if n == 0:
        raise ValueError(f"{path} has no rows")
    ids: list[str] = []
    labels: list | None = [] if has_label else None
    vectors: np.ndarray | None = None
    row = 0
    wanted = [columns.id, columns.vector] + ([columns.label] if has_label else [])
    for batch in file.iter_batches(batch_size=65_536, columns=wanted):
        vec_col = batch.column(columns.vector)
        try:
            values = vec_col.flatten().to_numpy(zero_copy_only=False)
        except AttributeError:
            raise ValueError(f"{path}: column {columns.vector!r} is not a list of floats") from None
        width = len(values) // max(len(batch), 1)
        lengths = vec_col.value_lengths().to_numpy(zero_copy_only=False) \
            if hasattr(vec_col, "value_lengths") else None
        if lengths is not None and (lengths != width).any():
            bad = row + int(np.argmax(lengths != width))
            raise ValueError(f"{path}: row {bad}: vectors of different lengths")
        if vectors is None:
            vectors = np.empty((n, width), dtype=np.float32)
        if width != vectors.shape[1]:
            raise ValueError(f"{path}: rows from {row} have {width} dims, earlier rows "
                             f"{vectors.shape[1]}")
        vectors[row:row + len(batch)] = values.reshape(len(batch), width)
        ids += [str(v) for v in batch.column(columns.id).to_pylist()]
        if labels is not None:
            labels += batch.column(columns.label).to_pylist()
        row += len(batch)
    assert vectors is not None
    return ids, vectors, labels


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading parquet needs pyarrow: pip install 'genir[tables]'") from exc
    return pq


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line or file:row, record) for each row of a .jsonl / .csv / .parquet table."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if path.suffix == ".jsonl":
        for n, record in jsonl(path):
            yield f"{path}:{n}", record
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for record in reader:
                yield f"{path}:{reader.line_num}", {k: v for k, v in record.items() if v != ""}
    elif path.suffix == ".parquet":
        pq = _pyarrow_parquet()
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable parquet file: {exc}") from exc
        for n, record in enumerate(table.to_pylist()):
            yield f"{path}:row {n}", record
    else:
        raise ValueError(f"{path}: a table must be {', '.join(TABLE_SUFFIXES)}")


def _labels(raw: list[Any]) -> tuple[np.ndarray | None, list[str] | None]:
    """Label values (any strings or ints; None or "" for none) -> (ids in sorted-name order,
    -1 for none; the names), or (None, None) when no item has one."""
    if all(v is None or v == "" for v in raw):
        return None, None
    names = sorted({str(v) for v in raw if v is not None and v != ""})
    index = {name: i for i, name in enumerate(names)}
    return (np.array([index[str(v)] if v is not None and v != "" else -1 for v in raw],
                     dtype=np.int64), names)


def parquet_has_vectors(path: Path, vector_column: str) -> bool:
    """Whether a parquet file has `vector_column` as a list column (embeddings, not a table)."""
    pq = _pyarrow_parquet()
    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as exc:
        raise ValueError(f"{path}: not a readable parquet file: {exc}") from exc
    if vector_column not in schema.names:
        return False
    import pyarrow as pa

    kind = schema.field(vector_column).type
    return bool(pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)
                or pa.types.is_large_list(kind))
