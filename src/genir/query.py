"""`QueryEncoder`: embeds a text or image query the way a saved index's items were embedded.

An index stores vectors; its manifest names the encoder that made them
(`extra["encoder"]`). This reopens that encoder for queries (the CLI and the service use
it) and refuses a query modality the encoder cannot embed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genir.encoders.base import ImageLike
from genir.encoders.cache import EmbeddingCache


class QueryEncoder:
    def __init__(self, spec: dict[str, Any], encoder: Any) -> None:
        self.spec = spec
        self.encoder = encoder
        self._instruction_emb: dict[str, np.ndarray] = {}   # a universal index's few instructions

    @classmethod
    def for_index(cls, index_dir: str | Path, index: Any) -> QueryEncoder:
        spec = index.extra.get("encoder")
        if not spec:
            raise ValueError(f"{index_dir}: the index names no encoder; embed queries yourself "
                             "and call GenerativeIndex.search(vectors, k)")
        kind = spec.get("type")
        if kind == "efficientnet-lite0":
            from genir.encoders.towers import EfficientNetLiteTower

            return cls(spec, EfficientNetLiteTower(image_size=spec["image_size"]))
        if kind == "efficientnet-lite0-tuned":
            from genir.encoders.tuning import TunedEfficientNetLite

            return cls(spec, TunedEfficientNetLite.load(Path(index_dir) / spec["path"]))
        if kind == "aligned":
            from genir.encoders.aligned import AlignedEncoder

            return cls(spec, AlignedEncoder.load(Path(index_dir) / spec["path"],
                                                 cache=EmbeddingCache(enabled=False)))
        if kind == "pixel-hash":
            from genir.encoders.simple import PixelHashEncoder

            return cls(spec, PixelHashEncoder(dim=spec["dim"], seed=spec["seed"]))
        raise ValueError(f"{index_dir}: unknown encoder type {kind!r} in the manifest")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Query modalities this encoder embeds."""
        return ("image", "text") if hasattr(self.encoder, "encode_texts") else ("image",)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self.encoder, "encode_texts"):
            raise ValueError("this index was embedded by an image-only encoder "
                             f"({self.spec['type']}); query it with an image")
        return self.encoder.encode_texts(list(texts))

    def encode_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        return self.encoder.encode_images(list(images))

    @property
    def needs_instruction(self) -> bool:
        """A universal index: the decoder reads [content ; instruction] (genir.universal)."""
        return self.spec.get("instructions") == "concatenated"

    def decoder_input(self, query_emb: np.ndarray, instruction: str | None) -> np.ndarray:
        """(Q, D) content embeddings -> what the index's decoder reads: the content itself, or
        for a universal index the content followed by the instruction's text embedding."""
        if not self.needs_instruction:
            return query_emb
        if not instruction:
            raise ValueError("this universal index needs an instruction naming what to retrieve "
                             "(genir.instructions)")
        from genir.universal import decoder_input

        if instruction not in self._instruction_emb:
            self._instruction_emb[instruction] = self.encode_texts([instruction])[0]
        return decoder_input(query_emb, self._instruction_emb[instruction])
