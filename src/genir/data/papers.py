"""Loaders for the papers' retrieval benchmarks, read from the official releases on disk.

One function per data set, each returning a `RetrievalSplit` (a gallery `Corpus`, a query
`Corpus` and which gallery rows each query should find):

    load_inshop(root)                 DeepFashion In-shop: query vs gallery, same item id
    load_cub200(root)                 CUB-200-2011: classes 101-200, every image vs the rest
    load_cars196(root)                Stanford Cars: classes 99-196, every image vs the rest
    load_karpathy(json, image_root=)  Flickr30K / MS-COCO Karpathy split: caption -> image
    load_mbeir(queries, pool, ...)    M-BEIR: any-modality query -> any-modality candidate

Each reads the files in the exact layout of the official release and validates them: a
missing file raises `MissingDataError` (the path, and where the data set comes from), a
malformed line raises ValueError naming `file:line`. Images stay path strings; no image is
opened here (only the first one is checked to exist, to catch an archive whose annotations
were unpacked but whose images were not). This file downloads nothing and does no
preprocessing, encoding or evaluation.

Why one file of ~600 lines: five loaders of one shape (files in, `RetrievalSplit` out) that
share the validators at the bottom; each alone is 60-120 lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genir.data.corpus import Corpus, MissingDataError
from genir.data.readers import jsonl as _jsonl
from genir.data.readers import lines as _lines

__all__ = ["RetrievalSplit", "load_cars196", "load_cub200", "load_inshop", "load_karpathy",
           "load_mbeir"]

INSHOP_HINT = ("DeepFashion In-shop Clothes Retrieval Benchmark (Eval/list_eval_partition.txt "
               "and img/) from the DeepFashion page of the CUHK Multimedia Laboratory")
CUB_HINT = "CUB-200-2011 (CUB_200_2011.tgz, unpacked) from the Caltech-UCSD Birds page"
CARS_HINT = ("Stanford Cars (cars_annos.mat and car_ims.tgz unpacked side by side, or the devkit "
             "with cars_train/ and cars_test/) from the Stanford Cars Dataset page (Krause et "
             "al., 3dRR 2013)")
KARPATHY_HINT = ("the Karpathy split (dataset_flickr30k.json / dataset_coco.json in "
                 "caption_datasets.zip) from Andrej Karpathy's NeuralTalk page; the images from "
                 "the Flickr30K and MS-COCO 2014 pages")
MBEIR_HINT = ("M-BEIR (query/, cand_pool/, qrels/, mbeir_images/) from TIGER-Lab/M-BEIR on the "
              "Hugging Face Hub (UniIR)")

INSHOP_PARTITION = "Eval/list_eval_partition.txt"
INSHOP_HEADER = ["image_name", "item_id", "evaluation_status"]
INSHOP_STATUSES = ("train", "query", "gallery")

CUB_SPLITS = ("classes", "official")
CUB_TEST_CLASSES = range(101, 201)   # deep-metric-learning protocol: 1-100 train, 101-200 test
CARS_TEST_CLASSES = range(99, 197)   # 1-98 train, 99-196 test
CARS_FIELDS = ("relative_im_path", "class", "test")

KARPATHY_SPLITS = ("train", "val", "test", "restval")

MBEIR_MODALITIES = {"text": "text", "image": "image", "image,text": "image_text",
                    "text,image": "image_text"}


@dataclass(frozen=True)
class RetrievalSplit:
    """A gallery to search and the queries to search it with.

    relevant: per query, the gallery rows it should retrieve (caption and M-BEIR tasks, and
        In-shop); empty for class-labelled sets, where a gallery item is relevant to a query
        iff `gallery.labels[row] == queries.labels[query]`.
    query_is_gallery: `queries` is `gallery` itself (CUB, Cars): query i is gallery row i, and
        the evaluator must drop row i from query i's ranking and from its relevant set.
    """

    gallery: Corpus
    queries: Corpus
    relevant: list[list[int]] = field(default_factory=list)
    query_is_gallery: bool = False


# -- DeepFashion In-shop ---------------------------------------------------------------------

def load_inshop(root: str | Path, *, image_root: str | Path | None = None) -> RetrievalSplit:
    """DeepFashion In-shop Clothes Retrieval: 14,218 queries, 12,612 gallery images.

    Reads `root/Eval/list_eval_partition.txt` (line 1: the row count, line 2: the header
    "image_name item_id evaluation_status", then `img/... id_00000001 train|query|gallery`).
    Rows with status "train" are ignored. Item ids are the image names (`img/...`), images
    are `image_root/<image_name>`; image_root defaults to `root` when `root/img/` exists,
    else to `root/Img` (the official release unpacks the images as `Img/img/...`). Labels
    are item ids mapped to ints by one mapping shared by both corpora (`label_names[label]`
    is the item id); `relevant[q]` lists the gallery rows with the query's item id (IRGen
    protocol), empty if the gallery has none.
    """
    root = Path(root)
    path = root / INSHOP_PARTITION
    _require_files([path], INSHOP_HINT)
    if image_root is None:
        image_root = root if (root / "img").is_dir() or not (root / "Img").is_dir() else root / "Img"
    image_root = Path(image_root)
    rows: dict[str, list[tuple[str, str]]] = {"query": [], "gallery": []}
    seen: set[str] = set()
    declared, num_rows = -1, 0
    for position, (lineno, line) in enumerate(_lines(path)):
        if position == 0:
            if not line.isdigit():
                raise ValueError(f"{path}:{lineno}: expected the number of rows, got {line!r}")
            declared = int(line)
            continue
        if position == 1:
            if line.split() != INSHOP_HEADER:
                raise ValueError(f"{path}:{lineno}: expected the header "
                                 f"{' '.join(INSHOP_HEADER)!r}, got {line!r}")
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in INSHOP_STATUSES:
            raise ValueError(f"{path}:{lineno}: expected '<image_name> <item_id> "
                             f"train|query|gallery', got {line!r}")
        image_name, item_id, status = fields
        if image_name in seen:
            raise ValueError(f"{path}:{lineno}: duplicate image {image_name!r}")
        seen.add(image_name)
        num_rows += 1
        if status != "train":
            rows[status].append((image_name, item_id))
    if declared < 0:
        raise ValueError(f"{path}:1: empty file, expected the number of rows")
    if declared != num_rows:  # a truncated download or a hand-edited list
        raise ValueError(f"{path}:1: declares {declared} rows, the file has {num_rows}")

    label_names = sorted({item_id for part in rows.values() for _, item_id in part})
    label_of = {item_id: i for i, item_id in enumerate(label_names)}

    def corpus(status: str) -> Corpus:
        names = [name for name, _ in rows[status]]
        return Corpus(name=f"inshop-{status}", item_ids=names, modality="image",
                      images=[str(image_root / name) for name in names],
                      labels=np.array([label_of[i] for _, i in rows[status]], dtype=np.int64),
                      label_names=label_names,
                      metadata={"root": str(root), "image_root": str(image_root), "split": status})

    gallery, queries = corpus("gallery"), corpus("query")
    _require_first_image(gallery.images, INSHOP_HINT)
    assert gallery.labels is not None and queries.labels is not None
    rows_of: dict[int, list[int]] = {}
    for row, label in enumerate(gallery.labels.tolist()):
        rows_of.setdefault(label, []).append(row)
    relevant = [list(rows_of.get(label, [])) for label in queries.labels.tolist()]
    return RetrievalSplit(gallery=gallery, queries=queries, relevant=relevant)


# -- CUB-200-2011 ----------------------------------------------------------------------------

def load_cub200(root: str | Path, *, split: str = "classes") -> RetrievalSplit:
    """CUB-200-2011 test images as both queries and gallery (`query_is_gallery=True`).

    root is the unpacked `CUB_200_2011/`: `images.txt` ("<image_id> <path>"),
    `image_class_labels.txt` ("<image_id> <class_id>"), optional `classes.txt`
    ("<class_id> <name>", for label names) and `images/<path>`.
    split "classes" (default; IRGen and deep-metric-learning protocol): the 5,924 images of
    classes 101-200. split "official": the 5,794 images with is_training_image 0 in
    `train_test_split.txt` ("<image_id> <0|1>"), over all 200 classes.
    Item ids are the paths of images.txt; labels are class_id - 1.
    """
    if split not in CUB_SPLITS:
        raise ValueError(f"unknown CUB-200-2011 split {split!r}; valid splits: {list(CUB_SPLITS)}")
    root = Path(root)
    images_path, labels_path = root / "images.txt", root / "image_class_labels.txt"
    split_path, classes_path = root / "train_test_split.txt", root / "classes.txt"
    _require_files([images_path, labels_path] + ([split_path] if split == "official" else []),
                   CUB_HINT)
    rel_paths = _read_id_table(images_path, "<image_id> <relative path>", str)
    class_ids = _read_id_table(labels_path, "<image_id> <class_id>", _positive_int,
                               known=rel_paths)
    _check_complete(labels_path, rel_paths, class_ids)
    if split == "official":
        is_train = _read_id_table(split_path, "<image_id> <is_training_image 0|1>", _flag,
                                  known=rel_paths)
        _check_complete(split_path, rel_paths, is_train)
        keep = [i for i in rel_paths if not is_train[i]]
    else:
        keep = [i for i in rel_paths if class_ids[i] in CUB_TEST_CLASSES]
    label_names = None
    names = _read_id_table(classes_path, "<class_id> <name>", str) if classes_path.is_file() else {}
    if names:
        label_names = [names.get(str(c), str(c)) for c in range(1, max(map(int, names)) + 1)]
    corpus = Corpus(name=f"cub200-test-{split}", item_ids=[rel_paths[i] for i in keep],
                    modality="image", images=[str(root / "images" / rel_paths[i]) for i in keep],
                    labels=np.array([class_ids[i] - 1 for i in keep], dtype=np.int64),
                    label_names=label_names,
                    metadata={"root": str(root), "split": split, "image_ids": keep})
    _require_first_image(corpus.images, CUB_HINT)
    return RetrievalSplit(gallery=corpus, queries=corpus, query_is_gallery=True)


# -- Stanford Cars ---------------------------------------------------------------------------

def load_cars196(root: str | Path, *, split: str = "classes") -> RetrievalSplit:
    """Stanford Cars test images as both queries and gallery (`query_is_gallery=True`).

    Reads either layout of the release:
    - `cars_annos.mat` (variable `annotations`: a 1xN struct array with fields
      relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test; and `class_names`)
      beside the unpacked `car_ims/`; item ids are relative_im_path (`car_ims/000001.jpg`);
    - the devkit layout (as torchvision reads it): `devkit/cars_train_annos.mat` and
      `cars_test_annos_withlabels.mat` (at the root or in devkit/; fields bbox_x1 ... class
      fname) beside `cars_train/` and `cars_test/`; item ids are `cars_train/<fname>` and
      `cars_test/<fname>`, test = 1 for the second file's rows.
    Label names come from `class_names`, else from `devkit/cars_meta.mat`, else are absent.
    split "classes" (default; IRGen protocol): the 8,131 images of classes 99-196. split
    "official": the 8,041 images with test == 1, over all 196 classes. Labels are class - 1.
    Needs scipy (ImportError otherwise). Malformed records raise ValueError naming
    `<file>.mat:annotations(i)`, i counted from 1 as in MATLAB.
    """
    if split not in CUB_SPLITS:
        raise ValueError(f"unknown Stanford Cars split {split!r}; valid splits: {list(CUB_SPLITS)}")
    root = Path(root)
    annos_path = root / "cars_annos.mat"
    train_path = root / "devkit" / "cars_train_annos.mat"
    test_path = next((p for p in (root / "cars_test_annos_withlabels.mat",
                                  root / "devkit" / "cars_test_annos_withlabels.mat")
                      if p.is_file()), root / "cars_test_annos_withlabels.mat")
    if annos_path.is_file() or not train_path.is_file():
        _require_files([annos_path], CARS_HINT)
        mat = _loadmat(annos_path)
        records = _cars_records(annos_path, mat, CARS_FIELDS, lambda r, w: (
            _mat_str(r["relative_im_path"], f"{w}.relative_im_path"),
            _mat_int(r["test"], f"{w}.test")))
        class_names = mat.get("class_names")
    else:
        _require_files([train_path, test_path], CARS_HINT)
        records = []
        for path, folder, test in ((train_path, "cars_train", 0), (test_path, "cars_test", 1)):
            records += _cars_records(
                path, _loadmat(path), ("fname", "class"),
                lambda r, w, f=folder, t=test: (f"{f}/{_mat_str(r['fname'], f'{w}.fname')}", t))
        class_names = None
    item_ids: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for where, rel_path, class_id, test in records:
        if class_id < 1 or test not in (0, 1):
            raise ValueError(f"{where}: class must be >= 1 and test 0 or 1, got {class_id}, {test}")
        if rel_path in seen:
            raise ValueError(f"{where}: duplicate image {rel_path!r}")
        seen.add(rel_path)
        if (test == 1) if split == "official" else (class_id in CARS_TEST_CLASSES):
            item_ids.append(rel_path)
            labels.append(class_id - 1)
    meta_path = root / "devkit" / "cars_meta.mat"
    if class_names is None and meta_path.is_file():
        class_names = _loadmat(meta_path).get("class_names")
    label_names = None
    if isinstance(class_names, np.ndarray):
        label_names = [_mat_str(c, f"class_names({k})")
                       for k, c in enumerate(class_names.ravel(), start=1)]
    corpus = Corpus(name=f"cars196-test-{split}", item_ids=item_ids, modality="image",
                    images=[str(root / p) for p in item_ids],
                    labels=np.array(labels, dtype=np.int64), label_names=label_names,
                    metadata={"root": str(root), "split": split})
    _require_first_image(corpus.images, CARS_HINT)
    return RetrievalSplit(gallery=corpus, queries=corpus, query_is_gallery=True)


def _cars_records(path: Path, mat: dict[str, Any], fields: Sequence[str],
                  read: Any) -> list[tuple[str, str, int, int]]:
    """The `annotations` struct array of a Cars .mat file -> (where, image, class, test) rows;
    `read(record, where)` gives (image, test)."""
    annotations = mat.get("annotations")
    names = annotations.dtype.names if isinstance(annotations, np.ndarray) else None
    if names is None:
        raise ValueError(f"{path}: no struct array 'annotations' "
                         f"(variables: {sorted(k for k in mat if not k.startswith('__'))})")
    missing = [f for f in fields if f not in names]
    if missing:
        raise ValueError(f"{path}: 'annotations' lacks the fields {missing} (has {list(names)})")
    assert isinstance(annotations, np.ndarray)
    out = []
    for i, record in enumerate(annotations.ravel(), start=1):
        where = f"{path}:annotations({i})"
        rel_path, test = read(record, where)
        out.append((where, rel_path, _mat_int(record["class"], f"{where}.class"), test))
    return out


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as exc:
        raise ImportError(f"reading {path.name} needs scipy: pip install scipy") from exc
    try:
        return loadmat(path)
    # scipy's reader raises IndexError on short garbage, NotImplementedError on v7.3 (HDF5)
    except (MatReadError, ValueError, TypeError, OSError, IndexError, NotImplementedError) as exc:
        raise ValueError(f"{path}: not a readable MATLAB file: {exc}") from exc


def _mat_value(value: Any, where: str) -> Any:
    """A MATLAB scalar (a 1x1 array, a 1-char string array, ...) -> its one element."""
    flat = np.ravel(np.asarray(value))
    if flat.size != 1:
        raise ValueError(f"{where}: expected one value, got an array of shape {np.shape(value)}")
    return flat[0]


def _mat_str(value: Any, where: str) -> str:
    item = _mat_value(value, where)
    if not isinstance(item, str) or not item:
        raise ValueError(f"{where}: expected a non-empty string, got {item!r}")
    return str(item)


def _mat_int(value: Any, where: str) -> int:
    item = _mat_value(value, where)
    if isinstance(item, (np.integer, int)) and not isinstance(item, bool):
        return int(item)
    if isinstance(item, (np.floating, float)) and float(item).is_integer():
        return int(item)
    raise ValueError(f"{where}: expected an integer, got {item!r}")


# -- Flickr30K / MS-COCO Karpathy split ------------------------------------------------------

def load_karpathy(json_path: str | Path, *, image_root: str | Path, split: str = "test",
                  max_captions: int | None = None) -> RetrievalSplit:
    """One split of `dataset_flickr30k.json` / `dataset_coco.json` for text -> image retrieval.

    The json is {"images": [{"filename", "filepath" (COCO only), "split", "sentences":
    [{"raw", ...}], "imgid", "cocoid" (COCO only), ...}], "dataset"}. split is one of
    train/val/test/restval (test: 1,000 Flickr30K or 5,000 COCO images).
    Gallery: the split's images, item id `filepath/filename` (or `filename`), image
    `image_root/filepath/filename` (or `image_root/filename`), text its first caption;
    metadata["image_ids"] holds cocoid, else imgid. Queries: every caption of those images
    (modality "text"), item id `<image item id>#<k>` as in Flickr30K's token file;
    relevant[q] = [the row of its image]. max_captions keeps only each image's first captions
    (UniIR and GENIUS keep 5 per COCO image; a few COCO images have 6 or 7).
    """
    if max_captions is not None and max_captions < 1:
        raise ValueError(f"max_captions must be >= 1, got {max_captions}")
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; valid splits: {list(KARPATHY_SPLITS)}")
    json_path, image_root = Path(json_path), Path(image_root)
    _require_files([json_path], KARPATHY_HINT)
    _require_dir(image_root, KARPATHY_HINT)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{json_path}: not UTF-8 text: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path}: expected an object with an 'images' list")
    item_ids: list[str] = []
    images: list[str] = []
    image_ids: list[Any] = []
    captions: list[list[str]] = []
    for k, entry in enumerate(data["images"]):
        where = f"{json_path}: images[{k}]"
        if not isinstance(entry, dict) or entry.get("split") not in KARPATHY_SPLITS:
            raise ValueError(f"{where}: expected an object with 'split' in {list(KARPATHY_SPLITS)}")
        if entry["split"] != split:
            continue
        filename, filepath = entry.get("filename"), entry.get("filepath")
        sentences = entry.get("sentences")
        if not isinstance(filename, str) or not filename or not isinstance(filepath, (str, type(None))):
            raise ValueError(f"{where}: expected a string 'filename' (and optional 'filepath')")
        if not isinstance(sentences, list) or not all(
                isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences):
            raise ValueError(f"{where}: expected 'sentences' as a list of objects with 'raw'")
        rel = f"{filepath}/{filename}" if filepath else filename
        item_ids.append(rel)
        images.append(str(image_root / rel))
        image_ids.append(entry.get("cocoid", entry.get("imgid")))
        captions.append([s["raw"].strip() for s in sentences][:max_captions])
    if len(set(item_ids)) != len(item_ids):
        raise ValueError(f"{json_path}: split {split!r} lists an image twice")
    dataset = str(data.get("dataset") or json_path.stem)
    meta = {"json": str(json_path), "image_root": str(image_root), "split": split,
            "max_captions": max_captions}
    gallery = Corpus(name=f"{dataset}-{split}-images", item_ids=item_ids, modality="image",
                     images=images, texts=[c[0] if c else "" for c in captions],
                     metadata={**meta, "image_ids": image_ids})
    query_ids = [f"{rel}#{j}" for rel, caps in zip(item_ids, captions, strict=True)
                 for j in range(len(caps))]
    queries = Corpus(name=f"{dataset}-{split}-captions", item_ids=query_ids, modality="text",
                     texts=[c for caps in captions for c in caps], metadata=meta)
    relevant = [[row] for row, caps in enumerate(captions) for _ in caps]
    _require_first_image(gallery.images, KARPATHY_HINT)
    return RetrievalSplit(gallery=gallery, queries=queries, relevant=relevant)


# -- M-BEIR ----------------------------------------------------------------------------------

def load_mbeir(query_jsonl: str | Path, candidate_pool_jsonl: str | Path,
               qrels_txt: str | Path | None = None, *, image_root: str | Path,
               missing_positives: str = "drop") -> RetrievalSplit:
    """One M-BEIR query file against one candidate pool (UniIR).

    Query lines: {"qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
    "pos_cand_list", "neg_cand_list", "task_id"}; candidate lines: {"did", "txt", "img_path",
    "modality", "src_content"}; modalities "text", "image", "image,text". Paths are relative
    to image_root (the M-BEIR folder holding mbeir_images/).
    Both corpora: item ids qid / did, texts the text or "", images the resolved path or None
    per item (images is None when no item has one), metadata["modalities"] per item
    ("text" | "image" | "image_text"). Corpus.modality is the items' modality when they all
    share one, else "image_text" (mixed pool: read metadata["modalities"]).
    Queries also keep metadata["task_ids"]; M-BEIR's task instructions live in a separate
    file and are not prepended here, and neg_cand_list and src_content are not kept.
    relevant[q]: gallery rows of the query's pos_cand_list, or, when qrels_txt is given, of
    its qrels lines ("qid 0 did relevance task_id", relevance > 0; qids not in the query
    file are skipped). A positive did that is not in the pool (OVEN's and InfoSeek's
    queries list positives of the other data set) is dropped, as UniIR does, and counted
    in queries.metadata["dropped_positives"]; missing_positives="raise" raises ValueError
    naming the qid and the did instead.
    """
    if missing_positives not in ("drop", "raise"):
        raise ValueError(f"missing_positives must be 'drop' or 'raise', got {missing_positives!r}")
    dropped: list[int] = [0]
    strict = missing_positives == "raise"
    query_path, pool_path, image_root = Path(query_jsonl), Path(candidate_pool_jsonl), Path(image_root)
    qrels_path = Path(qrels_txt) if qrels_txt is not None else None
    _require_files([query_path, pool_path] + ([qrels_path] if qrels_path else []), MBEIR_HINT)
    _require_dir(image_root, MBEIR_HINT)

    dids: list[str] = []
    row_of: dict[str, int] = {}
    pool: dict[str, list[Any]] = {"texts": [], "images": [], "modalities": []}
    for lineno, obj in _jsonl(pool_path):
        where = f"{pool_path}:{lineno}"
        did = _str_field(obj, "did", where)
        if did in row_of:
            raise ValueError(f"{where}: duplicate did {did!r}")
        row_of[did] = len(dids)
        dids.append(did)
        _add_item(pool, obj, ("txt", "img_path", "modality"), image_root, where)

    qids: list[str] = []
    seen_qids: set[str] = set()
    queries_data: dict[str, list[Any]] = {"texts": [], "images": [], "modalities": []}
    task_ids: list[int] = []
    relevant: list[list[int]] = []
    for lineno, obj in _jsonl(query_path):
        where = f"{query_path}:{lineno}"
        qid = _str_field(obj, "qid", where)
        if qid in seen_qids:
            raise ValueError(f"{where}: duplicate qid {qid!r}")
        seen_qids.add(qid)
        qids.append(qid)
        _add_item(queries_data, obj, ("query_txt", "query_img_path", "query_modality"),
                  image_root, where)
        task_id = obj.get("task_id")
        if isinstance(task_id, str) and task_id.isdigit():
            task_id = int(task_id)
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise ValueError(f"{where}: expected an integer 'task_id', got {task_id!r}")
        task_ids.append(task_id)
        if qrels_path is None:
            positives = obj.get("pos_cand_list")
            if not isinstance(positives, list) or not all(isinstance(d, str) for d in positives):
                raise ValueError(f"{where}: expected 'pos_cand_list' as a list of dids")
            relevant.append(_rows(positives, row_of, f"{where}: query {qid!r}", pool_path,
                                  strict, dropped))
    if qrels_path is not None:
        relevant = _read_qrels(qrels_path, qids, row_of, pool_path, strict, dropped)

    gallery = _mbeir_corpus(pool_path.stem, dids, pool, {"pool": str(pool_path)})
    queries = _mbeir_corpus(query_path.stem, qids, queries_data,
                            {"queries": str(query_path), "task_ids": task_ids,
                             "dropped_positives": dropped[0]})
    _require_first_image([p for p in (queries.images or []) if p is not None]
                         + [p for p in (gallery.images or []) if p is not None], MBEIR_HINT)
    return RetrievalSplit(gallery=gallery, queries=queries, relevant=relevant)


def _add_item(columns: dict[str, list[Any]], obj: dict[str, Any], keys: tuple[str, str, str],
              image_root: Path, where: str) -> None:
    """Append one M-BEIR item's text, image path and normalised modality to `columns`."""
    text_key, image_key, modality_key = keys
    text, image = obj.get(text_key), obj.get(image_key)
    modality = MBEIR_MODALITIES.get(str(obj.get(modality_key)).replace(" ", ""))
    if modality is None:
        raise ValueError(f"{where}: {modality_key!r} must be one of "
                         f"{sorted(set(MBEIR_MODALITIES) - {'text,image'})}, got {obj.get(modality_key)!r}")
    if not isinstance(text, (str, type(None))) or not isinstance(image, (str, type(None))):
        raise ValueError(f"{where}: {text_key!r} and {image_key!r} must be strings or null")
    if modality != "text" and not image:
        raise ValueError(f"{where}: modality {obj[modality_key]!r} but no {image_key!r}")
    columns["texts"].append(text or "")
    columns["images"].append(str(image_root / image) if image else None)
    columns["modalities"].append(modality)


