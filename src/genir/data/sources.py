"""The source registry: what `genir build SOURCE` and `genir eval SOURCE` read.

    source = open_source("photos/")                       # a folder of images
    source = open_source("docs.jsonl")                    # a table (.jsonl / .csv / .parquet)
    source = open_source("emb.npy", SourceOptions(ids="emb.ids.txt"))   # your own vectors
    source = open_source("inshop:/data/inshop")           # a paper's benchmark

A spec is `NAME:PATH` with NAME a registry entry (folder, table, vectors, inshop, cub200,
cars196, flickr30k, coco, mbeir), or a bare PATH whose kind follows from what it is (a
folder, a table file, a `.npy`, a parquet file with a vector column). Every source gives a
`Source`: the items (a `Corpus`, or ids + vectors), and, where the source defines them,
evaluation queries with their relevant items and the paper's protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genir.data.corpus import Corpus, MissingDataError
from genir.data.table import TABLE_SUFFIXES, Columns, load_table, load_vectors, parquet_has_vectors

PROTOCOLS = {   # the metrics each paper reports
    "irgen": {"precision": (1, 10, 20), "recall": (1, 10, 20), "map": (100,)},
    "recall": {"precision": (), "recall": (1, 5, 10), "map": ()},
}


@dataclass
class SourceOptions:
    """Options a source may read; each source reads only its own (see `open_source`)."""

    columns: Columns = field(default_factory=Columns)
    ids: str | None = None            # vectors (.npy): the ids file
    image_root: str | None = None     # inshop, flickr30k, coco, mbeir: where the images are
    split: str | None = None          # cub200 / cars196: classes|official; karpathy: test|val|...
    all_captions: bool = False        # coco: keep every caption (default: the first 5)
    pool: str = "local"               # mbeir: the task's local pool or the union pool


@dataclass
class Source:
    """Items to index and, for benchmarks, the queries that evaluate them.

    items: the corpus (ids; images and/or texts; labels -1 for none). For a vectors source
        its modality is "image" and it holds only ids and labels; `vectors` has the rows.
    item_modalities: per item "image" | "text" | "image_text" when the items mix them
        (M-BEIR pools); None when every item has `items.modality`.
    captions_train: the items' texts may be used as training queries (False where they are
        the evaluation queries, as in a Karpathy split).
    queries / relevant / query_is_gallery: the evaluation side; relevant[q] lists item rows;
        None with labels means "same label" (query_is_gallery: query q is item q, left out of
        its own ranking). protocol names the metrics (PROTOCOLS).
    """

    spec: str
    kind: str
    items: Corpus
    vectors: np.ndarray | None = None
    item_modalities: list[str] | None = None
    captions_train: bool = True
    queries: Corpus | None = None
    query_modalities: list[str] | None = None
    relevant: list[list[int]] | None = None
    query_is_gallery: bool = False
    protocol: str = "recall"
    split: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What the manifest keeps about the source."""
        return {"spec": self.spec, "kind": self.kind, "num_items": len(self.items),
                "split": self.split, "protocol": self.protocol, "notes": self.notes}


def _folder(path: Path, options: SourceOptions) -> Source:
    from genir.data.folder import load_folder

    corpus = load_folder(path)
    notes = []
    if corpus.labels is not None:
        notes.append(f"labels from {len(corpus.label_names or [])} sub-folders")
    if corpus.texts is not None:
        notes.append(f"captions for {sum(1 for t in corpus.texts if t)} images")
    return Source(spec=f"folder:{path}", kind="folder", items=corpus, notes=notes)


def _table(path: Path, options: SourceOptions) -> Source:
    corpus = load_table(path, options.columns)
    return Source(spec=f"table:{path}", kind="table", items=corpus)


def _vectors(path: Path, options: SourceOptions) -> Source:
    ids, vectors, labels, names = load_vectors(path, ids=options.ids, columns=options.columns)
    notes = [] if options.ids or path.suffix != ".npy" or path.with_suffix(".ids.txt").is_file() \
        else ["no ids file: the ids are the row numbers"]
    corpus = Corpus(name=f"vectors:{path}", item_ids=ids, labels=labels, label_names=names)
    return Source(spec=f"vectors:{path}", kind="vectors", items=corpus, vectors=vectors,
                  notes=notes)


def _split(split: Any, kind: str, corpus_labels: bool) -> Source:
    """A `RetrievalSplit` of the paper loaders -> Source."""
    return Source(spec="", kind=kind, items=split.gallery, queries=split.queries,
                  relevant=split.relevant or None, query_is_gallery=split.query_is_gallery,
                  protocol="irgen" if corpus_labels else "recall")


def _inshop(path: Path, options: SourceOptions) -> Source:
    from genir.data.papers import load_inshop

    src = _split(load_inshop(path, image_root=options.image_root), "inshop", True)
    src.split = "query vs gallery (Eval/list_eval_partition.txt)"
    return src


def _every_vs_rest(kind: str, loader: str, classes: str) -> Callable[[Path, SourceOptions], Source]:
    """CUB-200 / Cars196: the test images, each querying the rest (IRGen protocol)."""
    def open_(path: Path, options: SourceOptions) -> Source:
        from genir.data import papers

        split = options.split or "classes"
        src = _split(getattr(papers, loader)(path, split=split), kind, True)
        src.split = {"classes": f"test classes {classes}, every image vs the rest",
                     "official": "official test images, every image vs the rest"}.get(split, split)
        return src
    return open_


