"""The source registry on small fixtures in each real format: folders, tables, embeddings and
the papers' benchmarks as their releases lay them out; bad input names what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures import png_bytes, put
from genir.data.corpus import MissingDataError
from genir.data.folder import load_folder
from genir.data.sources import Columns, SourceOptions, open_source, parse_spec
from genir.data.table import load_table, load_vectors

PNG = png_bytes((4, 4))


def write_photos(root: Path) -> Path:
    for path in ("cats/a.png", "cats/b.jpg", "dogs/c.png", "dogs/sub/d.png", "top.png"):
        put(root, path, PNG)
    put(root, ".hidden/x.png", PNG)
    put(root, "cats/.y.png", PNG)
    put(root, "notes.md", "not an image")
    return root


# -- folders ---------------------------------------------------------------------------------

def test_folder_ids_labels_and_hidden_files(tmp_path):
    corpus = load_folder(write_photos(tmp_path / "photos"))
    assert corpus.item_ids == ["cats/a.png", "cats/b.jpg", "dogs/c.png", "dogs/sub/d.png", "top.png"]
    assert corpus.label_names == ["cats", "dogs"]
    assert corpus.labels.tolist() == [0, 0, 1, 1, -1]   # first sub-folder level; top level: none
    assert corpus.images[0] == str(tmp_path / "photos" / "cats/a.png")
    assert corpus.texts is None


def test_folder_without_subfolders_has_no_labels(tmp_path):
    put(tmp_path, "a.png", PNG)
    put(tmp_path, "b.png", PNG)
    corpus = load_folder(tmp_path)
    assert corpus.labels is None and corpus.item_ids == ["a.png", "b.png"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "txt"])
def test_folder_captions(tmp_path, kind):
    root = write_photos(tmp_path / "photos")
    if kind == "jsonl":
        put(root, "captions.jsonl", json.dumps({"path": "cats/a.png", "caption": " a cat "}) + "\n"
            + json.dumps({"id": "top.png", "text": "the top"}) + "\n")
    elif kind == "csv":
        put(root, "captions.csv", 'id,caption\ncats/a.png," a cat "\ntop.png,the top\n')
    else:
        put(root, "cats/a.txt", " a cat \n")
        put(root, "top.txt", "the top")
    corpus = load_folder(root)
    assert corpus.texts == ["a cat", "", "", "", "the top"]


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_folder(tmp_path / "nowhere")
    put(tmp_path / "empty", "readme.txt", "no pictures")
    with pytest.raises(ValueError, match="holds no image"):
        load_folder(tmp_path / "empty")
    root = write_photos(tmp_path / "photos")
    put(root, "captions.jsonl", json.dumps({"id": "cats/zzz.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"captions\.jsonl:1: 'cats/zzz\.png' names no image"):
        load_folder(root)
    put(root, "captions.jsonl", '{"id": "cats/a.png"}\n')
    with pytest.raises(ValueError, match=r"captions\.jsonl:1: expected an image id"):
        load_folder(root)


# -- tables ----------------------------------------------------------------------------------

ROWS = [{"id": "d1", "text": "red shoes", "label": "shoes"},
        {"id": "d2", "text": "blue hat", "label": "hats"},
        {"id": "d3", "text": "green shoes", "label": None}]


def write_table(path: Path, rows: list[dict], kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        import csv

        keys = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in keys} for r in rows])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_text_table_each_format(tmp_path, kind):
    corpus = load_table(write_table(tmp_path / f"docs.{kind}", ROWS, kind))
    assert corpus.modality == "text" and corpus.item_ids == ["d1", "d2", "d3"]
    assert corpus.texts == ["red shoes", "blue hat", "green shoes"] and corpus.images is None
    assert corpus.label_names == ["hats", "shoes"] and corpus.labels.tolist() == [1, 0, -1]


def test_image_table_paths_relative_to_table_and_columns_by_option(tmp_path):
    put(tmp_path / "t", "img/1.png", PNG)
    put(tmp_path / "t", "img/2.png", PNG)
    rows = [{"key": "a", "pic": "img/1.png", "desc": "one"}, {"key": "b", "pic": "img/2.png"}]
    path = write_table(tmp_path / "t" / "items.jsonl", rows, "jsonl")
    corpus = load_table(path, Columns(id="key", image="pic", text="desc"))
    assert corpus.modality == "image" and corpus.images == [str(tmp_path / "t/img/1.png"),
                                                            str(tmp_path / "t/img/2.png")]
    assert corpus.texts == ["one", ""] and corpus.labels is None


def test_table_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no 'id' column.*--id-column"):
        load_table(write_table(tmp_path / "a.jsonl", [{"key": "x", "text": "t"}], "jsonl"))
    with pytest.raises(ValueError, match=r"neither a 'text' nor an 'image' column"):
        load_table(write_table(tmp_path / "b.jsonl", [{"id": "x", "body": "t"}], "jsonl"))
    with pytest.raises(ValueError, match=r"c\.jsonl:2: id 'x' repeats .*c\.jsonl:1"):
        load_table(write_table(tmp_path / "c.jsonl", [{"id": "x", "text": "t"}] * 2, "jsonl"))
    with pytest.raises(ValueError, match=r"d\.csv:3: 'text' is empty"):
        load_table(write_table(tmp_path / "d.csv", [{"id": "x", "text": "t"},
                                                    {"id": "y", "text": ""}], "csv"))
    (tmp_path / "e.jsonl").write_text('{"id": "x", "text": "t"}\n{"id": \n')
    with pytest.raises(ValueError, match=r"e\.jsonl:2: invalid JSON"):
        load_table(tmp_path / "e.jsonl")
    (tmp_path / "f.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"f\.parquet: not a readable parquet file"):
        load_table(tmp_path / "f.parquet")


# -- embeddings ------------------------------------------------------------------------------

def test_npy_with_ids_file_is_memory_mapped(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.save(tmp_path / "emb.npy", vectors)
    (tmp_path / "emb.ids.txt").write_text("a\nb\nc\nd\ne\n")
    ids, loaded, labels, _ = load_vectors(tmp_path / "emb.npy")
    assert ids == ["a", "b", "c", "d", "e"] and labels is None
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, vectors)
    (tmp_path / "emb.ids.txt").unlink()
    ids, _, _, _ = load_vectors(tmp_path / "emb.npy")
    assert ids == ["0", "1", "2", "3", "4"]   # no ids file: row numbers


def test_parquet_vectors_with_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    pq.write_table(pa.table({"id": ["w", "x", "y", "z"], "vector": vectors.tolist(),
                             "label": ["p", "q", "p", None]}), tmp_path / "emb.parquet")
    ids, loaded, labels, names = load_vectors(tmp_path / "emb.parquet")
    assert ids == ["w", "x", "y", "z"] and np.array_equal(loaded, vectors)
    assert names == ["p", "q"] and labels.tolist() == [0, 1, 0, -1]
    assert parse_spec(str(tmp_path / "emb.parquet"))[0] == "vectors"   # a list column: vectors


def test_vectors_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 2), np.float32))
    (tmp_path / "ids.txt").write_text("x\ny\n")
    with pytest.raises(ValueError, match=r"a\.npy has 3 vectors but 2 ids"):
        load_vectors(tmp_path / "a.npy", ids=tmp_path / "ids.txt")
    bad = np.zeros((4, 2), np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "b.npy", bad)
    with pytest.raises(ValueError, match=r"b\.npy: row 2 \(id '2'\) has a NaN or inf"):
        load_vectors(tmp_path / "b.npy")
    np.save(tmp_path / "c.npy", np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"c\.npy: expected a non-empty \(N, D\) float matrix"):
        load_vectors(tmp_path / "c.npy")
    (tmp_path / "dup.txt").write_text("x\nx\ny\n")
    with pytest.raises(ValueError, match="id 'x' is repeated"):
        load_vectors(tmp_path / "a.npy", ids=tmp_path / "dup.txt")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "emb": [[1.0, 2.0]]}), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"no 'vector' column.*--vector-column"):
        load_vectors(tmp_path / "d.parquet")
    _, loaded, _, _ = load_vectors(tmp_path / "d.parquet", columns=Columns(vector="emb"))
    assert loaded.tolist() == [[1.0, 2.0]]


# -- the registry ----------------------------------------------------------------------------

def test_parse_spec_by_kind_and_by_name(tmp_path):
    write_photos(tmp_path / "photos")
    write_table(tmp_path / "docs.csv", ROWS, "csv")
    np.save(tmp_path / "e.npy", np.zeros((2, 2), np.float32))
    assert parse_spec(str(tmp_path / "photos")) == ("folder", tmp_path / "photos")
    assert parse_spec(str(tmp_path / "docs.csv"))[0] == "table"
    assert parse_spec(str(tmp_path / "e.npy"))[0] == "vectors"
    assert parse_spec(f"inshop:{tmp_path}") == ("inshop", tmp_path)
    with pytest.raises(ValueError, match="no such file or folder"):
        parse_spec(str(tmp_path / "missing"))
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="a folder, a table"):
        parse_spec(str(tmp_path / "x.bin"))
    with pytest.raises(ValueError, match="give a path after coco:"):
        parse_spec("coco:")


def test_inshop_official_layout_img_under_Img(tmp_path):
    """The release unpacks images as ROOT/Img/img/... while the list says img/...; mmpretrain
    and Proxy-Anchor join Img/. The real file pads columns and leaves trailing spaces."""
    root = tmp_path / "inshop"
    rows = [("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "query"),
            ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "gallery"),
            ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "gallery"),
            ("img/MEN/Denim/id_00000081/01_1_front.jpg", "id_00000081", "train")]
    body = "".join(f"{n:<60}{i:<20}{s}   \n" for n, i, s in rows)
    put(root, "Eval/list_eval_partition.txt", f"{len(rows)}\nimage_name item_id evaluation_status\n{body}")
    for name, _, _ in rows:
        put(root / "Img", name, PNG)
    source = open_source(f"inshop:{root}")
    assert source.kind == "inshop" and source.protocol == "irgen"
    assert source.items.images[0] == str(root / "Img" / rows[1][0])
    assert source.relevant == [[0]] and source.queries.item_ids == [rows[0][0]]
    with pytest.raises(MissingDataError, match=r"missing image .*elsewhere/img/WOMEN"):
        open_source(f"inshop:{root}", SourceOptions(image_root=str(tmp_path / "elsewhere")))
    put(tmp_path / "elsewhere", rows[1][0], PNG)
    other = open_source(f"inshop:{root}", SourceOptions(image_root=str(tmp_path / "elsewhere")))
    assert other.items.images[0] == str(tmp_path / "elsewhere" / rows[1][0])


def test_cars_devkit_layout(tmp_path):
    """Releases without cars_annos.mat: devkit/cars_train_annos.mat and
    cars_test_annos_withlabels.mat (fields bbox_x1 .. class fname), cars_train/ cars_test/."""
    savemat = pytest.importorskip("scipy.io").savemat
    root = tmp_path / "cars"
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")

    def annos(records):
        out = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
        for i, (fname, cls) in enumerate(records):
            out[0, i] = (np.uint8(1), np.uint8(2), np.uint8(30), np.uint8(20), np.uint8(cls), fname)
        return {"annotations": out}

    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_train_annos.mat", annos([("00001.jpg", 1), ("00002.jpg", 120)]))
    savemat(root / "cars_test_annos_withlabels.mat", annos([("00001.jpg", 99), ("00002.jpg", 3)]))
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Car {c}" for c in range(1, 197)]
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    for rel in ("cars_train/00001.jpg", "cars_train/00002.jpg", "cars_test/00001.jpg",
                "cars_test/00002.jpg"):
        put(root, rel, PNG)
    classes = open_source(f"cars196:{root}")
    assert classes.items.item_ids == ["cars_train/00002.jpg", "cars_test/00001.jpg"]
    assert classes.items.labels.tolist() == [119, 98] and classes.query_is_gallery
    assert classes.items.label_names[98] == "Car 99"
    official = open_source(f"cars196:{root}", SourceOptions(split="official"))
    assert official.items.item_ids == ["cars_test/00001.jpg", "cars_test/00002.jpg"]


def test_coco_keeps_first_five_captions_by_default(tmp_path):
    captions = [f"caption {k}" for k in range(7)]
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "imgid": 0,
         "cocoid": 42, "split": "test", "sentences": [{"raw": c} for c in captions]}]}
    put(tmp_path, "dataset_coco.json", json.dumps(data))
    put(tmp_path, "val2014/COCO_val2014_000000000042.jpg", PNG)
    source = open_source(f"coco:{tmp_path}")
    assert source.queries.texts == captions[:5] and source.relevant == [[0]] * 5
    assert not source.captions_train and any("first 5 captions" in n for n in source.notes)
    every = open_source(f"coco:{tmp_path / 'dataset_coco.json'}", SourceOptions(all_captions=True))
    assert every.queries.texts == captions


def test_mbeir_query_file_finds_pool_and_qrels(tmp_path):
    root = tmp_path / "M-BEIR"
    pool = [{"did": "9:1", "txt": "a moped", "img_path": None, "modality": "text"},
            {"did": "9:2", "txt": "a car", "img_path": None, "modality": "text"}]
    queries = [{"qid": "9:100", "query_txt": "moped", "query_img_path": None,
                "query_modality": "text", "pos_cand_list": ["9:1", "6:7"], "task_id": 0}]
    put(root, "query/test/mbeir_oven_task0_test.jsonl", json.dumps(queries[0]) + "\n")
    put(root, "cand_pool/local/mbeir_oven_task0_cand_pool.jsonl",
        "".join(json.dumps(c) + "\n" for c in pool))
    put(root, "cand_pool/global/mbeir_union_test_cand_pool.jsonl", json.dumps(pool[1]) + "\n")
    put(root, "qrels/test/mbeir_oven_task0_test_qrels.txt", "9:100 0 9:1 1 0\n9:100 0 6:7 1 0\n")
    source = open_source(f"mbeir:{root}/query/test/mbeir_oven_task0_test.jsonl")
    assert source.relevant == [[0]] and source.item_modalities == ["text", "text"]
    assert any("1 positives not in the pool" in n for n in source.notes)
    assert "local pool" in source.split
    union = open_source(f"mbeir:{root}/query/test/mbeir_oven_task0_test.jsonl",
                        SourceOptions(pool="union"))
    assert union.items.item_ids == ["9:2"] and union.relevant == [[]]
