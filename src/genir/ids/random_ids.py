"""`RandomTokenizer`: random IDs of the same length and range as RQ's, the identifier
baseline of IRGen Table 3 (random < hierarchical k-means < RQ < IRGen).

An item's ID is a seeded hash of its embedding's bytes, so the same embedding always gets
the same ID and nearby embeddings get unrelated ones. It carries no geometry: `decode` has
nothing to reconstruct and says so.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from genir.ids.base import Side
from genir.ids.rq import RQConfig


class RandomTokenizer:
    fit_needs: tuple[str, ...] = ()
    encode_needs: tuple[str, ...] = ()

    def __init__(self, config: RQConfig | None = None) -> None:
        self.config = config or RQConfig()
        self.dim: int | None = None
        self.reseeds: list[int] = []

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    @property
    def is_fitted(self) -> bool:
        return self.dim is not None

    def fit(self, emb: np.ndarray, *, side: Side | None = None) -> RandomTokenizer:
        """(N, D) -> self (only the width is learned)."""
        emb = np.asarray(emb)
        if emb.ndim != 2 or len(emb) == 0:
            raise ValueError(f"expected a non-empty (N, D) embedding array, got shape {emb.shape}")
        self.dim = int(emb.shape[1])
        return self

    def encode(self, emb: np.ndarray, *, side: Side | None = None) -> np.ndarray:
        """(N, D) -> (N, M) int64: a seeded hash of each row's float32 bytes, per level."""
        if self.dim is None:
            raise RuntimeError("the tokenizer is not fitted: call fit(embeddings) first")
        rows = np.ascontiguousarray(emb, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"embedding width {rows.shape[-1]} does not match the tokenizer's {self.dim}")
        m, k = self.config.num_levels, self.config.codebook_size
        salt = self.config.seed.to_bytes(8, "little", signed=True)
        out = np.empty((len(rows), m), dtype=np.int64)
        for i, row in enumerate(rows):
            digest = hashlib.blake2b(row.tobytes(), digest_size=8 * m, salt=salt[:8]).digest()
            out[i] = np.frombuffer(digest, dtype=np.uint64) % np.uint64(k)
        return out

    def decode(self, codes: np.ndarray, num_levels: int | None = None) -> np.ndarray:
        raise NotImplementedError("random IDs have no reconstruction")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"dim": torch.tensor([self.dim or 0])}

    @classmethod
    def from_state(cls, config: RQConfig, state: dict[str, torch.Tensor]) -> RandomTokenizer:
        tok = cls(config)
        tok.dim = int(state["dim"][0])
        return tok
