from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def clustered(num_items: int, num_classes: int = 6, dim: int = 16, noise: float = 0.8,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around `num_classes` random centers: (emb, labels, centers)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    labels = rng.integers(num_classes, size=num_items)
    x = centers[labels] + noise * rng.normal(size=(num_items, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels, centers


# Two code paths (fused vs torch session, batch sizes, numba vs numpy, float32 vs float64)
# sum in different orders, and how each rounds depends on the CPU (AVX2 vs AVX-512, Intel
# vs AMD, MKL's dispatch): across paths scores agree within CROSS_PATH_ATOL, and rankings
# agree except among results whose scores lie within it of each other. One path run twice
# on the same machine is compared bit for bit.
CROSS_PATH_ATOL = 1e-4


def assert_same_ranking(scores, ids, ref_scores, ref_ids, *, atol: float = CROSS_PATH_ATOL,
                        rtol: float = 0.0) -> None:
    """(Q, k) scores sorted best first with their ids, against a reference from another code
    path: scores within atol + rtol |ref|, and the same ids in the same order wherever the
    reference's scores are further apart than that; a run of near-tied scores is compared
    as a set, and a run that reaches the last slot not at all (what ties it beyond k is
    unseen)."""
    scores, ref_scores = (np.asarray(torch.as_tensor(a), dtype=np.float64) for a in (scores, ref_scores))
    ids, ref_ids = (np.asarray(torch.as_tensor(a)) for a in (ids, ref_ids))
    assert scores.shape == ref_scores.shape == ids.shape == ref_ids.shape
    finite = np.isfinite(ref_scores)
    assert np.array_equal(np.isfinite(scores), finite), "padding differs"
    np.testing.assert_allclose(scores[finite], ref_scores[finite], rtol=rtol, atol=atol)
    for q in range(len(ref_ids)):
        row, k = ref_scores[q], int(finite[q].sum())
        start = 0
        for end in range(1, k + 1):
            if end < k and row[end - 1] - row[end] <= atol + rtol * abs(row[end]):
                continue                      # still inside a run of near-ties
            if end == row.shape[0]:
                break     # the run in the last slot may tie with results beyond k: unseen
            got, want = sorted(ids[q, start:end].tolist()), sorted(ref_ids[q, start:end].tolist())
            assert got == want, f"query {q}, slots {start}..{end - 1}: {got} != {want}"
            start = end


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test writes to the user's embedding cache."""
    monkeypatch.setenv("GENIR_CACHE_DIR", str(tmp_path_factory.mktemp("genir-cache")))
