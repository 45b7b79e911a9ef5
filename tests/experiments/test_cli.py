"""The `genir` CLI on the bundled tasks (the experiments plugin): build, search, eval, demo,
the universal study; bad arguments exit 2.

Builds, saves, searches and evaluates through the same commands a user types, with a few
training steps: these tests check the plumbing and the error messages, not quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fixtures import class_images, write_fashion_mnist, write_openclipart
from genir.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"fmnist": write_fashion_mnist(root / "fmnist"),
            "openclipart": write_openclipart(root / "openclipart"),
            "cache": root / "cache"}


@pytest.fixture(autouse=True)
def _data_env(data_dirs, monkeypatch):
    monkeypatch.setenv("GENIR_FASHION_MNIST_DIR", str(data_dirs["fmnist"]))
    monkeypatch.setenv("GENIR_OPENCLIPART_DIR", str(data_dirs["openclipart"]))


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture(scope="module")
def fmnist_index(data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "fmnist"
    mp = pytest.MonkeyPatch()
    mp.setenv("GENIR_FASHION_MNIST_DIR", str(data_dirs["fmnist"]))
    try:
        result, text = invoke("build", "fashion-mnist", "--out", str(out), "--steps", "30",
                              "--cache-dir", str(data_dirs["cache"]), "--no-progress")
    finally:
        mp.undo()
    assert result.exit_code == 0, text
    return out


def test_build_writes_a_loadable_index(fmnist_index):
    manifest = json.loads((fmnist_index / "manifest.json").read_text())
    assert manifest["num_items"] == 120
    assert manifest["extra"]["encoder"] == {"type": "efficientnet-lite0-tuned", "image_size": 64,
                                            "path": "encoder"}
    spec = json.loads((fmnist_index / "encoder" / "encoder.json").read_text())
    assert spec["type"] == "efficientnet-lite0-tuned" and spec["steps_done"] == 2  # 3 passes of 120
    assert (fmnist_index / "encoder" / "tower-top.safetensors").exists()


def test_frozen_tower_build_and_a_saved_index_keeps_its_tower(tmp_path, data_dirs):
    out = tmp_path / "frozen"
    result, text = invoke("build", "fashion-mnist", "--out", str(out), "--steps", "5",
                          "--frozen-tower", "--cache-dir", str(data_dirs["cache"]), "--no-progress")
    assert result.exit_code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["encoder"] == {"type": "efficientnet-lite0", "image_size": 64}
    assert not (out / "encoder").exists()
    result, text = invoke("eval", "fashion-mnist", "--index", str(out), "--tune-tower",
                          "--num-queries", "5", "--no-progress")
    assert result.exit_code == 2 and "keeps the tower it was built with" in text


def test_search_by_image(fmnist_index, tmp_path):
    path = tmp_path / "query.png"
    Image.fromarray(class_images(np.array([3]))[0]).save(path)
    result, text = invoke("search", str(fmnist_index), "--image", str(path), "-k", "5", "--json")
    assert result.exit_code == 0, text
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["item_id"].startswith("fmnist-train-") for h in hits)


@pytest.mark.parametrize("args,message", [
    (["--text", "a shoe"], "image-only"),
    ([], "give a text query, an image, both, or a vector"),
    (["--text", "x", "--vector", "[1, 2]"], "vector alone"),
    (["--vector", "[1, 2]"], "numbers, got 2"),
    (["--vector", "[1, 'a']"], "not a JSON array"),
    (["--image", "missing.png"], "is not a file"),
    (["--text", "   "], "empty"),
])
def test_search_bad_arguments(fmnist_index, args, message):
    result, text = invoke("search", str(fmnist_index), *args)
    assert result.exit_code == 2 and message in text


def test_search_missing_index(tmp_path):
    result, text = invoke("search", str(tmp_path), "--image", __file__)
    assert result.exit_code == 2 and "manifest" in text


def test_eval_saved_index_writes_json(fmnist_index, data_dirs, tmp_path):
    out = tmp_path / "res.json"
    result, text = invoke("eval", "fashion-mnist", "--index", str(fmnist_index), "--json", str(out),
                          "--num-queries", "20", "--cache-dir", str(data_dirs["cache"]),
                          "--no-progress")
    assert result.exit_code == 0, text
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"genir", "genir+rerank", "flat knn"}
    assert set(rows["genir"]) >= {"P@1", "P@10", "P@30", "R@10", "MAP@100", "MRR"}
    assert "flat knn" in result.output


def test_unknown_task_lists_valid_ones():
    result, text = invoke("eval", "mnist")
    assert result.exit_code == 2 and "fashion-mnist, openclipart" in text


def test_demo_runs_both_tasks_and_text_search(data_dirs, tmp_path):
    out = tmp_path / "demo"
    result, text = invoke("demo", "--out", str(out), "--steps", "20", "--num-queries", "20",
                          "--cache-dir", str(data_dirs["cache"]), "--no-progress")
    assert result.exit_code == 0, text
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["task"] for r in results] == ["fashion-mnist", "openclipart"]
    assert set(results[1]["rows"]["genir"]) >= {"R@1", "R@5", "R@10"}
    assert "openclipart: 6 queries, 30 items" in result.output
    # the saved openclipart index answers text queries with its own aligned encoder
    result, text = invoke("search", str(out / "openclipart" / "index"), "--text", "red square",
                          "-k", "3", "--json")
    assert result.exit_code == 0, text
    assert all(h["item_id"].startswith("openclipart/") for h in json.loads(result.stdout))
    # and evaluates with its own heads on the same held-out captions as the demo
    result, text = invoke("eval", "openclipart", "--index", str(out / "openclipart" / "index"),
                          "--num-queries", "20", "--cache-dir", str(data_dirs["cache"]),
                          "--no-progress", "--json", str(tmp_path / "oc.json"))
    assert result.exit_code == 0, text
    again = json.loads((tmp_path / "oc.json").read_text())["rows"]
    for method in ("genir", "flat knn"):
        for metric in ("R@1", "R@5", "R@10", "MRR"):
            assert again[method][metric] == results[1]["rows"][method][metric]
    # an index of another task is refused by name
    result, text = invoke("eval", "fashion-mnist", "--index", str(out / "openclipart" / "index"))
    assert result.exit_code == 2 and "built for task 'openclipart'" in text


# -- universal tasks: genir build universal / genir eval --task -----------------------------------

@pytest.fixture(scope="module")
def universal_dir(tmp_path_factory):
    from test_universal_data import BUILD, write_clipart, write_wordnet

    from genir_experiments.universal_data import build_universal_tasks

    base = tmp_path_factory.mktemp("universal")
    out = base / "tasks"
    build_universal_tasks(out, seed=0, **BUILD, openclipart_root=write_clipart(base / "clip"),
                          fashion_mnist_root=write_fashion_mnist(base / "fmnist"),
                          wordnet_root=write_wordnet(base / "wordnet"))
    return out


def test_eval_universal_task_builds_and_scores_both_pools(universal_dir, data_dirs, tmp_path):
    out = tmp_path / "r.json"
    result, text = invoke("eval", "--task", "text_to_image", "--data", str(universal_dir),
                          "--quick", "--steps", "40", "--json", str(out), "--no-progress",
                          "--cache-dir", str(data_dirs["cache"]))
    assert result.exit_code == 0, text
    got = json.loads(out.read_text())
    assert list(got) == ["text_to_image"]
    pools = got["text_to_image"]["pools"]
    assert set(pools) == {"task", "global"}
    assert set(pools["global"]["methods"]) == {"genir", "genir+rerank", "flat knn"}
    assert "| text_to_image | global (" in text and "modality@1" in text


@pytest.mark.parametrize("args,message", [
    (("eval", "fashion-mnist", "--task", "text_to_image"), "not both"),
    (("eval",), "name a source or bundled task"),
    (("eval", "--task", "nope"), "unknown universal task 'nope'"),
])
def test_eval_universal_bad_arguments(args, message):
    result, text = invoke(*args)
    assert result.exit_code == 2 and message in text


def test_build_universal_then_eval_the_saved_index(universal_dir, data_dirs, tmp_path):
    common = ("--data", str(universal_dir), "--no-progress", "--cache-dir", str(data_dirs["cache"]))
    result, text = invoke("build", "universal", "--out", str(tmp_path / "u"), "--quick",
                          "--steps", "40", *common)
    assert result.exit_code == 0, text
    assert (tmp_path / "u" / "encoder").is_dir()
    result, text = invoke("eval", "--task", "all", "--index", str(tmp_path / "u"), *common)
    assert result.exit_code == 0, text
    assert "| image_to_image | task (" in text and "| text_to_text | global (" in text
    # search it: a universal index needs an instruction that fits the query
    ins = "retrieve an image that matches the caption"
    result, text = invoke("search", str(tmp_path / "u"), "--text", "red square", "-k", "3",
                          "--instruction", ins, "--json")
    assert result.exit_code == 0, text
    assert len(json.loads(result.stdout)) == 3
    result, text = invoke("search", str(tmp_path / "u"), "--text", "red square")
    assert result.exit_code == 2 and "needs an instruction" in text
    result, text = invoke("search", str(tmp_path / "u"), "--text", "red square",
                          "--instruction", "retrieve the caption of this image")
    assert result.exit_code == 2 and "expects a image query" in text
    # a bundled-task index is refused for universal evaluation
    result, text = invoke("build", "fashion-mnist", "--out", str(tmp_path / "f"), "--steps", "5",
                          "--limit", "60", "--no-progress")
    result, text = invoke("eval", "--task", "all", "--index", str(tmp_path / "f"), *common)
    assert result.exit_code == 2 and "not a universal index" in text
