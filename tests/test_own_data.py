"""`genir build SOURCE` / `genir eval SOURCE` / search / serve on the user's own data, through
the CLI: a folder of images, a text table, embeddings files, a paper benchmark, a tiny CLIP
chosen with --encoder; bad input exits 2 and leaves nothing in --out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fixtures import write_tiny_clip
from genir.cli import app

runner = CliRunner()
STEPS = ["--steps", "40", "--no-progress"]
COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes else "")


def picture(color, seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(color, np.float32)[None, None] * rng.uniform(0.6, 1.0, (size, size, 1))
    return Image.fromarray(pixels.astype(np.uint8))


def write_photos(root: Path, per_class: int = 6) -> Path:
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture(COLORS[c], 10 * c + i).save(root / name / f"{i}.png")
    return root


def manifest(index: Path) -> dict:
    return json.loads((index / "manifest.json").read_text())


def test_folder_build_search_eval_with_an_unreadable_image(tmp_path):
    photos = write_photos(tmp_path / "photos")
    (photos / "red" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "photos.index"
    result, text = invoke("build", str(photos), "--out", str(out), *STEPS)
    assert result.exit_code == 0, text
    assert "skipped" in text and "broken.png" in text and "same-label pairs" in text
    extra = manifest(out)["extra"]
    assert extra["training"]["recipe"] == "labels" and extra["num_skipped"] == 1
    assert extra["encoder"] == {"type": "efficientnet-lite0", "image_size": 224}
    assert extra["source"]["kind"] == "folder" and manifest(out)["num_items"] == 18
    assert not (tmp_path / ".photos.index.work").exists()   # the work folder is cleaned up
    result, text = invoke("search", str(out), "--image", str(photos / "green" / "3.png"),
                          "-k", "3", "--json")
    assert result.exit_code == 0, text
    assert json.loads(result.stdout)[0]["item_id"] == "green/3.png"
    result, text = invoke("eval", str(photos), "--index", str(out), "--json",
                          str(tmp_path / "r.json"))
    assert result.exit_code == 0, text
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["protocol"] == "irgen" and res["info"]["num_queries"] == 18
    assert res["rows"]["flat knn"]["P@1"] > 0.9 and res["rows"]["genir"]["P@1"] > 0.9
    picture(COLORS[2], 99).save(tmp_path / "new.png")
    result, text = invoke("add", str(out), "--id", "blue/new.png", "--image",
                          str(tmp_path / "new.png"), "--caption", "a new one")
    assert result.exit_code == 0 and "19 items" in text, text
    from genir.index import GenerativeIndex

    index = GenerativeIndex.load(out)
    meta = index.item_meta[index.row_of("blue/new.png")]
    assert meta["caption"] == "a new one" and meta["image_path"] == str(tmp_path / "new.png")
    result, text = invoke("add", str(out), "--id", "blue/new.png", "--image",
                          str(tmp_path / "new.png"))
    assert result.exit_code == 2 and "already in the index" in text
    result, text = invoke("add", str(out), "--id", "x", "--caption", "no image")
    assert result.exit_code == 2 and "give the item's image" in text


def test_text_table_with_the_bundled_text_encoder(tmp_path):
    rows = [{"id": f"d{i}", "text": f"{w} number {i}"} for i, w in
            enumerate(["apple", "river", "engine", "violin"] * 3)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "docs.index"
    result, text = invoke("build", str(path), "--out", str(out), *STEPS)
    assert result.exit_code == 0, text
    extra = manifest(out)["extra"]
    assert extra["encoder"]["type"] == "sentence-transformers"
    assert extra["training"]["recipe"] == "indexing" and extra["item_modality"] == "text"
    result, text = invoke("search", str(out), "--text", "violin number 7", "-k", "1",
                          "--rerank", "--json")
    assert result.exit_code == 0, text
    assert json.loads(result.stdout)[0]["item_id"] == "d7"
    result, text = invoke("search", str(out), "--image", __file__)
    assert result.exit_code == 2 and "text-only" in text


@pytest.mark.parametrize("kind", ["npy", "parquet"])
def test_own_embeddings_build_search_eval_and_serve(tmp_path, kind):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 12))
    vectors = (centers[np.arange(80) % 4] + 0.2 * rng.normal(size=(80, 12))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(80)]
    if kind == "npy":
        path = tmp_path / "emb.npy"
        np.save(path, vectors)
        (tmp_path / "emb.ids.txt").write_text("\n".join(ids) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "emb.parquet"
        pq.write_table(pa.table({"id": ids, "vector": vectors.tolist(),
                                 "label": [f"c{i % 4}" for i in range(80)]}), path)
    out = tmp_path / "emb.index"
    result, text = invoke("build", str(path), "--out", str(out), *STEPS)
    assert result.exit_code == 0, text
    extra = manifest(out)["extra"]
    assert extra["encoder"] == {"type": "none"} and extra["item_modality"] == "vector"
    assert extra["training"]["recipe"] == ("indexing" if kind == "npy" else "labels")
    result, text = invoke("search", str(out), "--vector", json.dumps(vectors[9].tolist()),
                          "-k", "5", "--rerank", "--json")
    assert result.exit_code == 0, text
    assert json.loads(result.stdout)[0]["item_id"] == "v9"
    np.save(tmp_path / "q.npy", vectors[10])
    result, text = invoke("search", str(out), "--vector", str(tmp_path / "q.npy"), "-k", "1",
                          "--rerank", "--json")
    assert json.loads(result.stdout)[0]["item_id"] == "v10"
    result, text = invoke("eval", str(path), "--index", str(out))
    assert result.exit_code == 0, text
    assert ("(self)" if kind == "npy" else "(labels)") in text
    result, text = invoke("add", str(out), "--id", "cli-new", "--vector",
                          json.dumps(vectors[1].tolist()))
    assert result.exit_code == 0 and "81 items" in text, text
    result, text = invoke("add", str(out), "--id", "bad", "--vector", "[1, 2]")
    assert result.exit_code == 2 and "12 finite numbers" in text
    result, text = invoke("add", str(out), "--id", "bad", "--caption", "words")
    assert result.exit_code == 2 and "give the item's vector" in text

    from fastapi.testclient import TestClient

    from genir.service.app import create_app

    with TestClient(create_app(out, writable=True)) as client:
        r = client.post("/search", data={"vector": json.dumps(vectors[3].tolist()), "k": "3",
                                         "rerank": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == "v3" and r.json()["query"]["modality"] == "vector"
        r = client.post("/search", data={"text": "hello"})
        assert r.status_code == 422 and "query it with a vector" in r.json()["detail"]
        r = client.post("/search", data={"vector": "[1, 2]"})
        assert r.status_code == 422 and "12 numbers" in r.json()["detail"]
        r = client.post("/search", data={"vector": "[1, "})
        assert r.status_code == 422 and "not JSON" in r.json()["detail"]
        new = vectors[5] + 0.01 * vectors[6]
        r = client.post("/items", data={"id": "new", "vector": json.dumps(new.tolist())})
        assert r.status_code == 201, r.text
        assert client.get("/items/new").json()["codes"] == r.json()["codes"]
        assert client.get("/health").json()["items"] == 82   # with the CLI's cli-new
        r = client.post("/items", data={"id": "x", "caption": "no vector"})
        assert r.status_code == 422 and "give the item's vector" in r.json()["detail"]


def test_clip_encoder_from_the_command_line_end_to_end(tmp_path, monkeypatch):
    """--encoder clip:PATH with a tiny random CLIP saved by save_pretrained: a captioned
    folder trains on caption pairs; search and serve reload the encoder from the manifest."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model = tmp_path / "tiny-clip"
    model.mkdir()
    write_tiny_clip(model)
    photos = tmp_path / "photos"
    for i in range(12):
        picture(COLORS[i % 3], i).save(photos / f"{i}.png") if photos.exists() else (
            photos.mkdir(), picture(COLORS[i % 3], i).save(photos / f"{i}.png"))
    (photos / "captions.jsonl").write_text("".join(
        json.dumps({"id": f"{i}.png", "caption": f"{['red', 'green', 'blue'][i % 3]} {i}"}) + "\n"
        for i in range(12)))
    out = tmp_path / "clip.index"
    result, text = invoke("build", str(photos), "--out", str(out), "--encoder", f"clip:{model}",
                          *STEPS)
    assert result.exit_code == 0, text
    extra = manifest(out)["extra"]
    assert extra["encoder"] == {"type": "clip", "name": str(model)}
    assert extra["training"]["recipe"] == "captions" and "captions for 12 of 12" in text
    result, text = invoke("search", str(out), "--text", "blue 5", "-k", "3", "--json")
    assert result.exit_code == 0, text
    assert len(json.loads(result.stdout)) == 3
    result, text = invoke("search", str(out), "--text", "blue 5", "--image",
                          str(photos / "5.png"), "-k", "2", "--json")
    assert result.exit_code == 0, text        # text + image: one query
    from fastapi.testclient import TestClient

    from genir.service.app import create_app

    with TestClient(create_app(out, writable=False)) as client:
        r = client.post("/search", data={"text": "green 4", "k": "3"})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert client.get("/stats").json()["query_modalities"] == ["image", "text"]
    result, text = invoke("eval", str(photos), "--index", str(out))
    assert result.exit_code == 0 and "(captions)" in text and "trained on" in text


