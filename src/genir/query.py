"""`QueryEncoder`: embeds a text or image query the way a saved index's items were embedded.

An index stores vectors; its manifest names the encoder that made them
(`extra["encoder"]`). This reopens that encoder for queries (the CLI and the service use
it) and refuses a query modality the encoder cannot embed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genir.encoders.base import ImageLike


class QueryEncoder:
    def __init__(self, spec: dict[str, Any], encoder: Any) -> None:
        self.spec = spec
        self.encoder = encoder
        self._instruction_emb: dict[str, np.ndarray] = {}   # a universal index's few instructions

    @classmethod
    def for_index(cls, index_dir: str | Path, index: Any) -> QueryEncoder:
        """The encoder the index's manifest names; for an index of your own vectors (encoder
        "none") one that embeds nothing: query it with vectors."""
        from genir.encoders.registry import load_encoder

        spec = index.extra.get("encoder")
        if not spec:
            raise ValueError(f"{index_dir}: the index names no encoder; embed queries yourself "
                             "and call GenerativeIndex.search(vectors, k)")
        try:
            return cls(spec, load_encoder(spec, index_dir))
        except ValueError as exc:
            raise ValueError(f"{index_dir}: {exc} in the manifest") from exc

    @property
    def modalities(self) -> tuple[str, ...]:
        """Query modalities this encoder embeds (none for an index of your own vectors)."""
        return tuple(m for m in ("image", "text") if hasattr(self.encoder, f"encode_{m}s"))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if "text" not in self.modalities:
            raise ValueError(self._cannot("text"))
        return self.encoder.encode_texts(list(texts))

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        if "image" not in self.modalities:
            raise ValueError(self._cannot("image"))
        return self.encoder.encode_images(list(images))

    def _cannot(self, modality: str) -> str:
        if not self.modalities:
            return ("this index holds your own embeddings (encoder none): query it with a "
                    "vector")
        kind = "an image-only" if self.modalities == ("image",) else "a text-only"
        return (f"this index was embedded by {kind} encoder ({self.spec['type']}); query it "
                f"with {' or '.join(f'an {m}' if m == 'image' else f'a {m}' for m in self.modalities)}")

    @property
    def needs_instruction(self) -> bool:
        """A universal index: the decoder reads [content ; instruction] (`decoder_input`)."""
        return self.spec.get("instructions") == "concatenated"

    def decoder_input(self, query_emb: np.ndarray, instruction: str | None) -> np.ndarray:
        """(Q, D) content embeddings -> what the index's decoder reads: the content itself, or
        for a universal index the content followed by the instruction's text embedding."""
        if not self.needs_instruction:
            return query_emb
        if not instruction:
            raise ValueError("this universal index needs an instruction naming what to retrieve "
                             "(genir.instructions)")
        if instruction not in self._instruction_emb:
            self._instruction_emb[instruction] = self.encode_texts([instruction])[0]
        return decoder_input(query_emb, self._instruction_emb[instruction])


def decoder_input(query_emb: np.ndarray, instruction_emb: np.ndarray) -> np.ndarray:
    """(Q, D) content and (E,) or (Q, E) instruction embeddings -> (Q, D + E): what a
    universal index's decoder reads (its manifest's encoder says "instructions":
    "concatenated")."""
    q = np.asarray(query_emb, dtype=np.float32)
    ins = np.asarray(instruction_emb, dtype=np.float32)
    ins = np.broadcast_to(ins, (len(q), ins.shape[-1]))
    return np.concatenate([q, ins], axis=1)


class QueryError(ValueError):
    """A query that cannot be made: the message says what to change (HTTP 422, exit 2)."""


@dataclass
class Query:
    """One assembled query: what the decoder reads and the query in the items' space."""

    decoder_input: np.ndarray   # (1, Dq)
    emb: np.ndarray             # (1, D) for rerank
    modality: str               # "image" | "text" | "image_text" | "vector"
    instruction: str | None


