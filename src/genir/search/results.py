"""From the beam search's leaves to a query's top-k items: one compiled pass per batch.

Leaves are IDs (`IDTable` rows); an ID may hold several items (colliding codes). For each
query, `top_items` lists the items of its leaves in beam order, scores them (the leaf's
log-probability, or with rerank the dot product of the query with the item's embedding),
sorts them by score, stable (ties keep beam order, so results never depend on the batch),
and keeps the best k; slots past the candidates are -1 with score -inf. A NaN rerank score
(a NaN embedding) sorts last; an infinite one is kept as a result.

It replaced ~15 torch operations a batch (leaf expansion padded or packed, an index_select
and bmm for rerank, a stable sort and gathers): each cost 5-50 us on 2 cores, together
2-6% of a batch-32 query at N = 1M (docs/benchmarks.md). Its reference in the tests is a
plain Python loop over the leaves and `sorted`.
"""

from __future__ import annotations

import numba
import numpy as np

from genir.reduce import dot

F32 = np.float32


@numba.njit(cache=True, nogil=True, error_model="numpy")
def top_items(leaves, leaf_scores, offsets, items, queries, emb, rerank, out_scores,
              out_rows):  # type: ignore[no-untyped-def]
    """leaves (Q, B) int64, -1 = none; leaf_scores (Q, B) float32; offsets / items: the ID
    table's CSR (`IDTable.offsets`, `.items`); queries (Q, D) and emb (N, D) float32, read
    only with rerank; out_scores (Q, k) float32 and out_rows (Q, k) int64, written whole."""
    nq, nb = leaves.shape
    k = out_rows.shape[1]
    most = 1
    for i in range(nq):
        n = 0
        for j in range(nb):
            leaf = leaves[i, j]
            if leaf >= 0:
                n += offsets[leaf + 1] - offsets[leaf]
        most = max(most, n)
    dim = emb.shape[1]
    cand = np.empty(most, np.int64)
    score = np.empty(most, np.float32)
    for i in range(nq):
        n = 0
        for j in range(nb):
            leaf = leaves[i, j]
            if leaf < 0:
                continue
            for slot in range(offsets[leaf], offsets[leaf + 1]):
                item = items[slot]
                cand[n] = item
                if rerank:   # (flat offsets, a fixed order: `genir.reduce`)
                    score[n] = dot(emb, item * dim, queries, i * dim, dim)  # type: ignore[call-arg]
                else:
                    score[n] = leaf_scores[i, j]
                n += 1
        order = np.argsort(-score[:n], kind="mergesort")    # stable: ties keep beam order
        for r in range(k):
            if r < n:
                out_scores[i, r] = score[order[r]]
                out_rows[i, r] = cand[order[r]]
            else:
                out_scores[i, r] = -np.inf
                out_rows[i, r] = -1
