from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_same_ranking
from genir.eval import metrics as M
from genir.eval.flat import FlatIndex


def test_metrics_equal_hand_computed_values():
    # query 0: hits at ranks 1 and 3; query 1: first hit at rank 2; query 2: none
    hits = np.array([[1, 0, 1, 0],
                     [0, 1, 0, 0],
                     [0, 0, 0, 0]], dtype=bool)
    assert M.precision_at(hits, 1) == pytest.approx(1 / 3)
    assert M.precision_at(hits, 4) == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert M.recall_at(hits, 1) == pytest.approx(1 / 3)
    assert M.recall_at(hits, 2) == pytest.approx(2 / 3)
    assert M.mrr(hits) == pytest.approx((1 + 1 / 2 + 0) / 3)
    # AP@4 with 2, 1 and 5 relevant items: (1 + 2/3) / 2, (1/2) / 1, 0
    ap = M.mean_average_precision(hits, np.array([2, 1, 5]), k=4)
    assert ap == pytest.approx(((1 + 2 / 3) / 2 + 0.5 + 0) / 3)


def test_hit_matrix_from_labels_and_from_items_treats_padding_as_miss():
    retrieved = np.array([[2, 0, -1], [1, 3, 2]])
    item_labels = np.array([5, 7, 5, 7])
    hits = M.hit_matrix(retrieved, query_labels=np.array([5, 7]), item_labels=item_labels)
    assert hits.tolist() == [[True, True, False], [True, True, False]]
    hits = M.hit_matrix(retrieved, relevant_items=np.array([0, 2]))
    assert hits.tolist() == [[False, True, False], [False, False, True]]


def test_summarize_and_k_check():
    hits = np.ones((2, 3), dtype=bool)
    out = M.summarize(hits, precision_ks=(1, 3), recall_ks=(2,), num_relevant=np.array([3, 3]),
                      map_k=3)
    assert out == {"P@1": 1.0, "P@3": 1.0, "R@2": 1.0, "MAP@3": 1.0, "MRR": 1.0}
    with pytest.raises(ValueError, match="K=5"):
        M.precision_at(hits, 5)


def test_flat_index_equals_naive_sort():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    scores, rows = FlatIndex(items).search(queries, 5, chunk_size=3)
    sims = queries @ items.T                  # numpy's products against torch's in chunks
    ref_rows = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert_same_ranking(scores, rows, np.take_along_axis(sims, ref_rows, 1), ref_rows, atol=1e-5)
    scores, rows = FlatIndex(items[:3]).search(queries, 5)
    assert (rows[:, 3:] == -1).all() and np.isinf(scores[:, 3:]).all()