def _mbeir_corpus(name: str, item_ids: list[str], columns: dict[str, list[Any]],
                  metadata: dict[str, Any]) -> Corpus:
    modalities = columns["modalities"]
    kinds = set(modalities)
    images = columns["images"]
    return Corpus(name=name, item_ids=item_ids,
                  modality=kinds.pop() if len(kinds) == 1 else "image_text",
                  images=images if any(p is not None for p in images) else None,
                  texts=columns["texts"], metadata={**metadata, "modalities": modalities})


def _rows(dids: Sequence[str], row_of: dict[str, int], where: str, pool_path: Path,
          strict: bool, dropped: list[int]) -> list[int]:
    """dids -> their gallery rows, first occurrence order, duplicates dropped; a did not in
    the pool raises (strict) or is counted in dropped[0]."""
    rows: list[int] = []
    for did in dids:
        if did not in row_of:
            if not strict:
                dropped[0] += 1
                continue
            raise ValueError(f"{where}: positive candidate did {did!r} is not in {pool_path}")
        if row_of[did] not in rows:
            rows.append(row_of[did])
    return rows


def _read_qrels(path: Path, qids: list[str], row_of: dict[str, int], pool_path: Path,
                strict: bool, dropped: list[int]) -> list[list[int]]:
    """M-BEIR qrels ("qid 0 did relevance task_id") -> per query in `qids`, relevant rows."""
    positives: dict[str, list[str]] = {qid: [] for qid in qids}
    for lineno, line in _lines(path):
        fields = line.split()
        if len(fields) != 5 or not fields[3].lstrip("-").isdigit():
            raise ValueError(f"{path}:{lineno}: expected 'qid 0 did relevance task_id', got {line!r}")
        qid, _, did, relevance, _ = fields
        if qid not in positives or int(relevance) <= 0:
            continue
        if did not in row_of:
            if not strict:
                dropped[0] += 1
                continue
            raise ValueError(f"{path}:{lineno}: query {qid!r}: relevant did {did!r} is not in "
                             f"{pool_path}")
        positives[qid].append(did)
    return [_rows(positives[qid], row_of, str(path), pool_path, strict, dropped) for qid in qids]


