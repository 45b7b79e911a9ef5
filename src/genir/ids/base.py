"""The contract every semantic-ID tokenizer keeps, and what a tokenizer may read beside the
item embeddings.

    tok = tokenizer_class("irgen")(config)
    tok.fit(emb, side=Side(labels=labels))      # one signature for all six tokenizers
    codes = tok.encode(emb, side=side)           # (N, M) int64
    rec = tok.decode(codes)                      # (N, D) in the tokenizer's space

A tokenizer says which side inputs its fit needs (`fit_needs`) and which its encode needs
(`encode_needs`); `GenerativeIndex.build` checks them and passes one `Side`. The registry
by name is `genir.ids.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np


@dataclass
class Side:
    """Inputs beside the (N, D) item embeddings; each tokenizer reads only what it needs.

    labels: (N,) class per item (IRGen's classification loss).
    text_emb: (N, D) a caption vector per item, in the items' space (AVG's alignment).
    modality: (N,) int 0 image, 1 text, 2 image_text (GENIUS' first code).
    pairs: (queries (P, D) in the items' space, their target rows (P,)) for a contrastive
        tokenizer (GENIUS); default: each item is its own query.
    """

    labels: Any = None
    text_emb: Any = None
    modality: Any = None
    pairs: tuple[Any, Any] | None = None

    def require(self, names: tuple[str, ...], who: str) -> None:
        """ValueError naming what `who` needs and was not given."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"the {who} tokenizer needs {', '.join(missing)} beside the "
                             f"embeddings: fit(emb, side=Side({missing[0]}=...))")


@runtime_checkable
class Tokenizer(Protocol):
    """Semantic IDs: fit on item embeddings (+ side inputs), encode to codes, decode back."""

    fit_needs: ClassVar[tuple[str, ...]]
    encode_needs: ClassVar[tuple[str, ...]]

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per level, M levels."""
        ...

    def fit(self, emb: Any, *, side: Side | None = None) -> Tokenizer:
        """(N, D) item embeddings -> self, fitted."""
        ...

    def encode(self, emb: Any, *, side: Side | None = None) -> np.ndarray:
        """(N, D) -> (N, M) int64 codes."""
        ...

    def decode(self, codes: Any, num_levels: int | None = None) -> np.ndarray:
        """(N, M) codes -> (N, D) reconstruction from the first `num_levels` levels."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...
