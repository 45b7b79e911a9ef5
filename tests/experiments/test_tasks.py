"""The bundled tasks' preparation on fixture data (hermetic): the Fashion-MNIST tower is
tuned once per (images, labels, config) and a saved index's tuned tower embeds as built."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import write_fashion_mnist
from genir.encoders.cache import EmbeddingCache
from genir_experiments import tasks


@pytest.fixture()
def fmnist(tmp_path, monkeypatch):
    monkeypatch.setenv("GENIR_FASHION_MNIST_DIR", str(write_fashion_mnist(tmp_path / "f")))
    return tmp_path


def test_tuned_tower_is_trained_once_and_reloads_identically(fmnist):
    from genir.encoders.tuning import TunedEfficientNetLite

    cache = EmbeddingCache(fmnist / "cache")
    first = tasks.prepare("fashion-mnist", cache=cache, num_queries=10)
    assert first.encoder_spec == {"type": "efficientnet-lite0-tuned", "image_size": 64,
                                  "path": "encoder"}
    assert first.encoder.losses and "tune_s" in first.timings
    assert len(list((fmnist / "cache").glob("tower-top-*.safetensors"))) == 1
    # same data, labels and config: the cached weights, no second training
    again = tasks.prepare("fashion-mnist", cache=EmbeddingCache(fmnist / "cache"), num_queries=10)
    assert again.encoder.losses == [] and again.encoder.cache_key() == first.encoder.cache_key()
    assert np.array_equal(again.item_emb, first.item_emb)
    # without a cache it trains again and gets the same weights (seeded)
    fresh = tasks.prepare("fashion-mnist", cache=EmbeddingCache(enabled=False), num_queries=10)
    assert fresh.encoder.losses == first.encoder.losses
    assert np.allclose(fresh.item_emb, first.item_emb, atol=1e-5)
    # a saved encoder (what an index holds) embeds gallery and queries as the build did
    first.encoder.save(fmnist / "enc")
    loaded = TunedEfficientNetLite.load(fmnist / "enc")
    back = tasks.prepare("fashion-mnist", cache=EmbeddingCache(enabled=False), num_queries=10,
                         encoder=loaded)
    assert back.encoder is loaded and "tune_s" not in back.timings
    assert np.allclose(back.item_emb, first.item_emb, atol=1e-5)
    assert np.allclose(back.query_emb, first.query_emb, atol=1e-5)


def test_frozen_tower_embeds_with_the_imagenet_weights(fmnist):
    from genir.encoders.towers import EfficientNetLiteTower

    data = tasks.prepare("fashion-mnist", cache=EmbeddingCache(enabled=False), num_queries=10,
                         tune_tower=False)
    assert data.encoder is None and data.encoder_spec["type"] == "efficientnet-lite0"
    tower = EfficientNetLiteTower(image_size=64)
    assert np.allclose(data.query_emb, tower.encode_images(data.query_source), atol=1e-4)
