"""Retrieval metrics from a hit matrix: P@K, R@K, MAP@100, MRR.

`hits[q, r]` is True when the item ranked r for query q is relevant (-1 padding counts
as a miss). Definitions follow IRGen: P@K is the fraction of the top K that is relevant;
R@K is 1 when any relevant item is in the top K (for caption queries with one relevant
image this is the usual text-to-image R@K); MAP@100 averages, over queries,
AP@100 = sum_r P@r * hit_r / min(num_relevant, 100); MRR is the mean of 1 / rank of the
first hit (0 when none is retrieved).
"""

from __future__ import annotations

import numpy as np


def hit_matrix(retrieved: np.ndarray, query_labels: np.ndarray | None = None,
               item_labels: np.ndarray | None = None,
               relevant_items: np.ndarray | None = None) -> np.ndarray:
    """(Q, K) retrieved item rows (-1 padded) -> (Q, K) bool.

    Relevance is either label equality (query_labels, item_labels) or one relevant item per
    query (relevant_items (Q,)).
    """
    retrieved = np.asarray(retrieved)
    valid = retrieved >= 0
    if relevant_items is not None:
        return valid & (retrieved == np.asarray(relevant_items)[:, None])
    if query_labels is None or item_labels is None:
        raise ValueError("pass query_labels and item_labels, or relevant_items")
    labels = np.asarray(item_labels)[np.where(valid, retrieved, 0)]
    return valid & (labels == np.asarray(query_labels)[:, None])


def precision_at(hits: np.ndarray, k: int) -> float:
    _check_k(hits, k)
    return float(hits[:, :k].sum(1).mean() / k)


def recall_at(hits: np.ndarray, k: int) -> float:
    _check_k(hits, k)
    return float(hits[:, :k].any(1).mean())


def mean_average_precision(hits: np.ndarray, num_relevant: np.ndarray, k: int = 100) -> float:
    _check_k(hits, k)
    h = hits[:, :k].astype(np.float64)
    prec = np.cumsum(h, 1) / np.arange(1, k + 1)
    denom = np.minimum(np.asarray(num_relevant, dtype=np.float64), k)
    ap = np.where(denom > 0, (prec * h).sum(1) / np.maximum(denom, 1), 0.0)
    return float(ap.mean())


def mrr(hits: np.ndarray) -> float:
    first = hits.argmax(1)
    return float(np.where(hits.any(1), 1.0 / (first + 1), 0.0).mean())


def summarize(hits: np.ndarray, *, precision_ks=(), recall_ks=(), num_relevant=None,
              map_k: int | None = None) -> dict[str, float]:
    out = {f"P@{k}": precision_at(hits, k) for k in precision_ks}
    out.update({f"R@{k}": recall_at(hits, k) for k in recall_ks})
    if map_k is not None and num_relevant is not None:
        out[f"MAP@{map_k}"] = mean_average_precision(hits, num_relevant, map_k)
    out["MRR"] = mrr(hits)
    return out


def _check_k(hits: np.ndarray, k: int) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"K={k} needs at least K retrieved columns; have {hits.shape[1]}")