def test_paper_benchmark_build_and_eval(tmp_path):
    """cub200:ROOT in the release's layout: every test image queries the others (IRGen)."""
    root = tmp_path / "CUB_200_2011"
    lines, labels = [], []
    for k in range(12):
        cls = 101 + k % 3
        rel = f"{cls:03d}.Bird{cls}/img_{k}.jpg"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        picture(COLORS[k % 3], k).save(root / "images" / rel, format="JPEG")
        lines.append(f"{k + 1} {rel}")
        labels.append(f"{k + 1} {cls}")
    lines.append("13 001.Other/img.jpg")
    labels.append("13 1")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    out = tmp_path / "cub.index"
    result, text = invoke("build", f"cub200:{root}", "--out", str(out), *STEPS)
    assert result.exit_code == 0, text
    assert manifest(out)["num_items"] == 12   # classes 101-200 only
    result, text = invoke("eval", f"cub200:{root}", "--index", str(out))
    assert result.exit_code == 0, text
    assert "protocol irgen" in text and "test classes 101-200" in text and "MAP@100" in text
    result, text = invoke("eval", f"cub200:{root}", "--index", str(out), "--split", "official")
    assert result.exit_code == 2 and "train_test_split.txt" in text


def bad_sources(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "nocol.jsonl").write_text('{"key": "a", "text": "x"}\n')
    np.save(tmp / "m.npy", np.zeros((3, 4), np.float32))
    (tmp / "m.ids.txt").write_text("a\nb\n")
    nan = np.ones((3, 4), np.float32)
    nan[1, 2] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "emb.npy", np.ones((3, 4), np.float32))
    (tmp / "empty").mkdir()
    write_photos(tmp / "photos", per_class=2)
    return [
        (["nocol.jsonl"], "no 'id' column"),
        (["m.npy"], "3 vectors but 2 ids"),
        (["nan.npy"], "row 1 (id '1') has a NaN"),
        (["empty"], "holds no image"),
        (["missing.csv"], "no such file or folder"),
        (["photos", "--encoder", "none"], "--encoder none is for embeddings"),
        (["photos", "--encoder", "sentence-transformers"], "embeds texts only"),
        (["photos", "--encoder", "word2vec"], "unknown encoder 'word2vec'"),
        (["m.npy", "--ids", "m.ids.txt", "--encoder", "clip:x"], "3 vectors but 2 ids"),
        (["emb.npy", "--encoder", "clip:x"], "build with --encoder none"),
        (["emb.npy", "--limit", "100"], "apply to the bundled tasks"),
    ]


