"""Aligned encoder (InfoNCE projection heads), embedding cache and the EfficientNet tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from genir.encoders.aligned import AlignConfig, AlignedEncoder, ProjectionHeads
from genir.encoders.base import l2_normalize
from genir.encoders.cache import EmbeddingCache, content_digest


class FakeTower:
    """Features = a fixed random linear view of a shared latent, so pairs are alignable."""

    def __init__(self, latents: np.ndarray, dim: int, seed: int) -> None:
        self.latents = latents
        self.dim = dim
        self.proj = np.random.default_rng(seed).normal(size=(latents.shape[1], dim))
        self.calls = 0

    def cache_key(self) -> str:
        return f"fake:{self.dim}"

    def _features(self, rows) -> np.ndarray:
        self.calls += 1
        return l2_normalize(self.latents[np.asarray(rows)] @ self.proj)

    def encode_images(self, images, progress=False) -> np.ndarray:
        return self._features([int(x[0, 0]) for x in images])

    def encode_texts(self, texts, progress=False) -> np.ndarray:
        return self._features([int(t.split()[-1]) for t in texts])


@pytest.fixture
def setup(tmp_path):
    latents = np.random.default_rng(0).normal(size=(200, 8))
    images = [np.full((2, 2), i, dtype=np.int32) for i in range(200)]
    texts = [f"caption of item {i}" for i in range(200)]
    enc = AlignedEncoder(image_tower=FakeTower(latents, 24, 1), text_tower=FakeTower(latents, 16, 2),
                         config=AlignConfig(dim=8, steps=150, batch_size=64, lr=1e-2),
                         cache=EmbeddingCache(tmp_path / "cache"))
    return enc, images, texts


def test_infonce_heads_align_pairs(setup):
    enc, images, texts = setup
    enc.fit(images[:150], texts[:150])
    zi, zt = enc.encode_images(images[150:]), enc.encode_texts(texts[150:])
    assert zi.shape == (50, 8) and np.allclose(np.linalg.norm(zi, axis=1), 1, atol=1e-5)
    top1 = (zt @ zi.T).argmax(1)
    assert (top1 == np.arange(50)).mean() > 0.5  # held-out pairs; chance is 0.02


def test_infonce_loss_known_value():
    heads = ProjectionHeads(2, 2, AlignConfig(dim=2, init_temperature=1.0))
    with torch.no_grad():
        for lin in (heads.image, heads.text):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = I: each row's softmax puts e / (e + 1) on its pair
    expected = -np.log(np.e / (np.e + 1))
    assert heads.loss(x, x).item() == pytest.approx(expected, rel=1e-5)


def test_save_load_round_trip(setup, tmp_path):
    enc, images, texts = setup
    enc.fit(images, texts)
    enc.save(tmp_path / "enc")
    loaded = AlignedEncoder.load(tmp_path / "enc", image_tower=enc.image_tower,
                                 text_tower=enc.text_tower, cache=EmbeddingCache(enabled=False))
    assert np.array_equal(loaded.encode_texts(texts[:5]), enc.encode_texts(texts[:5]))
    assert loaded.cache_key() == enc.cache_key()


def test_unfitted_encoder_refuses(setup):
    enc, images, _ = setup
    with pytest.raises(RuntimeError, match="not trained"):
        enc.encode_images(images[:2])


def test_cache_hits_on_same_content_and_misses_on_changed_content(setup):
    enc, images, texts = setup
    tower = enc.text_tower
    a = enc.text_features(texts)
    b = enc.text_features(texts)
    assert tower.calls == 1 and enc.cache.hits == 1 and np.array_equal(a, b)
    enc.text_features(texts[:-1] + ["caption of item 3"])
    assert tower.calls == 2 and enc.cache.misses == 2


def test_content_digest_reads_file_bytes(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    first = content_digest([str(path)])
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    assert content_digest([str(path)]) != first
    assert content_digest(["a b"]) != content_digest(["a", "b"])


def test_efficientnet_tower_shapes_norms_and_batch_invariance():
    from genir.encoders.towers import EfficientNetLiteTower

    tower = EfficientNetLiteTower(image_size=32)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    a = tower.encode_images(grey, batch_size=5)
    b = tower.encode_images(grey, batch_size=2)
    assert a.shape == (5, 1280) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.allclose(a, b, atol=1e-4)
    # a list of RGBA PIL images takes the general path
    rgba = [Image.fromarray(rng.integers(0, 256, size=(20, 30, 4), dtype=np.uint8), "RGBA")
            for _ in range(2)]
    assert tower.encode_images(rgba).shape == (2, 1280)
