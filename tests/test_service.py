"""The HTTP service through FastAPI's test client: every endpoint, every bad input."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genir.index import GenerativeIndex
from genir.service import app as service
from genir.service.app import create_app
from genir.store import IndexLockedError, ItemStore
from service_fixtures import make_service_index, pattern_image, png_bytes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return make_service_index(tmp_path_factory.mktemp("svc") / "idx")


@pytest.fixture
def folder(built, tmp_path):
    shutil.copytree(built, tmp_path / "idx")
    return tmp_path / "idx"


@pytest.fixture
def client(folder):
    with TestClient(create_app(folder), raise_server_exceptions=False) as c:
        yield c


def image_file(kind: int = 0, seed: int = 1000, name: str = "q.png", ctype: str = "image/png"):
    return {"image": (name, png_bytes(pattern_image(kind, seed)), ctype)}


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    data = png_bytes(Image.new("L", (4, 4)))
    ihdr = data[12:29]                          # b"IHDR" + 13 bytes of fields
    fields = struct.pack(">II", width, height) + ihdr[12:]
    chunk = b"IHDR" + fields
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def assert_error(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else str(detail)
    for w in words:
        assert w in text, text


# ---------------------------------------------------------------- read endpoints
def test_health_stats_page_and_docs(client):
    assert client.get("/health").json() == {"status": "ok", "items": 90}
    stats = client.get("/stats").json()
    assert stats["items"] == 90 and stats["ids"] >= 1 and stats["queries_served"] == 0
    assert stats["latency_ms"]["p50"] is None and stats["rebuild_advised"] is False
    assert "retrieve a similar image" in stats["instructions"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/search", "/items", "/items/{item_id}", "/items/{item_id}/thumbnail",
                 "/health", "/stats"):
        assert path in paths, path
    assert client.get("/docs").status_code == 200


def test_search_by_image_finds_its_class(client):
    r = client.post("/search", files=image_file(kind=1), data={"k": "10"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 10 and body["query"]["modality"] == "image"
    assert [h["rank"] for h in body["results"]] == list(range(1, 11))
    labels = [h["metadata"]["label"] for h in body["results"]]
    assert labels.count("columns") >= 8, labels
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    stats = client.get("/stats").json()
    assert stats["queries_served"] == 1 and stats["latency_ms"]["p50"] > 0


def test_search_by_text_both_and_with_instruction(client):
    r = client.post("/search", data={"text": "stripes", "k": "3", "rerank": "true"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert r.json()["query"] == {"modality": "text", "instruction": None, "k": 3, "rerank": True}
    r = client.post("/search", files=image_file(), data={"text": "stripes", "k": "4"})
    assert r.status_code == 200 and r.json()["query"]["modality"] == "image_text"
    untyped = {"image": ("noext", png_bytes(pattern_image(0, 7)), "application/octet-stream")}
    assert client.post("/search", files=untyped).status_code == 200
    r = client.post("/search", files=image_file(),
                    data={"instruction": "Retrieve a similar image.", "k": "2"})
    assert r.status_code == 200
    assert r.json()["query"]["instruction"] == "retrieve a similar image"


def test_item_and_thumbnail(client):
    item = client.get("/items/item-004").json()
    assert item["id"] == "item-004" and item["caption"] == "columns number 4"
    assert len(item["codes"]) == 2 and item["thumbnail"] == "/items/item-004/thumbnail"
    thumb = client.get(item["thumbnail"])
    assert thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    again = client.get(item["thumbnail"], headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert_error(client.get("/items/nope"), 404, "'nope'")
    assert_error(client.get("/items/nope/thumbnail"), 404, "'nope'")


# ---------------------------------------------------------------- writes
def test_add_search_delete_are_durable(folder):
    with TestClient(create_app(folder), raise_server_exceptions=False) as c:
        added = c.post("/items", files=image_file(kind=2, seed=5000),
                       data={"caption": "my checks", "id": "new/one"})
        assert added.status_code == 201, added.text
        assert added.json()["durable"] is True and added.json()["caption"] == "my checks"
        # the same image finds the new item (rerank puts the exact match first)
        r = c.post("/search", files=image_file(kind=2, seed=5000),
                   data={"k": "20", "rerank": "true"})
        assert r.json()["results"][0]["id"] == "new/one"
        assert c.get("/items/new/one/thumbnail").status_code == 200
        assert c.get("/stats").json()["added_since_build"] == 1
        generated = c.post("/items", files=image_file(kind=0, seed=5001)).json()["id"]
        assert len(generated) == 32
        assert c.delete("/items/item-000").json() == {"id": "item-000", "deleted": True}
        assert_error(c.get("/items/item-000"), 404)
        assert_error(c.delete("/items/item-000"), 404, "item-000")
    index = GenerativeIndex.load(folder)         # the service has closed: what is on disk
    assert "new/one" in index.item_ids and generated in index.item_ids
    assert "item-000" not in index.item_ids and len(index) == 91
    store = ItemStore(folder)
    assert store.counts() == {"built": 89, "added": 2, "tombstones": 1}
    store.close()


def test_second_writer_refused_and_read_only_mode(folder):
    with TestClient(create_app(folder)):
        with pytest.raises(IndexLockedError):
            create_app(folder)
        with TestClient(create_app(folder, writable=False), raise_server_exceptions=False) as ro:
            assert ro.post("/search", files=image_file()).status_code == 200
            assert_error(ro.post("/items", files=image_file()), 403, "read-only")
            assert_error(ro.delete("/items/item-001"), 403, "read-only")


# ---------------------------------------------------------------- bad input
BAD_SEARCHES = [
    ({"data": {"k": "5"}}, 422, "text query, an image"),
    ({"data": {"text": "   "}}, 422, "text is empty"),
    ({"data": {"text": "x" * 2001}}, 422, "2001 characters"),
    ({"data": {"text": "a", "k": "0"}}, 422, "k must be between 1 and 1000"),
    ({"data": {"text": "a", "k": "1001"}}, 422, "k must be between 1 and 1000"),
    ({"data": {"text": "a", "k": "ten"}}, 422, "k"),
    ({"data": {"text": "a", "instruction": "find me stuff"}}, 422, "unknown instruction"),
    ({"data": {"text": "a", "instruction": "retrieve the caption of this image"}}, 422,
     "asks for text items"),
    ({"data": {"text": "a", "instruction": "retrieve a similar image"}}, 422,
     "expects a image query"),
    ({"files": {"image": ("q.txt", b"hello", "text/plain")}}, 415, "q.txt", "not an image"),
    ({"files": {"image": ("q.png", b"", "image/png")}}, 422, "empty"),
    ({"files": {"image": ("q.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")}}, 422,
     "cannot decode"),
    ({"files": {"image": ("q.bin", b"not an image at all", "application/octet-stream")}}, 422,
     "cannot decode"),
    ({"files": {"image": ("q.png", png_bytes(pattern_image(0, 1))[:120], "image/png")}}, 422,
     "cannot decode"),
    ({"files": {"image": ("bomb.png", huge_png_header(20000, 20000), "image/png")}}, 413,
     "decompression bomb"),
]


@pytest.mark.parametrize("kwargs,status,words", [(b[0], b[1], b[2:]) for b in BAD_SEARCHES])
def test_bad_search_input_is_a_named_4xx(client, kwargs, status, words):
    assert_error(client.post("/search", **kwargs), status, *words)


def test_oversized_upload_is_413(client, monkeypatch):
    monkeypatch.setattr(service, "MAX_UPLOAD_BYTES", 100)
    assert_error(client.post("/search", files=image_file()), 413, "larger than")


def test_text_query_on_image_only_encoder_is_refused(folder):
    class ImageOnly:
        def __init__(self):
            from genir.encoders.simple import PixelHashEncoder

            self.inner = PixelHashEncoder(dim=32)

        def encode_images(self, images):
            return self.inner.encode_images(images)

    with TestClient(create_app(folder, encoder=ImageOnly()), raise_server_exceptions=False) as c:
        assert_error(c.post("/search", data={"text": "stripes"}), 422, "image-only", "query it with an image")
        assert c.post("/search", files=image_file()).status_code == 200


BAD_ADDS = [
    ({"data": {"caption": "no image"}}, 422, "holds image items: give the item's image"),
    ({"files": {"image": ("x.txt", b"hello", "text/plain")}}, 415, "not an image"),
    ({"files": {"image": ("x.png", b"\x89PNG broken", "image/png")}}, 422, "cannot decode"),
    ({"files": {"image": ("bomb.png", huge_png_header(30000, 30000), "image/png")}}, 413, "bomb"),
    ({"files": image_file(), "data": {"id": "item-001"}}, 409, "already in the index"),
    ({"files": image_file(), "data": {"id": "bad id with spaces"}}, 422, "is not valid"),
    ({"files": image_file(), "data": {"id": "x" * 201}}, 422, "is not valid"),
    ({"files": image_file(), "data": {"id": "a/thumbnail"}}, 422, "is not valid"),
    ({"files": image_file(), "data": {"caption": "  "}}, 422, "caption is empty"),
    ({"files": image_file(), "data": {"caption": "c" * 2001}}, 422, "2001 characters"),
]


@pytest.mark.parametrize("kwargs,status,words", [(b[0], b[1], b[2:]) for b in BAD_ADDS])
def test_bad_add_is_a_named_4xx_and_changes_nothing(folder, kwargs, status, words):
    with TestClient(create_app(folder), raise_server_exceptions=False) as c:
        assert_error(c.post("/items", **kwargs), status, *words)
        assert c.get("/health").json()["items"] == 90
    store = ItemStore(folder)
    assert store.counts() == {"built": 90, "added": 0, "tombstones": 0}
    store.close()
    assert len(GenerativeIndex.load(folder)) == 90


def test_cli_serve_refuses_missing_and_locked_indexes(folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from genir.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no manifest.json" in r.output
    with TestClient(create_app(folder)):
        r = runner.invoke(app, ["serve", str(folder)])
        assert r.exit_code == 2 and "open for writing by another process" in r.output
    served = {}
    monkeypatch.setattr("uvicorn.run", lambda application, host, port, log_level:
                        served.update(host=host, port=port, title=application.title))
    r = runner.invoke(app, ["serve", str(folder), "--port", "8123", "--read-only"])
    assert r.exit_code == 0, r.output
    assert served == {"host": "127.0.0.1", "port": 8123, "title": "genir"}


# ---------------------------------------------------------------- a universal index
@pytest.fixture(scope="module")
def universal_built(tmp_path_factory):
    from service_fixtures import make_universal_service_index

    return make_universal_service_index(tmp_path_factory.mktemp("usvc") / "idx")


def test_universal_index_follows_the_instruction(universal_built, tmp_path):
    folder = tmp_path / "u"
    shutil.copytree(universal_built, folder)
    with TestClient(create_app(folder), raise_server_exceptions=False) as c:
        stats = c.get("/stats").json()
        assert stats["item_modality"] == "mixed" and len(stats["instructions"]) == 6
        # no instruction: refused, with the ones that fit a text query
        assert_error(c.post("/search", data={"text": "stripes pattern"}), 422,
                     "needs an instruction", "retrieve an image that matches the caption")
        wanted = {"retrieve an image that matches the caption": "image",
                  "retrieve a text that answers the query": "text",
                  "retrieve an image and its caption that match the text": "pair"}
        for ins, prefix in wanted.items():
            r = c.post("/search", data={"text": "checks pattern", "instruction": ins, "k": "5"})
            assert r.status_code == 200, r.text
            got = [hit["id"] for hit in r.json()["results"]]
            assert got and all(i.startswith(prefix + "-") for i in got), (ins, got)
        r = c.post("/search", files=image_file(2),
                   data={"instruction": "retrieve the caption of this image", "k": "3"})
        assert r.status_code == 200 and r.json()["results"][0]["id"].startswith("text-")
        assert_error(c.post("/search", files=image_file(),
                            data={"instruction": "retrieve the caption of this image",
                                  "text": "x"}), 422, "expects a image query")
        # an added item's first code is the modality it was given
        r = c.post("/items", files=image_file(1, 99), data={"caption": "columns pattern",
                                                            "id": "new-pair"})
        assert r.status_code == 201 and r.json()["codes"][0] == 2
        r = c.post("/items", data={"caption": "columns pattern", "id": "new-text"})
        assert r.status_code == 201 and r.json()["codes"][0] == 1
    assert GenerativeIndex.load(folder).item_meta[-1]["modality"] == "text"
