"""Query token sequences for the decoder's cross-attention paths.

IRGen feeds the query image's patch tokens to its decoder through cross-attention; AVG feeds
the query caption's token states. Here:

- `image_patch_tokens`: EfficientNet-Lite0's final feature map, one token per grid cell
  (row-major): 2x2 at 64 px, 4x4 at 128 px, 7x7 at 224 px, 1280 channels each;
- `text_tokens`: MiniLM's contextual word-piece states ([CLS] ... [SEP]), 384 channels,
  cut at `max_tokens` and zero-padded (zero tokens are the decoder's padding);
- `TokenPCA`: a seeded PCA of the channels, to keep many queries' token grids in memory;
  padding stays exactly zero;
- `flatten_tokens`: (N, L, C) -> (N, L * C), the decoder's query layout with
  `DecoderConfig.query_tokens = L`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genir.encoders.base import ImageLike, encode_batched


def image_patch_tokens(tower: Any, images: Sequence[ImageLike] | np.ndarray, *,
                       batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """(N,) images -> (N, h * w, C) float32 grid-cell features of `tower.feature_map`."""
    def batch(chunk: Any) -> np.ndarray:
        fm = tower.feature_map(chunk).float().cpu()          # (B, C, h, w)
        return fm.flatten(2).transpose(1, 2).contiguous().numpy()

    return encode_batched(images, batch, batch_size=batch_size, progress=progress,
                          desc="patch tokens")


def text_tokens(tower: Any, texts: Sequence[str], *, max_tokens: int = 32,
                batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """(N,) strings -> (N, max_tokens, C) float32 token states of a sentence-transformers
    tower (`tower.model`), zero-padded after each text's last token."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if len(texts) == 0:
        raise ValueError("text_tokens: nothing to encode (empty input)")
    states = tower.model.encode(list(texts), output_value="token_embeddings",
                                batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=False)
    width = int(states[0].shape[-1])
    out = np.zeros((len(texts), max_tokens, width), dtype=np.float32)
    for i, s in enumerate(states):
        s = torch.as_tensor(s).float().cpu().numpy()[:max_tokens]
        out[i, :len(s)] = s
    return out


def flatten_tokens(tokens: np.ndarray) -> np.ndarray:
    """(N, L, C) -> (N, L * C) float32 (the layout `DecoderConfig.query_tokens = L` reads)."""
    t = np.asarray(tokens, dtype=np.float32)
    if t.ndim != 3:
        raise ValueError(f"expected (N, L, C) tokens, got shape {t.shape}")
    return np.ascontiguousarray(t.reshape(len(t), -1))


class TokenPCA:
    """Seeded PCA of token channels, fitted on real (non-zero) tokens; zero tokens stay zero."""

    def __init__(self, dim: int, *, max_rows: int = 50_000, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.max_rows, self.seed = dim, max_rows, seed
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None   # (C, dim)

    def fit(self, tokens: np.ndarray) -> TokenPCA:
        rows = _real_rows(tokens)
        if len(rows) < 2:
            raise ValueError("TokenPCA.fit needs at least 2 non-zero tokens")
        if len(rows) > self.max_rows:
            pick = np.random.default_rng(self.seed).choice(len(rows), self.max_rows, replace=False)
            rows = rows[np.sort(pick)]
        if self.dim > rows.shape[1]:
            raise ValueError(f"dim {self.dim} exceeds the {rows.shape[1]} token channels")
        self.mean = rows.mean(0)
        _, _, vt = np.linalg.svd(rows - self.mean, full_matrices=False)
        comps = vt[:self.dim].T.astype(np.float32)
        # a deterministic sign per component (SVD's sign is arbitrary)
        comps *= np.sign(comps[np.abs(comps).argmax(0), np.arange(self.dim)])
        self.components = comps
        return self

    def transform(self, tokens: np.ndarray) -> np.ndarray:
        """(N, L, C) -> (N, L, dim); all-zero (padding) tokens map to zero."""
        if self.mean is None or self.components is None:
            raise RuntimeError("TokenPCA is not fitted")
        t = np.asarray(tokens, dtype=np.float32)
        out = (t - self.mean) @ self.components
        out[~(t != 0).any(-1)] = 0.0
        return out.astype(np.float32)


def _real_rows(tokens: np.ndarray) -> np.ndarray:
    t = np.asarray(tokens, dtype=np.float32)
    flat = t.reshape(-1, t.shape[-1])
    return flat[(flat != 0).any(1)]


__all__ = ["TokenPCA", "flatten_tokens", "image_patch_tokens", "text_tokens"]
