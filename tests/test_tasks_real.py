"""The bundled tasks on the real Debian data, scaled down to fit CI (marker: slow).

Skipped when the data packages are not installed; `make test` installs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from genir import tasks
from genir.encoders.cache import EmbeddingCache

pytestmark = pytest.mark.slow


def _require(path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"{path} not installed (make install-data)")


def test_fashion_mnist_generative_beats_chance_and_keeps_precision_flat(tmp_path):
    _require("/usr/share/datasets/fashion-mnist")
    data = tasks.prepare("fashion-mnist", cache=EmbeddingCache(tmp_path), num_queries=200,
                         limit=3000)
    config = tasks.default_config("fashion-mnist")
    config.train.steps = 400
    result = tasks.evaluate(data, tasks.build(data, config))
    genir, flat = result.rows["genir"], result.rows["flat knn"]
    assert genir["P@10"] > 0.6 and flat["P@10"] > 0.6   # 10 classes: chance is 0.1
    # the IRGen signature: precision barely falls from K=1 to K=30
    assert genir["P@1"] - genir["P@30"] < 0.1
    # a second run reads the embedding cache instead of re-embedding
    cache = EmbeddingCache(tmp_path)
    tasks.prepare("fashion-mnist", cache=cache, num_queries=200, limit=3000)
    assert cache.hits == 2 and cache.misses == 0


def test_openclipart_text_to_image_finds_captioned_images(tmp_path):
    _require("/usr/share/openclipart/png")
    data = tasks.prepare("openclipart", cache=EmbeddingCache(tmp_path), num_queries=100,
                         limit=600)
    config = tasks.default_config("openclipart", quick=True)
    config.train.steps = 300
    result = tasks.evaluate(data, tasks.build(data, config))
    # 600 images: chance R@10 is 10/600; the aligned space must do far better
    assert result.rows["flat knn"]["R@10"] > 0.2
    assert result.rows["genir+rerank"]["R@10"] > 0.1
