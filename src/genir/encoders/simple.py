"""`PixelHashEncoder`: a dependency-free encoder for tests, smoke runs and services that
must start without model weights.

Images: 16×16 grayscale pixels, centred, through a fixed seeded random projection.
Texts: hashed character trigrams (4,096 buckets) through another fixed projection.
Both land in one `dim`-wide space and are L2-normalised, but the two modalities are NOT
aligned with each other: a text query finds texts, an image query finds similar pixels.
It is a baseline, not a model; use the EfficientNet/MiniLM or CLIP encoders for quality.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from genir.encoders.base import ImageLike, l2_normalize, load_image

_SIDE = 16
_BUCKETS = 4096


class PixelHashEncoder:
    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        self.dim, self.seed = int(dim), int(seed)
        rng = np.random.default_rng(seed)
        self._image_proj = rng.normal(size=(_SIDE * _SIDE, self.dim)).astype(np.float32)
        self._text_proj = rng.normal(size=(_BUCKETS, self.dim)).astype(np.float32)

    @property
    def spec(self) -> dict:
        return {"type": "pixel-hash", "dim": self.dim, "seed": self.seed}

    def cache_key(self) -> str:
        return f"pixel-hash-d{self.dim}-s{self.seed}"

    def encode_images(self, images: Sequence[ImageLike], *, batch_size: int = 128,
                      progress: bool = False) -> np.ndarray:
        rows = []
        for image in images:
            im = load_image(image).convert("L").resize((_SIDE, _SIDE))
            x = np.asarray(im, dtype=np.float32).reshape(-1) / 255.0
            rows.append(x - x.mean())
        return l2_normalize(np.stack(rows) @ self._image_proj)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 128,
                     progress: bool = False) -> np.ndarray:
        counts = np.zeros((len(texts), _BUCKETS), dtype=np.float32)
        for i, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for j in range(len(padded) - 2):
                h = hashlib.blake2b(padded[j:j + 3].encode(), digest_size=4).digest()
                counts[i, int.from_bytes(h, "little") % _BUCKETS] += 1
        return l2_normalize(counts @ self._text_proj)
