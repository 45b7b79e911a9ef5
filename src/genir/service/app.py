"""The genir HTTP service: search, browse, add and remove items of one saved index.

    genir serve INDEX_DIR --port 8000        # docs at /docs, the web page at /

`create_app(index_dir)` opens the index under its writer lock (adds and removes are
committed to the item store before a request returns) and the query encoder its manifest
names. Searches and writes take one lock, so a search never sees half an add; query and
item embedding run outside it. Every bad input gets a 4xx whose `detail` names the
problem; nothing stored changes on a refused request.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import uuid
import warnings
from collections import deque
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from genir.index import MAX_K, GenerativeIndex
from genir.instructions import INSTRUCTIONS
from genir.query import QueryEncoder, QueryError, assemble_item, assemble_query

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000      # larger images are refused as decompression bombs
MAX_TEXT_CHARS = 2000
MAX_ID_CHARS = 200
THUMB_SIDE = 160
_ID_RE = re.compile(r"^[A-Za-z0-9._:/@+-]+$")
# items added live, as a share of all items, past which a rebuild is advised: at half the
# gallery added untrained, Fashion-MNIST P@10 was 0.811 against 0.858 for a full rebuild
# (genir ablate --study fresh, docs/service.md)
REBUILD_ADVISED_FRACTION = 0.5


class ServiceState:
    def __init__(self, index_dir: str | Path, *, encoder: Any = None,
                 writable: bool = True) -> None:
        self.index_dir = Path(index_dir)
        self.index = GenerativeIndex.open(self.index_dir, writable=writable)
        try:
            if encoder is None:
                self.encoder = QueryEncoder.for_index(self.index_dir, self.index)
            elif isinstance(encoder, QueryEncoder):
                self.encoder = encoder
            else:
                self.encoder = QueryEncoder(self.index.extra.get("encoder", {}), encoder)
        except BaseException:
            self.index.close()
            raise
        # a universal index holds every modality; its queries must say which one they want
        self.universal = self.encoder.needs_instruction
        self.item_modality = "mixed" if self.universal else self.index.extra.get("item_modality",
                                                                                  "image")
        self.lock = threading.Lock()
        self.latencies_ms: deque[float] = deque(maxlen=10_000)
        self.queries_served = 0
        self.started = time.time()

    def close(self) -> None:
        self.index.close()


def create_app(index_dir: str | Path, *, encoder: Any = None, writable: bool = True) -> FastAPI:
    """The FastAPI app serving the index in `index_dir`.

    encoder: an object with encode_images / encode_texts to use instead of the one the
    manifest names (tests pass a small one). writable=False serves read-only: no writer
    lock, POST/DELETE /items answer 403.
    """
    state = ServiceState(index_dir, encoder=encoder, writable=writable)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    app = FastAPI(title="genir", version=_version(), lifespan=lifespan,
                  description="Generative retrieval: the decoder generates the semantic IDs of "
                              "the items that match a query. Search with text, an image or "
                              "both; add and remove items live, without retraining.")
    app.state.genir = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness and item count")
    def health() -> dict[str, Any]:
        return {"status": "ok", "items": len(state.index)}

    @app.get("/stats", summary="Items, IDs, collisions, queries served, latency percentiles")
    def stats() -> dict[str, Any]:
        with state.lock:
            table = state.index.table.stats()
            counts = state.index.store.counts() if state.index.store else None
            lat = np.asarray(state.latencies_ms, dtype=np.float64)
        added = counts["added"] if counts else 0
        fraction = added / max(len(state.index), 1)
        return {
            "items": table["num_items"], "ids": table["num_ids"],
            "colliding_ids": table["colliding_ids"],
            "items_in_collisions": table["items_in_collisions"],
            "max_items_per_id": table["max_items_per_id"],
            "added_since_build": added,
            "removed_since_build": counts["tombstones"] if counts else 0,
            "added_fraction": fraction,
            "rebuild_advised": fraction > REBUILD_ADVISED_FRACTION,
            "queries_served": state.queries_served,
            "latency_ms": {f"p{p}": float(np.percentile(lat, p)) if len(lat) else None
                           for p in (50, 95, 99)},
            "item_modality": state.item_modality,
            "query_modalities": list(state.encoder.modalities),
            "instructions": [i.text for i in INSTRUCTIONS
                             if state.universal or i.target_modality == state.item_modality],
            "max_k": MAX_K, "writable": state.index.store is not None,
            "task": state.index.extra.get("task"),
            "uptime_s": time.time() - state.started,
        }

    @app.post("/search", summary="Search by text, an uploaded image, or both")
    def search(
        text: Annotated[str | None, Form(description="a text query")] = None,
        image: Annotated[UploadFile | None, File(description="an image query")] = None,
        instruction: Annotated[str | None, Form(description="what to retrieve, e.g. "
                                                "'retrieve an image that matches the caption'")]
        = None,
        k: Annotated[int, Form(description=f"results, 1..{MAX_K}")] = 10,
        rerank: Annotated[bool, Form(description="order candidates by embedding similarity")]
        = False,
        vector: Annotated[str | None, Form(description="a query vector as a JSON array of "
                                           "numbers, in the items' space (alone: no text or "
                                           "image); the way to query your own embeddings")]
        = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K}, got {k}")
        text = _check_text(text, "text") if text is not None else None
        pil = _read_image(image) if _has_file(image) else None
        numbers = _parse_vector(vector) if vector is not None else None
        try:
            query = assemble_query(state.encoder, text=text, image=pil, vector=numbers,
                                   instruction=instruction, item_modality=state.item_modality,
                                   dim=state.index.item_emb.shape[1])
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from None
        decoder_q, q, modality = query.decoder_input, query.emb, query.modality
        ins = query
        with state.lock:
            scores, rows = state.index.search(decoder_q, k, rerank=rerank, query_emb=q)
            results = [_item_json(state.index, int(r), rank=n + 1, score=float(s))
                       for n, (s, r) in enumerate(zip(scores[0], rows[0], strict=True)) if r >= 0]
            took = (time.perf_counter() - t0) * 1000
            state.latencies_ms.append(took)
            state.queries_served += 1
        return {"results": results, "took_ms": took,
                "query": {"modality": modality, "instruction": ins.instruction,
                          "k": k, "rerank": rerank}}

    @app.get("/items/{item_id:path}/thumbnail", summary="An item's thumbnail (PNG)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def thumbnail(item_id: str, request: Request) -> Response:
        with state.lock:
            row = _row(state.index, item_id)
            meta = state.index.item_meta[row]
            png = state.index.store.thumbnail(item_id) if state.index.store else None
        if png is None and meta.get("image_path"):
            png = _thumbnail_from_path(meta["image_path"])
        if png is None:
            raise HTTPException(404, f"item {item_id!r} has no image")
        # an id removed and added again gets a new image: revalidate by content
        etag = '"' + hashlib.sha256(png).hexdigest()[:32] + '"'
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/items/{item_id:path}", summary="An item's codes and metadata")
    def get_item(item_id: str) -> dict[str, Any]:
        with state.lock:
            return _item_json(state.index, _row(state.index, item_id))

    @app.post("/items", status_code=201,
              summary="Add an item: embed, tokenize with the fitted tokenizer, insert; "
                      "no retraining. Durable when the response arrives.")
    def add_item(
        image: Annotated[UploadFile | None, File(description="the item's image")] = None,
        caption: Annotated[str | None, Form(description="the item's caption")] = None,
        item_id: Annotated[str | None, Form(alias="id", description="a new unique id; "
                                            "generated when absent")] = None,
        vector: Annotated[str | None, Form(description="the item's embedding as a JSON array "
                                           "(an index of your own embeddings)")] = None,
    ) -> dict[str, Any]:
        if state.index.store is None:
            raise HTTPException(403, "this service is read-only")
        caption = _check_text(caption, "caption") if caption is not None else None
        item_id = _check_id(item_id) if item_id is not None else uuid.uuid4().hex
        pil = _read_image(image) if _has_file(image) else None
        try:
            item = assemble_item(state.encoder, image=pil, caption=caption,
                                 vector=_parse_vector(vector) if vector is not None else None,
                                 item_modality=state.item_modality,
                                 dim=state.index.item_emb.shape[1])
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from None
        thumbs = {item_id: _png_thumbnail(pil)} if pil is not None else None
        with state.lock:
            if item_id in state.index:
                raise HTTPException(409, f"item id {item_id!r} is already in the index")
            state.index.add(item.emb, [item_id], item_meta=[item.meta], thumbnails=thumbs)
            return {**_item_json(state.index, state.index.row_of(item_id)), "durable": True}

    @app.delete("/items/{item_id:path}", summary="Remove an item (tombstoned in the store)")
    def delete_item(item_id: str) -> dict[str, Any]:
        if state.index.store is None:
            raise HTTPException(403, "this service is read-only")
        with state.lock:
            _row(state.index, item_id)
            if len(state.index) == 1:
                raise HTTPException(409, "cannot remove the last item of an index")
            state.index.remove([item_id])
        return {"id": item_id, "deleted": True}

    return app


# ---------------------------------------------------------------- input checks
def _has_file(upload: UploadFile | None) -> bool:
    return upload is not None and bool(upload.filename or upload.size)


def _check_text(text: str, field: str) -> str:
    if not text.strip():
        raise HTTPException(422, f"{field} is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise HTTPException(422, f"{field} is {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return text.strip()


def _check_id(item_id: str) -> str:
    if not item_id or len(item_id) > MAX_ID_CHARS or not _ID_RE.match(item_id) \
            or item_id.endswith("/thumbnail") or "//" in item_id:
        raise HTTPException(422, f"item id {item_id[:MAX_ID_CHARS]!r} is not valid: use 1 to "
                                 f"{MAX_ID_CHARS} of A-Z a-z 0-9 . _ : / @ + -")
    return item_id


def _parse_vector(vector: str) -> list[float]:
    try:
        numbers = json.loads(vector)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"vector is not JSON: {exc.msg}") from None
    if not isinstance(numbers, list) or not numbers or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
        raise HTTPException(422, "vector must be a JSON array of numbers")
    return [float(x) for x in numbers]


def _read_image(upload: UploadFile | None) -> Image.Image:
    assert upload is not None
    name = upload.filename or "upload"
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    # a file without a known extension comes as octet-stream: let Pillow decide
    if not ctype.startswith("image/") and ctype not in ("", "application/octet-stream"):
        raise HTTPException(415, f"{name}: content type {ctype or 'none'!r} is not an image; "
                                 "upload a PNG, JPEG, GIF, BMP or WebP file")
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"{name}: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
    if not data:
        raise HTTPException(422, f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise HTTPException(413, f"{name}: {w}x{h} pixels is over the "
                                         f"{MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb?)")
            im.load()
    except HTTPException:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HTTPException(413, f"{name}: refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... per format
        raise HTTPException(422, f"{name}: cannot decode the image ({exc})") from None
    return im


# ---------------------------------------------------------------- responses
def _row(index: GenerativeIndex, item_id: str) -> int:
    try:
        return index.row_of(item_id)
    except KeyError:
        raise HTTPException(404, f"no item with id {item_id!r}") from None


def _item_json(index: GenerativeIndex, row: int, **extra: Any) -> dict[str, Any]:
    item_id = index.item_ids[row]
    meta = index.item_meta[row]
    return {**extra, "id": item_id, "codes": index.codes[row].tolist(),
            "caption": meta.get("caption", ""), "metadata": meta,
            "thumbnail": f"/items/{quote(item_id)}/thumbnail"}


def _png_thumbnail(im: Image.Image) -> bytes:
    im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=4096)
def _thumbnail_from_path(path: str) -> bytes | None:
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            return _png_thumbnail(im)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genir")
    except PackageNotFoundError:
        return "0"


__all__ = ["create_app", "ServiceState"]
