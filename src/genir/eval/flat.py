"""`FlatIndex`: exact k-NN by inner product, the baseline every genir figure sits beside.

Same `search(queries, k) -> (scores, item_rows)` contract as `GenerativeIndex`, chunked
over queries so 60k x 1280 galleries fit in memory. On unit vectors inner product is
cosine similarity. It is not an approximate index (FAISS IVF-PQ / HNSW live in
benchmarks).
"""

from __future__ import annotations

import numpy as np
import torch


class FlatIndex:
    def __init__(self, item_emb: np.ndarray) -> None:
        self.item_emb = torch.as_tensor(np.asarray(item_emb, dtype=np.float32))
        if self.item_emb.ndim != 2:
            raise ValueError(f"item embeddings must be (N, D), got {tuple(self.item_emb.shape)}")

    def __len__(self) -> int:
        return self.item_emb.shape[0]

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int, *, chunk_size: int = 1024
               ) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.item_emb.shape[1]:
            raise ValueError(f"queries must be (Q, {self.item_emb.shape[1]}), got {tuple(q.shape)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(k, len(self))
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        for start in range(0, q.shape[0], chunk_size):
            top = (q[start:start + chunk_size] @ self.item_emb.T).topk(kk, dim=1)
            scores[start:start + chunk_size, :kk] = top.values.numpy()
            rows[start:start + chunk_size, :kk] = top.indices.numpy()
        return scores, rows