def assemble_query(encoder: QueryEncoder, *, text: str | None = None, image: ImageLike = None,
                   vector: Sequence[float] | np.ndarray | None = None,
                   instruction: str | None = None, item_modality: str = "image",
                   dim: int | None = None) -> Query:
    """Text, an image, both (their embeddings' normalised mean), or a vector (as given), plus
    an instruction where the index wants one -> a `Query`. The one place the CLI and the
    service make queries; QueryError names what is wrong.

    item_modality: what the index holds ("image", "text", "mixed" for a universal index,
    "vector"): an instruction must ask for it. dim: the items' width, checked for vectors.
    """
    from genir.instructions import parse_instruction

    if vector is not None and (text is not None or image is not None):
        raise QueryError("give a vector alone, not with a text or an image")
    if text is None and image is None and vector is None:
        raise QueryError("give a text query, an image, both, or a vector")
    if text is not None and not text.strip():
        raise QueryError("the text query is empty")
    if vector is not None:
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1) if not isinstance(
            vector, str) else np.zeros((1, 0), np.float32)
        if q.shape[1] == 0 or (dim is not None and q.shape[1] != dim):
            raise QueryError(f"the vector must have {dim} numbers, got {q.shape[1]}")
        if not np.isfinite(q).all():
            raise QueryError("the vector has a NaN or inf")
        modality = "vector"
    else:
        modality = "image_text" if text is not None and image is not None else (
            "text" if text is not None else "image")
        parts = []
        try:
            if image is not None:
                parts.append(encoder.encode_images([image])[0])
            if text is not None:
                parts.append(encoder.encode_texts([text.strip()])[0])
        except ValueError as exc:
            raise QueryError(str(exc)) from exc
        q = np.mean(parts, axis=0, keepdims=True).astype(np.float32)
        q /= max(float(np.linalg.norm(q)), 1e-12)
    ins = None
    if instruction is not None and instruction.strip():
        try:
            ins = parse_instruction(instruction)
        except ValueError as exc:
            raise QueryError(str(exc)) from None
        if not encoder.needs_instruction and ins.target_modality != item_modality:
            raise QueryError(f"instruction {ins.text!r} asks for {ins.target_modality} items; "
                             f"this index holds {item_modality} items")
        if modality != "vector" and ins.query_modality != modality:
            raise QueryError(f"instruction {ins.text!r} expects a {ins.query_modality} query; "
                             f"this query is {modality}")
    elif encoder.needs_instruction:
        from genir.instructions import INSTRUCTIONS

        raise QueryError("this universal index needs an instruction naming what to retrieve: "
                         + "; ".join(f'"{i.text}"' for i in INSTRUCTIONS
                                     if modality == "vector" or i.query_modality == modality))
    try:
        decoder_q = encoder.decoder_input(q, ins.text if ins else None)
    except ValueError as exc:
        raise QueryError(str(exc)) from exc
    return Query(decoder_input=decoder_q, emb=q, modality=modality,
                 instruction=ins.text if ins else None)


@dataclass
class NewItem:
    """An item to add: its embedding and metadata (`GenerativeIndex.add`)."""

    emb: np.ndarray               # (1, D)
    meta: dict[str, Any]


def assemble_item(encoder: QueryEncoder, *, image: ImageLike = None, caption: str | None = None,
                  vector: Sequence[float] | np.ndarray | None = None,
                  item_modality: str = "image", dim: int | None = None) -> NewItem:
    """An image, a caption, both, or a vector -> the `NewItem` an index of `item_modality`
    items takes (the one place the CLI's `genir add` and the service's `POST /items` make
    items). An image index embeds the image (its caption is kept as metadata), a text index
    the caption, a universal index (`encoder.needs_instruction`) what it is given (both: the
    normalised sum), an index of your own embeddings (item_modality "vector") the vector as
    given. QueryError names what is missing or wrong."""
    universal = encoder.needs_instruction
    if caption is not None and not caption.strip():
        raise QueryError("the caption is empty")
    caption = caption.strip() if caption is not None else None
    if (item_modality == "vector") != (vector is not None):
        raise QueryError("this index holds your own embeddings: give the item's vector"
                         if item_modality == "vector" else
                         f"this index embeds its {item_modality} items itself: give an image "
                         "or caption, not a vector")
    meta: dict[str, Any] = {"caption": caption or "", "source": "added"}
    if vector is not None:
        emb = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if (dim is not None and emb.shape[1] != dim) or not np.isfinite(emb).all():
            raise QueryError(f"the vector must hold {dim} finite numbers")
        return NewItem(emb=emb, meta=meta)
    if universal:   # the item's modality is what it was given
        if image is None and caption is None:
            raise QueryError("give the item's image, caption, or both")
        meta["modality"] = "image_text" if image is not None and caption is not None else (
            "image" if image is not None else "text")
    elif item_modality in ("image", "image_text") and image is None:
        raise QueryError(f"this index holds {item_modality} items: give the item's image")
    if item_modality == "text" and caption is None:
        raise QueryError("this index holds text items: give the item's caption")
    parts = []
    try:
        if image is not None:
            parts.append(encoder.encode_images([image]))
        if caption is not None and (image is None or universal):
            parts.append(encoder.encode_texts([caption]))
    except ValueError as exc:
        raise QueryError(str(exc)) from exc
    emb = np.sum(parts, axis=0).astype(np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return NewItem(emb=emb, meta=meta)