def test_bad_sources_exit_2_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message in bad_sources(tmp_path):
        out = tmp_path / "out.index"
        result, text = invoke("build", *args, "--out", str(out), *STEPS)
        assert result.exit_code == 2, (args, text)
        assert message in text, (args, text)
        assert not out.exists() and not (tmp_path / ".out.index.work").exists(), args


def test_eval_needs_an_index_built_on_that_source(tmp_path):
    np.save(tmp_path / "a.npy", np.eye(8, dtype=np.float32))
    np.save(tmp_path / "b.npy", np.eye(8, dtype=np.float32))
    result, text = invoke("build", str(tmp_path / "a.npy"), "--out", str(tmp_path / "a.index"), *STEPS)
    assert result.exit_code == 0, text
    result, text = invoke("eval", str(tmp_path / "b.npy"), "--index", str(tmp_path / "a.index"))
    assert result.exit_code == 2 and "was built on" in text
    result, text = invoke("eval", str(tmp_path / "b.npy"))
    assert result.exit_code == 2 and "give the index" in text


def test_captioned_folder_with_the_default_encoder_aligns_the_bundled_towers(tmp_path):
    """Images with captions and no labels: the default encoder aligns EfficientNet-Lite0 and
    MiniLM on the (image, caption) pairs, saves the heads in the index, and trains on
    caption pairs; text search reloads the heads."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["red", "green", "blue"]
    for i in range(12):
        picture(COLORS[i % 3], i).save(photos / f"{i}.png")
        (photos / f"{i}.txt").write_text(f"a {names[i % 3]} square number {i}")
    out = tmp_path / "aligned.index"
    result, text = invoke("build", str(photos), "--out", str(out), *STEPS)
    assert result.exit_code == 0, text
    extra = manifest(out)["extra"]
    assert extra["encoder"] == {"type": "aligned", "path": "encoder", "image_size": 224}
    assert extra["training"]["recipe"] == "captions" and (out / "encoder" / "heads.safetensors").exists()
    assert "aligning the image and text towers on 12" in text
    result, text = invoke("search", str(out), "--text", "a blue square number 5", "-k", "3",
                          "--json")
    assert result.exit_code == 0, text
    assert len(json.loads(result.stdout)) == 3


def write_mbeir_mixed(root: Path) -> Path:
    """An M-BEIR task in the release's layout: a mixed pool (images, texts, image+text)."""
    pool, queries = [], []
    for i in range(9):
        img = f"mbeir_images/toy/{i}.png"
        (root / img).parent.mkdir(parents=True, exist_ok=True)
        picture(COLORS[i % 3], i).save(root / img)
        modality = ["image", "text", "image,text"][i % 3]
        pool.append({"did": f"9:{i}", "txt": None if modality == "image" else f"thing {i}",
                     "img_path": None if modality == "text" else img, "modality": modality,
                     "src_content": None})
    for q in range(4):
        queries.append({"qid": f"9:10{q}", "query_txt": f"thing {q}", "query_img_path": None,
                        "query_modality": "text", "query_src_content": None,
                        "pos_cand_list": [f"9:{q}", "6:999"], "neg_cand_list": [], "task_id": 3})
    for rel, rows in (("query/test/mbeir_toy_task3_test.jsonl", queries),
                      ("cand_pool/local/mbeir_toy_task3_cand_pool.jsonl", pool)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "query/test/mbeir_toy_task3_test.jsonl"


def test_mbeir_mixed_pool_with_clip_build_and_eval(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tmp_path / "tiny-clip"
    model.mkdir()
    write_tiny_clip(model)
    query_file = write_mbeir_mixed(tmp_path / "M-BEIR")
    out = tmp_path / "mbeir.index"
    result, text = invoke("build", f"mbeir:{query_file}", "--out", str(out), "--encoder",
                          f"clip:{model}", *STEPS)
    assert result.exit_code == 0, text
    extra = manifest(out)["extra"]
    assert extra["item_modality"] == "mixed" and extra["training"]["recipe"] == "indexing"
    result, text = invoke("eval", f"mbeir:{query_file}", "--index", str(out))
    assert result.exit_code == 0, text
    assert "protocol recall" in text and "local pool" in text and "R@10" in text
    assert "4 positives not in the pool searched were dropped" in text


def test_text_to_image_benchmark_needs_a_shared_space(tmp_path):
    """Karpathy captions are the evaluation queries: the bundled towers have nothing to align
    on, so the default encoder is refused with what to use instead."""
    data = {"dataset": "flickr30k", "images": [
        {"filename": f"{i}.jpg", "imgid": i, "split": "test",
         "sentences": [{"raw": f"a photo {i}"}, {"raw": f"picture {i}"}]} for i in range(4)]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    (tmp_path / "flickr30k-images").mkdir()
    for i in range(4):
        picture(COLORS[i % 3], i).save(tmp_path / "flickr30k-images" / f"{i}.jpg", format="JPEG")
    result, text = invoke("build", f"flickr30k:{tmp_path}", "--out", str(tmp_path / "f.index"),
                          *STEPS)
    assert result.exit_code == 2 and "--encoder clip:PATH_OR_NAME" in text
    assert not (tmp_path / "f.index").exists()


def test_benchmark_queries_are_embedded_in_batches_as_one_by_one():
    """Mixed-modality queries (M-BEIR): batched by modality, the same vectors as embedding
    each query alone (image_text: the normalised mean of its two embeddings)."""
    from types import SimpleNamespace

    from genir.pipeline import _embed_queries

    rng = np.random.default_rng(0)
    table = {f"x{i}": rng.normal(size=4).astype(np.float32) for i in range(6)}

    class Fake:
        calls = 0

        def encode_images(self, images):
            Fake.calls += 1
            return np.stack([table[i] for i in images])

        def encode_texts(self, texts):
            Fake.calls += 1
            return np.stack([table[t] for t in texts])

    mods = ["image", "text", "image_text", "text", "image", "image_text"]
    queries = SimpleNamespace(images=["x0", None, "x2", None, "x4", "x5"],
                              texts=["", "x1", "x3", "x3", "", "x0"], modality="image_text")
    picks = np.array([0, 1, 2, 3, 4, 5])
    got = _embed_queries(Fake(), queries, picks, mods)
    assert Fake.calls == 2
    for j, m in enumerate(mods):
        parts = ([table[queries.images[j]]] if m != "text" else []) + (
            [table[queries.texts[j]]] if m != "image" else [])
        want = np.mean(parts, axis=0)
        np.testing.assert_allclose(got[j], want / np.linalg.norm(want), rtol=1e-6)
