"""Encoders: images and texts to L2-normalised float32 embeddings (see `base.Encoder`)."""

from __future__ import annotations

from genir.encoders.base import Encoder, ImageLoadError, l2_normalize, load_image
from genir.encoders.cache import EmbeddingCache

__all__ = ["EmbeddingCache", "Encoder", "ImageLoadError", "l2_normalize", "load_image"]
