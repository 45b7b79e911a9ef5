"""`IDTable`: the map from a full semantic ID to every item that carries it.

Several items can share an ID (a collision); the table keeps them all, in item order, so
search can return every one and rerank can order them. Built once, vectorised, from the
(N, M) code array; the unique IDs are sorted lexicographically, which is also the leaf
order of the search trie built from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def codebook_utilisation(codes: np.ndarray, codebook_sizes: tuple[int, ...]) -> list[float]:
    """Fraction of each level's codes that `codes` (N, M) use."""
    return [len(np.unique(codes[:, lv])) / k for lv, k in enumerate(codebook_sizes)]


@dataclass
class IDTable:
    unique_ids: np.ndarray   # (U, M) int64, sorted lexicographically
    offsets: np.ndarray      # (U + 1,) int64: items of ID u are items[offsets[u]:offsets[u + 1]]
    items: np.ndarray        # (N,) int64 item indices grouped by ID, ascending within an ID
    item_to_id: np.ndarray   # (N,) int64 row of unique_ids for each item

    @classmethod
    def from_codes(cls, codes: np.ndarray) -> IDTable:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError(f"codes must be a non-empty (N, M) array, got shape {codes.shape}")
        unique_ids, inverse = np.unique(codes, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        items = np.argsort(inverse, kind="stable").astype(np.int64)
        counts = np.bincount(inverse, minlength=len(unique_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(unique_ids=unique_ids, offsets=offsets, items=items,
                   item_to_id=inverse.astype(np.int64))

    @property
    def num_ids(self) -> int:
        return len(self.unique_ids)

    @property
    def max_items_per_id(self) -> int:
        return int(np.diff(self.offsets).max()) if len(self.items) else 0

    def items_of(self, id_row: int) -> np.ndarray:
        return self.items[self.offsets[id_row]:self.offsets[id_row + 1]]

    def stats(self) -> dict[str, int | float]:
        """Collision report: how many IDs are shared and by how many items."""
        counts = np.diff(self.offsets)
        shared = counts > 1
        return {
            "num_items": int(counts.sum()),
            "num_ids": int(len(counts)),
            "colliding_ids": int(shared.sum()),
            "items_in_collisions": int(counts[shared].sum()),
            "max_items_per_id": self.max_items_per_id,
            "mean_items_per_id": float(counts.mean()),
        }
