"""Residual quantization (RQ): the plain semantic-ID tokenizer behind every genir index.

Level l quantizes what levels < l left over, so an item's ID is M codes, coarse to fine
(IRGen eq. 1, GENIUS eq. 5). Codebooks are fitted by seeded k-means on the residuals.
The supervised variants (IRGen, AVG, GENIUS losses) are separate tokenizers with the same
`fit / encode / decode` contract; this one is unsupervised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from genir.ids.base import Side
from genir.ids.kmeans import assign, kmeans


@dataclass
class RQConfig:
    num_levels: int = 4             # ID length M
    codebook_size: int = 256        # codes per level K (every level)
    kmeans_iters: int = 15          # Lloyd iterations per level
    max_fit_points: int = 20_000    # k-means runs on a seeded sample this large
    seed: int = 0                   # k-means++ seeding and sampling

    def __post_init__(self) -> None:
        if self.num_levels < 1 or self.codebook_size < 1:
            raise ValueError("num_levels and codebook_size must be >= 1, got "
                             f"{self.num_levels} and {self.codebook_size}")

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """K per level (derived)."""
        return (self.codebook_size,) * self.num_levels

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualQuantizer:
    """tok.fit(emb); ids = tok.encode(emb); rec = tok.decode(ids)."""

    fit_needs: tuple[str, ...] = ()
    encode_needs: tuple[str, ...] = ()

    def __init__(self, config: RQConfig | None = None) -> None:
        self.config = config or RQConfig()
        self.codebooks: list[torch.Tensor] = []  # per level (K_l, D)
        self.reseeds: list[int] = []             # dead codes re-seeded per level during fit

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    @property
    def is_fitted(self) -> bool:
        return len(self.codebooks) == self.config.num_levels

    def fit(self, emb: np.ndarray | torch.Tensor, *, side: Side | None = None) -> ResidualQuantizer:
        """(N, D) float -> self (reads nothing from `side`)."""
        residual = _as_tensor(emb)
        self.codebooks, self.reseeds = [], []
        for level in range(self.config.num_levels):
            centers, reseeds = kmeans(residual, self.config.codebook_size,
                                      iters=self.config.kmeans_iters,
                                      seed=self.config.seed + level,
                                      max_points=self.config.max_fit_points)
            self.codebooks.append(centers)
            self.reseeds.append(reseeds)
            if level + 1 < self.config.num_levels:
                residual = _subtract_nearest(residual, centers, first=level == 0)
        return self

    def encode(self, emb: np.ndarray | torch.Tensor, *, side: Side | None = None) -> np.ndarray:
        """(N, D) -> (N, M) int64 codes, greedy nearest code per level."""
        self._check_fitted()
        residual = _as_tensor(emb)
        if residual.shape[1] != self.codebooks[0].shape[1]:
            raise ValueError(f"embedding width {residual.shape[1]} does not match the "
                             f"tokenizer's {self.codebooks[0].shape[1]}")
        codes = torch.empty(residual.shape[0], self.config.num_levels, dtype=torch.int64)
        for level, centers in enumerate(self.codebooks):
            codes[:, level] = assign(residual, centers)
            if level + 1 < self.config.num_levels:
                residual = _subtract_nearest(residual, centers, codes[:, level], first=level == 0)
        return codes.numpy()

    def decode(self, codes: np.ndarray | torch.Tensor, num_levels: int | None = None) -> np.ndarray:
        """(N, M) codes -> (N, D) reconstruction from the first `num_levels` levels."""
        self._check_fitted()
        codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        levels = self.config.num_levels if num_levels is None else num_levels
        out = torch.zeros(codes_t.shape[0], self.codebooks[0].shape[1])
        for level in range(levels):
            out += self.codebooks[level][codes_t[:, level]]
        return out.numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"codebook.{i}": c.contiguous() for i, c in enumerate(self.codebooks)}

    @classmethod
    def from_state(cls, config: RQConfig, state: dict[str, torch.Tensor]) -> ResidualQuantizer:
        tok = cls(config)
        tok.codebooks = [state[f"codebook.{i}"].float() for i in range(config.num_levels)]
        return tok

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer is not fitted: call fit(embeddings) first")


def _subtract_nearest(residual: torch.Tensor, centers: torch.Tensor,
                      codes: torch.Tensor | None = None, *, first: bool,
                      chunk_size: int = 65_536) -> torch.Tensor:
    """residual - its nearest center (or centers[codes]), chunk by chunk, so the memory held is
    one copy of the embeddings (the caller's array is copied once, at the first level, and
    updated in place after that) instead of three. Elementwise, so the bits are the same as
    `residual - centers[assign(residual, centers)]`."""
    out = residual.clone() if first else residual
    for start in range(0, out.shape[0], chunk_size):
        part = out[start:start + chunk_size]
        idx = codes[start:start + chunk_size] if codes is not None else assign(part, centers)
        part.sub_(centers[idx])
    return out


def _as_tensor(emb: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(emb, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, D) embedding array, got shape {tuple(x.shape)}")
    for start in range(0, x.shape[0], 65_536):   # chunked: no (N, D) bool temporary
        if not torch.isfinite(x[start:start + 65_536]).all():
            raise ValueError("embeddings contain NaN or inf")
    return x
