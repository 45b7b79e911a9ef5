"""Benchmark loaders on tiny fixtures in the official on-disk layouts, and their errors.

Hermetic: every test writes its own In-shop / CUB / Cars / Karpathy / M-BEIR files in
tmp_path. The Cars tests need scipy (to write the .mat file) and skip without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures import png_bytes, put
from genir.data.corpus import MissingDataError
from genir.data.papers import (
    RetrievalSplit,
    load_cars196,
    load_cub200,
    load_inshop,
    load_karpathy,
    load_mbeir,
)

PNG = png_bytes((4, 4))

# -- DeepFashion In-shop ---------------------------------------------------------------------

INSHOP_ROWS = [  # (image_name, item_id, evaluation_status)
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "query"),
    ("img/WOMEN/Dresses/id_00000001/02_2_side.jpg", "id_00000001", "gallery"),
    ("img/WOMEN/Dresses/id_00000001/03_4_full.jpg", "id_00000001", "gallery"),
    ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/MEN/Denim/id_00000007/02_3_back.jpg", "id_00000007", "gallery"),
    ("img/MEN/Tees_Tanks/id_00000009/01_1_front.jpg", "id_00000009", "train"),
    ("img/MEN/Tees_Tanks/id_00000010/01_1_front.jpg", "id_00000010", "gallery"),
]


def write_inshop(root: Path, rows=INSHOP_ROWS, *, count: int | None = None,
                 header: str = "image_name item_id evaluation_status") -> Path:
    # the real file pads its columns with runs of spaces
    body = "".join(f"{name:<60}{item:<20}{status}\n" for name, item, status in rows)
    put(root, "Eval/list_eval_partition.txt", f"{len(rows) if count is None else count}\n{header}\n{body}")
    for name, _, _ in rows:
        put(root, name, PNG)
    return root


def test_inshop_query_gallery_labels_and_relevance(tmp_path):
    root = write_inshop(tmp_path / "inshop")
    split = load_inshop(root)
    assert isinstance(split, RetrievalSplit) and not split.query_is_gallery
    g, q = split.gallery, split.queries
    assert g.item_ids == [r[0] for r in INSHOP_ROWS if r[2] == "gallery"]
    assert q.item_ids == [r[0] for r in INSHOP_ROWS if r[2] == "query"]
    assert len(g) == 4 and len(q) == 2 and g.modality == q.modality == "image"
    assert g.images == [str(root / name) for name in g.item_ids]
    assert all(Path(p).is_file() for p in g.images)
    # one mapping for both corpora; the train-only item is not in it
    assert g.label_names == q.label_names == ["id_00000001", "id_00000007", "id_00000010"]
    assert g.labels.tolist() == [0, 0, 1, 2] and q.labels.tolist() == [0, 1]
    assert split.relevant == [[0, 1], [2]]


def test_inshop_missing_and_malformed(tmp_path):
    with pytest.raises(MissingDataError, match=r"list_eval_partition\.txt.*DeepFashion"):
        load_inshop(tmp_path / "nowhere")
    bad_status = INSHOP_ROWS[:2] + [("img/x.jpg", "id_00000003", "test")]
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt:5: "):
        load_inshop(write_inshop(tmp_path / "a", bad_status))
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt:2: .*header"):
        load_inshop(write_inshop(tmp_path / "b", header="image_name item_id"))
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt:1: declares 9 rows"):
        load_inshop(write_inshop(tmp_path / "c", count=9))
    root = write_inshop(tmp_path / "d")
    (root / INSHOP_ROWS[1][0]).unlink()  # the first gallery image
    with pytest.raises(MissingDataError, match="02_2_side.jpg"):
        load_inshop(root)


# -- CUB-200-2011 ----------------------------------------------------------------------------

CUB_IMAGES = [  # (image_id, relative path, class_id, is_training_image)
    (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 1, 1),
    (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, 0),
    (3, "101.White_Pelican/White_Pelican_0025_97604.jpg", 101, 1),
    (4, "101.White_Pelican/White_Pelican_0032_97729.jpg", 101, 0),
    (5, "200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg", 200, 0),
    (6, "150.Sage_Thrasher/Sage_Thrasher_0062_796462.jpg", 150, 1),
]


def write_cub(root: Path, *, classes: bool = True) -> Path:
    put(root, "images.txt", "".join(f"{i} {p}\n" for i, p, _, _ in CUB_IMAGES))
    put(root, "image_class_labels.txt", "".join(f"{i} {c}\n" for i, _, c, _ in CUB_IMAGES))
    put(root, "train_test_split.txt", "".join(f"{i} {t}\n" for i, _, _, t in CUB_IMAGES))
    if classes:
        names = {c: p.split("/")[0] for _, p, c, _ in CUB_IMAGES}
        put(root, "classes.txt", "".join(f"{c} {names.get(c, f'{c:03d}.Bird_{c}')}\n"
                                         for c in range(1, 201)))
    for _, p, _, _ in CUB_IMAGES:
        put(root, f"images/{p}", PNG)
    return root


def test_cub_class_split_is_queries_and_gallery(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    split = load_cub200(root)
    assert split.query_is_gallery and split.queries is split.gallery and split.relevant == []
    g = split.gallery
    assert g.item_ids == [p for _, p, c, _ in CUB_IMAGES if c > 100]
    assert g.images == [str(root / "images" / p) for p in g.item_ids]
    assert g.labels.tolist() == [100, 100, 199, 149]
    assert g.label_names is not None and len(g.label_names) == 200
    assert g.label_names[100] == "101.White_Pelican" and g.label_names[149] == "150.Sage_Thrasher"
    assert g.metadata["image_ids"] == ["3", "4", "5", "6"]


def test_cub_official_split_and_optional_classes(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011", classes=False)
    split = load_cub200(root, split="official")
    assert split.query_is_gallery
    assert split.gallery.item_ids == [p for _, p, _, t in CUB_IMAGES if t == 0]
    assert split.gallery.labels.tolist() == [0, 100, 199] and split.gallery.label_names is None
    with pytest.raises(ValueError, match="valid splits"):
        load_cub200(root, split="test")


def test_cub_missing_and_malformed(tmp_path):
    root = write_cub(tmp_path / "cub")
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(MissingDataError, match=r"image_class_labels\.txt.*Caltech-UCSD Birds"):
        load_cub200(root)
    root = write_cub(tmp_path / "cub2")
    (root / "train_test_split.txt").unlink()
    load_cub200(root)  # only the official split needs it
    with pytest.raises(MissingDataError, match=r"train_test_split\.txt"):
        load_cub200(root, split="official")
    put(root, "images.txt", "1 a.jpg\n2 b.jpg\n3\n")
    with pytest.raises(ValueError, match=r"images\.txt:3: "):
        load_cub200(root)
    root = write_cub(tmp_path / "cub3")
    put(root, "image_class_labels.txt", "1 1\n2 one\n")
    with pytest.raises(ValueError, match=r"image_class_labels\.txt:2: "):
        load_cub200(root)
    put(root, "image_class_labels.txt", "1 1\n")
    with pytest.raises(ValueError, match=r"image_class_labels\.txt: no row for image ids 2"):
        load_cub200(root)


# -- Stanford Cars ---------------------------------------------------------------------------

CARS_RECORDS = [  # (relative_im_path, class, test)
    ("car_ims/000001.jpg", 1, 0),
    ("car_ims/000002.jpg", 98, 1),
    ("car_ims/000003.jpg", 99, 0),
    ("car_ims/000004.jpg", 150, 1),
    ("car_ims/000005.jpg", 196, 1),
]
CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
CAR_NAMES = [f"Make{c} Model{c} 2012" for c in range(1, 197)]


def cell(strings: list[str]) -> np.ndarray:
    out = np.empty((1, len(strings)), dtype=object)
    out[0, :] = strings
    return out


def write_cars(root: Path, records=CARS_RECORDS, *, fields=CARS_FIELDS,
               names_in_annos: bool = True) -> Path:
    """cars_annos.mat as on the Stanford page: `annotations` a 1xN struct, `class_names` a cell."""
    savemat = pytest.importorskip("scipy.io").savemat
    annotations = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for i, (rel, cls, test) in enumerate(records):
        values = {"relative_im_path": rel, "class": np.uint8(cls), "test": np.uint8(test),
                  "bbox_x1": np.uint16(3), "bbox_y1": np.uint16(4), "bbox_x2": np.uint16(90),
                  "bbox_y2": np.uint16(60)}
        annotations[0, i] = tuple(values[f] for f in fields)
    root.mkdir(parents=True, exist_ok=True)
    variables = {"annotations": annotations}
    if names_in_annos:
        variables["class_names"] = cell(CAR_NAMES)
    savemat(root / "cars_annos.mat", variables)
    savemat(put_dir(root / "devkit") / "cars_meta.mat", {"class_names": cell(CAR_NAMES)})
    for rel, _, _ in records:
        put(root, rel, PNG)
    return root


def put_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_cars_class_split_is_queries_and_gallery(tmp_path):
    root = write_cars(tmp_path / "cars196")
    split = load_cars196(root)
    assert split.query_is_gallery and split.queries is split.gallery and split.relevant == []
    g = split.gallery
    assert g.item_ids == ["car_ims/000003.jpg", "car_ims/000004.jpg", "car_ims/000005.jpg"]
    assert g.images == [str(root / p) for p in g.item_ids]
    assert g.labels.tolist() == [98, 149, 195]
    assert g.label_names == CAR_NAMES and g.label_names[195] == "Make196 Model196 2012"


def test_cars_official_split_and_names_from_devkit(tmp_path):
    root = write_cars(tmp_path / "cars196", names_in_annos=False)
    split = load_cars196(root, split="official")
    assert split.gallery.item_ids == [r for r, _, t in CARS_RECORDS if t == 1]
    assert split.gallery.labels.tolist() == [97, 149, 195]
    assert split.gallery.label_names == CAR_NAMES  # from devkit/cars_meta.mat


def test_cars_missing_and_malformed(tmp_path, monkeypatch):
    with pytest.raises(MissingDataError, match=r"cars_annos\.mat.*Stanford Cars"):
        load_cars196(tmp_path / "nowhere")
    bad = [CARS_RECORDS[0], ("car_ims/000002.jpg", 98, 7)]
    with pytest.raises(ValueError, match=r"cars_annos\.mat:annotations\(2\)"):
        load_cars196(write_cars(tmp_path / "a", bad))
    no_test = tuple(f for f in CARS_FIELDS if f != "test")
    with pytest.raises(ValueError, match=r"lacks the fields \['test'\]"):
        load_cars196(write_cars(tmp_path / "b", fields=no_test))
    put(tmp_path / "c", "cars_annos.mat", b"not a mat file at all")
    with pytest.raises(ValueError, match=r"cars_annos\.mat: not a readable MATLAB file"):
        load_cars196(tmp_path / "c")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(ImportError, match="pip install scipy"):
        load_cars196(tmp_path / "c")


# -- Karpathy split --------------------------------------------------------------------------

def karpathy_entry(filename, split, captions, imgid, **extra):
    return {"filename": filename, "imgid": imgid, "split": split, **extra,
            "sentids": list(range(len(captions))),
            "sentences": [{"tokens": c.lower().split(), "raw": c, "imgid": imgid, "sentid": k}
                          for k, c in enumerate(captions)]}


FLICKR = {"dataset": "flickr30k", "images": [
    karpathy_entry("1000092795.jpg", "test", ["Two young guys with shaggy hair .",
                                              "Two young , White males are outside ."], 0),
    karpathy_entry("10002456.jpg", "train", ["Several men in hard hats ."], 1),
    karpathy_entry("1000268201.jpg", "test", ["A child in a pink dress .", "A little girl .",
                                              "A girl going into a wooden building . "], 2),
    karpathy_entry("1000344755.jpg", "val", ["Someone in a blue shirt ."], 3),
]}
COCO = {"dataset": "coco", "images": [
    karpathy_entry("COCO_val2014_000000391895.jpg", "test", ["A man with a red helmet ."], 0,
                   filepath="val2014", cocoid=391895),
    karpathy_entry("COCO_val2014_000000522418.jpg", "restval", ["A woman cutting cake ."], 1,
                   filepath="val2014", cocoid=522418),
    karpathy_entry("COCO_val2014_000000184613.jpg", "test", ["A child holding a bear .",
                                                             "A young boy ."], 2,
                   filepath="val2014", cocoid=184613),
]}


def write_karpathy(tmp_path: Path, data: dict, name: str) -> tuple[Path, Path]:
    image_root = tmp_path / "images"
    for entry in data["images"]:
        put(image_root, f"{entry.get('filepath', '.')}/{entry['filename']}", PNG)
    put(tmp_path, name, json.dumps(data, indent=1))
    return tmp_path / name, image_root


def test_karpathy_flickr_captions_to_images(tmp_path):
    path, image_root = write_karpathy(tmp_path, FLICKR, "dataset_flickr30k.json")
    split = load_karpathy(path, image_root=image_root)
    g, q = split.gallery, split.queries
    assert not split.query_is_gallery
    assert g.item_ids == ["1000092795.jpg", "1000268201.jpg"] and g.modality == "image"
    assert g.images == [str(image_root / "1000092795.jpg"), str(image_root / "1000268201.jpg")]
    assert g.texts == ["Two young guys with shaggy hair .", "A child in a pink dress ."]
    assert q.modality == "text" and q.images is None
    assert q.item_ids == ["1000092795.jpg#0", "1000092795.jpg#1", "1000268201.jpg#0",
                          "1000268201.jpg#1", "1000268201.jpg#2"]
    assert q.texts[-1] == "A girl going into a wooden building ."  # raw caption, stripped
    assert split.relevant == [[0], [0], [1], [1], [1]]
    assert g.name == "flickr30k-test-images"
    train = load_karpathy(path, image_root=image_root, split="train")
    assert train.gallery.item_ids == ["10002456.jpg"] and train.relevant == [[0]]


def test_karpathy_coco_filepath_and_cocoid(tmp_path):
    path, image_root = write_karpathy(tmp_path, COCO, "dataset_coco.json")
    split = load_karpathy(path, image_root=image_root)
    g = split.gallery
    assert g.item_ids == ["val2014/COCO_val2014_000000391895.jpg",
                          "val2014/COCO_val2014_000000184613.jpg"]
    assert g.images == [str(image_root / "val2014" / f) for f in
                        ("COCO_val2014_000000391895.jpg", "COCO_val2014_000000184613.jpg")]
    assert g.metadata["image_ids"] == [391895, 184613]
    assert len(split.queries) == 3 and split.relevant == [[0], [1], [1]]
    restval = load_karpathy(path, image_root=image_root, split="restval")
    assert len(restval.gallery) == 1


def test_karpathy_missing_and_malformed(tmp_path):
    path, image_root = write_karpathy(tmp_path, FLICKR, "dataset_flickr30k.json")
    with pytest.raises(MissingDataError, match=r"dataset_coco\.json.*Karpathy"):
        load_karpathy(tmp_path / "dataset_coco.json", image_root=image_root)
    with pytest.raises(MissingDataError, match="flickr30k-images"):
        load_karpathy(path, image_root=tmp_path / "flickr30k-images")
    with pytest.raises(ValueError, match="valid splits"):
        load_karpathy(path, image_root=image_root, split="testing")
    put(tmp_path, "broken.json", '{"images": [\n {"filename": "a.jpg",\n  "split": test}\n]}')
    with pytest.raises(ValueError, match=r"broken\.json:3: invalid JSON"):
        load_karpathy(tmp_path / "broken.json", image_root=image_root)
    no_sentences = {"images": [FLICKR["images"][0], {"filename": "b.jpg", "split": "test"}]}
    put(tmp_path, "nosent.json", json.dumps(no_sentences))
    with pytest.raises(ValueError, match=r"nosent\.json: images\[1\]: .*sentences"):
        load_karpathy(tmp_path / "nosent.json", image_root=image_root)


# -- M-BEIR ----------------------------------------------------------------------------------

MBEIR_POOL = [
    {"txt": None, "img_path": "mbeir_images/mscoco_images/val2014/COCO_val2014_000000391895.jpg",
     "modality": "image", "did": "9:1", "src_content": None},
    {"txt": "A man with a red helmet on a small moped.", "img_path": None, "modality": "text",
     "did": "9:2", "src_content": None},
    {"txt": "Oven: moped", "img_path": "mbeir_images/oven_images/03/oven_0301.jpg",
     "modality": "image,text", "did": "9:3", "src_content": '{"entity_id": "Q1"}'},
    {"txt": "A dirt road with a moped.", "img_path": None, "modality": "text", "did": "9:4",
     "src_content": None},
]
MBEIR_QUERIES = [
    {"qid": "9:100", "query_txt": "A man riding a moped.", "query_img_path": None,
     "query_modality": "text", "query_src_content": None, "pos_cand_list": ["9:1"],
     "neg_cand_list": [], "task_id": 0},
    {"qid": "9:101", "query_txt": None,
     "query_img_path": "mbeir_images/mscoco_images/val2014/COCO_val2014_000000522418.jpg",
     "query_modality": "image", "query_src_content": None, "pos_cand_list": ["9:2", "9:4", "9:2"],
     "neg_cand_list": [], "task_id": 1},
    {"qid": "9:102", "query_txt": "What is this vehicle?",
     "query_img_path": "mbeir_images/oven_images/05/oven_0502.jpg", "query_modality": "image,text",
     "query_src_content": None, "pos_cand_list": ["9:3"], "neg_cand_list": [], "task_id": 6},
]
QUERY_FILE = "query/test/mbeir_mscoco_task0_test.jsonl"
POOL_FILE = "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
QRELS_FILE = "qrels/test/mbeir_mscoco_task0_test_qrels.txt"


def write_mbeir(root: Path, queries=MBEIR_QUERIES, pool=MBEIR_POOL) -> Path:
    put(root, QUERY_FILE, "".join(json.dumps(q) + "\n" for q in queries))
    put(root, POOL_FILE, "".join(json.dumps(c) + "\n" for c in pool))
    for item in [*queries, *pool]:
        path = item.get("query_img_path") or item.get("img_path")
        if path:
            put(root, path, PNG)
    return root


def load(root: Path, qrels: str | None = None, **options) -> RetrievalSplit:
    return load_mbeir(root / QUERY_FILE, root / POOL_FILE, root / qrels if qrels else None,
                      image_root=root, **options)


def test_mbeir_mixed_pool_and_positives(tmp_path):
    root = write_mbeir(tmp_path / "M-BEIR")
    split = load(root)
    g, q = split.gallery, split.queries
    assert g.item_ids == ["9:1", "9:2", "9:3", "9:4"] and q.item_ids == ["9:100", "9:101", "9:102"]
    assert g.modality == "image_text"  # mixed pool: per item in metadata
    assert g.metadata["modalities"] == ["image", "text", "image_text", "text"]
    assert g.texts == ["", "A man with a red helmet on a small moped.", "Oven: moped",
                       "A dirt road with a moped."]
    assert g.images == [str(root / MBEIR_POOL[0]["img_path"]), None,
                        str(root / MBEIR_POOL[2]["img_path"]), None]
    assert q.modality == "image_text" and q.metadata["modalities"] == ["text", "image", "image_text"]
    assert q.texts == ["A man riding a moped.", "", "What is this vehicle?"]
    assert q.images == [None, str(root / MBEIR_QUERIES[1]["query_img_path"]),
                        str(root / MBEIR_QUERIES[2]["query_img_path"])]
    assert q.metadata["task_ids"] == [0, 1, 6]
    assert split.relevant == [[0], [1, 3], [2]]  # duplicates dropped, order kept


def test_mbeir_qrels_override_and_uniform_pool(tmp_path):
    root = write_mbeir(tmp_path / "M-BEIR")
    put(root, QRELS_FILE, "9:100 0 9:3 1 0\n9:100 0 9:1 1 0\n9:101 0 9:2 0 1\n"
                          "9:999 0 9:77 1 0\n\n9:102 0 9:4 1 6\n")
    split = load(root, QRELS_FILE)
    # relevance 0 is not relevant; a qid outside the query file is skipped
    assert split.relevant == [[2, 0], [], [3]]
    text_pool = [c for c in MBEIR_POOL if c["modality"] == "text"]
    queries = [{**MBEIR_QUERIES[0], "pos_cand_list": ["9:4"]}]
    text_only = load(write_mbeir(tmp_path / "text", queries, text_pool))
    assert text_only.gallery.modality == "text" and text_only.gallery.images is None
    assert text_only.queries.modality == "text" and text_only.relevant == [[1]]


def test_mbeir_positives_outside_the_pool_are_dropped_and_counted(tmp_path):
    """OVEN's task-8 queries list InfoSeek positives (`6:...`) absent from OVEN's local pool:
    UniIR keeps the positives in the pool searched."""
    queries = [MBEIR_QUERIES[0], {**MBEIR_QUERIES[1], "pos_cand_list": ["9:2", "6:404", "6:405"]},
               {**MBEIR_QUERIES[2], "pos_cand_list": ["6:1"]}]
    split = load(write_mbeir(tmp_path / "M-BEIR", queries))
    assert split.relevant == [[0], [1], []]
    assert split.queries.metadata["dropped_positives"] == 3
    root = write_mbeir(tmp_path / "q")
    put(root, QRELS_FILE, "9:100 0 9:1 1 0\n9:101 0 6:9 1 8\n9:101 0 9:4 1 8\n")
    split = load(root, QRELS_FILE)
    assert split.relevant == [[0], [3], []] and split.queries.metadata["dropped_positives"] == 1


def test_mbeir_missing_and_malformed(tmp_path):
    root = write_mbeir(tmp_path / "M-BEIR")
    (root / POOL_FILE).unlink()
    with pytest.raises(MissingDataError, match=r"mbeir_mscoco_task0_test_cand_pool\.jsonl.*M-BEIR"):
        load(root)
    with pytest.raises(MissingDataError, match=r"qrels\.txt"):
        load(write_mbeir(tmp_path / "a"), QRELS_FILE)
    unknown = [MBEIR_QUERIES[0], {**MBEIR_QUERIES[1], "pos_cand_list": ["9:2", "9:404"]}]
    with pytest.raises(ValueError, match=r"test\.jsonl:2: query '9:101'.*'9:404'"):
        load(write_mbeir(tmp_path / "b", unknown), missing_positives="raise")
    root = write_mbeir(tmp_path / "c")
    put(root, QRELS_FILE, "9:100 0 9:1 1 0\n9:101 0 9:405 1 1\n")
    with pytest.raises(ValueError, match=r"qrels\.txt:2: query '9:101'.*'9:405'"):
        load(root, QRELS_FILE, missing_positives="raise")
    with pytest.raises(ValueError, match="missing_positives"):
        load(root, QRELS_FILE, missing_positives="skip")
    put(root, QRELS_FILE, "9:100 0 9:1 1 0\n9:101 9:2 1\n")
    with pytest.raises(ValueError, match=r"qrels\.txt:2: expected"):
        load(root, QRELS_FILE)
    root = write_mbeir(tmp_path / "d")
    with (root / POOL_FILE).open("a") as f:
        f.write('{"did": "9:5", "txt": "x", \n')
    with pytest.raises(ValueError, match=r"cand_pool\.jsonl:5: invalid JSON"):
        load(root)
    bad_modality = [*MBEIR_POOL[:2], {**MBEIR_POOL[2], "modality": "video"}]
    with pytest.raises(ValueError, match=r"cand_pool\.jsonl:3: 'modality' must be one of"):
        load(write_mbeir(tmp_path / "e", pool=bad_modality))
    no_image = [{**MBEIR_POOL[0], "img_path": None}]
    with pytest.raises(ValueError, match=r"cand_pool\.jsonl:1: modality 'image' but no 'img_path'"):
        load(write_mbeir(tmp_path / "f", MBEIR_QUERIES[:1], no_image))
