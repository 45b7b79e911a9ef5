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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test writes to the user's embedding cache."""
    monkeypatch.setenv("GENIR_CACHE_DIR", str(tmp_path_factory.mktemp("genir-cache")))