# -- shared readers --------------------------------------------------------------------------

def _require_files(paths: Sequence[Path], hint: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingDataError(f"missing {', '.join(map(str, missing))}. Get {hint}.")


def _require_dir(path: Path, hint: str) -> None:
    if not path.is_dir():
        raise MissingDataError(f"missing image folder {path}. Get {hint}.")


def _require_first_image(paths: Sequence[Any] | np.ndarray | None, hint: str) -> None:
    """Only the first image is checked: enough to catch unpacked annotations without images."""
    if paths is not None and len(paths) and not Path(paths[0]).is_file():
        raise MissingDataError(f"missing image {paths[0]} (are the images unpacked?). Get {hint}.")


def _str_field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string {key!r}, got {value!r}")
    return value


def _read_id_table(path: Path, form: str, parse: Any, *,
                   known: dict[str, Any] | None = None) -> dict[str, Any]:
    """A CUB "<id> <value>" file -> {id: parse(value)}, in file order; checks ids."""
    table: dict[str, Any] = {}
    for lineno, line in _lines(path):
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '{form}', got {line!r}")
        key, value = fields
        if key in table:
            raise ValueError(f"{path}:{lineno}: duplicate id {key}")
        if known is not None and key not in known:
            raise ValueError(f"{path}:{lineno}: id {key} is not in images.txt")
        try:
            table[key] = parse(value)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: expected '{form}', got {line!r} ({exc})") from None
    return table


def _check_complete(path: Path, images: dict[str, str], table: dict[str, Any]) -> None:
    missing = [i for i in images if i not in table]
    if missing:
        raise ValueError(f"{path}: no row for image ids {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError("not a positive integer")
    return int(text)


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("not 0 or 1")
    return text == "1"
