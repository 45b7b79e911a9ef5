"""The `Encoder` contract shared by every backend, and the small helpers they use.

An encoder maps images and texts to float32, L2-normalised rows in one space. This file
holds the protocol, image loading (paths, PIL images, uint8 arrays) and batching; it
holds no model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

# A single image as the encoders accept it: a file path, a PIL image, or an
# (H, W) / (H, W, 3) / (H, W, 4) uint8 array.
ImageLike = Any


@runtime_checkable
class Encoder(Protocol):
    """Maps images and texts to L2-normalised float32 embeddings of width `dim`."""

    dim: int

    def encode_images(self, images: Sequence[ImageLike], *, batch_size: int = 128,
                      progress: bool = False) -> np.ndarray:
        """(N,) images -> (N, dim) float32, unit rows."""
        ...

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 128,
                     progress: bool = False) -> np.ndarray:
        """(N,) strings -> (N, dim) float32, unit rows."""
        ...

    def cache_key(self) -> str:
        """A string that changes whenever the encoder's outputs would change."""
        ...


class ImageLoadError(ValueError):
    """An image that Pillow cannot open or decode; the message names the image."""


def load_image(image: ImageLike, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any `ImageLike` -> an RGB PIL image; transparency is composited on `background`."""
    if isinstance(image, Image.Image):
        im = image
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageLoadError(f"image arrays must be uint8, got {image.dtype}")
        if image.ndim not in (2, 3):
            raise ImageLoadError(f"image arrays must be (H, W) or (H, W, C), got shape {image.shape}")
        im = Image.fromarray(image)
    elif isinstance(image, str | os.PathLike):
        try:
            im = Image.open(image)
            im.load()
        except (OSError, Image.DecompressionBombError, ValueError) as exc:
            raise ImageLoadError(f"cannot read image {os.fspath(image)!r}: {exc}") from exc
    else:
        raise ImageLoadError(f"unsupported image type {type(image).__name__}; "
                             "pass a path, a PIL image or a uint8 array")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, background + (255,))
        canvas.alpha_composite(im)
        return canvas.convert("RGB")
    return im.convert("RGB")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise unit norm, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def encode_batched(items: Sequence[Any] | np.ndarray, fn: Callable[[Any], np.ndarray], *,
                   batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """Apply `fn` to consecutive batches of `items` and stack the (B, D) results."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress) as bar:
        for sl in batches(len(items), batch_size):
            out.append(np.asarray(fn(items[sl]), dtype=np.float32))
            bar.update(sl.stop - sl.start)
    if not out:
        raise ValueError(f"{desc}: nothing to encode (empty input)")
    return np.concatenate(out, axis=0)