def _karpathy(name: str, file_name: str) -> Callable[[Path, SourceOptions], Source]:
    def open_(path: Path, options: SourceOptions) -> Source:
        from genir.data.papers import load_karpathy

        json_path = path / file_name if path.is_dir() else path
        image_root = Path(options.image_root) if options.image_root else json_path.parent
        if options.image_root is None and name == "flickr30k" and \
                (json_path.parent / "flickr30k-images").is_dir():
            image_root = json_path.parent / "flickr30k-images"
        split = options.split or "test"
        keep = None if (options.all_captions or name != "coco") else 5
        src = _split(load_karpathy(json_path, image_root=image_root, split=split,
                                   max_captions=keep), name, False)
        src.split = f"Karpathy {split}"
        src.captions_train = False   # the split's captions are its queries
        if keep:
            src.notes.append("the first 5 captions per image, as UniIR and GENIUS "
                             "(--all-captions keeps every one)")
        return src
    return open_


def _mbeir(path: Path, options: SourceOptions) -> Source:
    """`path`: a query file `ROOT/query/<split>/mbeir_<data>_task<N>_<split>.jsonl`; the pool is
    `ROOT/cand_pool/local/mbeir_<data>_task<N>_cand_pool.jsonl` (pool "local") or
    `ROOT/cand_pool/global/mbeir_union_<split>_cand_pool.jsonl` ("union"); qrels
    `ROOT/qrels/<split>/mbeir_<data>_task<N>_<split>_qrels.txt` when present."""
    from genir.data.papers import load_mbeir

    if options.pool not in ("local", "union"):
        raise ValueError(f"--pool must be local or union, got {options.pool!r}")
    if path.suffix != ".jsonl" or len(path.parents) < 3:
        raise ValueError(f"mbeir: give a query file, e.g. M-BEIR/query/test/"
                         f"mbeir_mscoco_task0_test.jsonl (got {path})")
    split_name = path.parent.name
    root = path.parents[2]
    stem = path.stem                                      # mbeir_mscoco_task0_test
    task = stem[: -len(f"_{split_name}")] if stem.endswith(f"_{split_name}") else stem
    pool = (root / "cand_pool" / "local" / f"{task}_cand_pool.jsonl" if options.pool == "local"
            else root / "cand_pool" / "global" / f"mbeir_union_{split_name}_cand_pool.jsonl")
    if options.pool == "local" and not pool.is_file():   # some releases keep the split in the name
        alt = root / "cand_pool" / "local" / f"{stem}_cand_pool.jsonl"
        pool = alt if alt.is_file() else pool
    qrels = root / "qrels" / split_name / f"{stem}_qrels.txt"
    split = load_mbeir(path, pool, qrels if qrels.is_file() else None,
                       image_root=Path(options.image_root) if options.image_root else root)
    src = _split(split, "mbeir", False)
    src.item_modalities = split.gallery.metadata["modalities"]
    src.query_modalities = split.queries.metadata["modalities"]
    src.captions_train = False
    src.split = f"{split_name}, {options.pool} pool ({pool.name})"
    dropped = split.queries.metadata.get("dropped_positives", 0)
    if dropped:
        src.notes.append(f"{dropped} positives not in the pool searched were dropped (UniIR)")
    return src


SOURCES: dict[str, Callable[[Path, SourceOptions], Source]] = {
    "folder": _folder,
    "table": _table,
    "vectors": _vectors,
    "inshop": _inshop,
    "cub200": _every_vs_rest("cub200", "load_cub200", "101-200"),
    "cars196": _every_vs_rest("cars196", "load_cars196", "99-196"),
    "flickr30k": _karpathy("flickr30k", "dataset_flickr30k.json"),
    "coco": _karpathy("coco", "dataset_coco.json"),
    "mbeir": _mbeir,
}


def parse_spec(spec: str, options: SourceOptions | None = None) -> tuple[str, Path]:
    """`NAME:PATH` or `PATH` -> (registry name, path). ValueError names what is wrong."""
    options = options or SourceOptions()
    name, sep, rest = spec.partition(":")
    if sep and name in SOURCES:
        if not rest:
            raise ValueError(f"source {spec!r}: give a path after {name}:")
        return name, Path(rest)
    path = Path(spec)
    if path.is_dir():
        return "folder", path
    if not path.exists():
        raise ValueError(f"source {spec!r}: no such file or folder, and not NAME:PATH with NAME "
                         f"one of {', '.join(SOURCES)}")
    if path.suffix == ".npy":
        return "vectors", path
    if path.suffix == ".parquet" and parquet_has_vectors(path, options.columns.vector):
        return "vectors", path
    if path.suffix in TABLE_SUFFIXES:
        return "table", path
    raise ValueError(f"source {spec!r}: a folder, a table ({', '.join(TABLE_SUFFIXES)}), "
                     "an embeddings file (.npy, .parquet) or NAME:PATH")


def open_source(spec: str, options: SourceOptions | None = None) -> Source:
    """Read the source `spec` names (see the module docstring). ValueError / MissingDataError
    name what is wrong; nothing is written."""
    options = options or SourceOptions()
    name, path = parse_spec(spec, options)
    if name in ("folder", "table", "vectors") and not path.exists():
        raise ValueError(f"source {spec!r}: {path} does not exist")
    source = SOURCES[name](path, options)
    source.spec = f"{name}:{path}"
    return source


__all__ = ["PROTOCOLS", "SOURCES", "Columns", "MissingDataError", "Source", "SourceOptions",
           "open_source", "parse_spec"]
