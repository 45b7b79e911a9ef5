"""The fine-tuned EfficientNet-Lite0 top: the stored-trunk path equals a plain forward pass
through a tower holding the tuned weights; training moves only the top; save/load."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from genir.encoders.tuning import TowerTuneConfig, TunedEfficientNetLite, tune_key


@pytest.fixture(scope="module")
def tower():
    from genir.encoders.towers import EfficientNetLiteTower

    return EfficientNetLiteTower(image_size=32)


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes a CNN separates easily: a bright square top-left vs bottom-right."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i, y in enumerate(labels):
        r = slice(2, 12) if y == 0 else slice(16, 26)
        images[i, r, r] = 255
    return images, labels


def _reference(tower, tuned: TunedEfficientNetLite, images: np.ndarray) -> np.ndarray:
    """The obvious way: a whole EfficientNet with the tuned top copied in, run end to end."""
    model = copy.deepcopy(tower.model)
    k = tuned.config.from_block
    for j, block in enumerate(tuned.top.blocks):
        model._blocks[k + j].load_state_dict(block.state_dict())
    model._conv_head.load_state_dict(tuned.top.conv_head.state_dict())
    model._bn1.load_state_dict(tuned.top.bn.state_dict())
    with torch.inference_mode():
        feats = model.extract_features(tower.preprocess(images)).mean((2, 3)).numpy()
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _fit(tower, images, labels, **cfg) -> TunedEfficientNetLite:
    config = TowerTuneConfig(**{"from_block": 11, "steps": 12, "batch_size": 16, **cfg})
    tuned = TunedEfficientNetLite(tower, config)
    return tuned.fit(tuned.trunk(images), labels)


def test_untuned_top_embeds_like_the_frozen_tower(tower):
    images, _ = _images(6)
    tuned = TunedEfficientNetLite(tower, TowerTuneConfig(from_block=8))
    assert np.allclose(tuned.encode_images(images), tower.encode_images(images), atol=2e-3)


def test_training_moves_only_the_top_and_matches_a_plain_forward_pass(tower):
    images, labels = _images(48)
    base = {k: v.clone() for k, v in tower.model.state_dict().items()}
    before = TunedEfficientNetLite(tower, TowerTuneConfig(from_block=11))
    key_before = before.cache_key()
    tuned = _fit(tower, images, labels, lr=3e-3, classifier_lr=1e-2, steps=30)
    # the base tower (trunk and its own top) is untouched
    assert all(torch.equal(base[k], v) for k, v in tower.model.state_dict().items())
    # the top moved, and the cache key with it
    moved = [not torch.equal(a, b) for a, b in zip(before.top.state_dict().values(),
                                                     tuned.top.state_dict().values(), strict=True)]
    assert any(moved) and tuned.cache_key() != key_before
    assert tuned.trunk_key() == before.trunk_key()
    # it learned the two classes
    assert np.mean(tuned.losses[-5:]) < np.mean(tuned.losses[:5])
    assert (tuned.classify(tuned.trunk(images)) == labels).mean() >= 0.9
    # stored trunk + top == one forward pass through a tower holding the tuned weights
    test, _ = _images(8, seed=1)
    assert np.allclose(tuned.encode_images(test), _reference(tower, tuned, test), atol=2e-3)
    assert np.allclose(np.linalg.norm(tuned.encode_images(test), axis=1), 1, atol=1e-5)
    # the grid (patch tokens) pools to the embedding
    from genir.encoders.tokens import image_patch_tokens

    grid = image_patch_tokens(tuned, test)
    pooled = grid.mean(1) / np.linalg.norm(grid.mean(1), axis=1, keepdims=True)
    assert grid.shape == (8, 1, 1280) and np.allclose(pooled, tuned.encode_images(test), atol=1e-4)


def test_fit_is_deterministic_and_resolves_steps_from_passes(tower):
    images, labels = _images(32)
    a = _fit(tower, images, labels, steps=4)
    b = _fit(tower, images, labels, steps=4)
    assert a.cache_key() == b.cache_key() and a.losses == b.losses
    assert TowerTuneConfig(batch_size=256, passes=3).resolved_steps(60_000) == 704
    assert TowerTuneConfig(steps=5).resolved_steps(60_000) == 5


def test_save_load_round_trip(tower, tmp_path):
    images, labels = _images(32)
    tuned = _fit(tower, images, labels, steps=3)
    tuned.save(tmp_path / "enc")
    spec = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert spec["type"] == "efficientnet-lite0-tuned" and spec["config"]["from_block"] == 11
    back = TunedEfficientNetLite.load(tmp_path / "enc", tower=tower)
    assert back.cache_key() == tuned.cache_key()
    assert np.array_equal(back.encode_images(images[:5]), tuned.encode_images(images[:5]))


def test_bad_input_is_named(tower, tmp_path):
    with pytest.raises(ValueError, match="from_block"):
        TowerTuneConfig(from_block=16).check()
    with pytest.raises(ValueError, match="steps"):
        TowerTuneConfig(steps=0).check()
    tuned = TunedEfficientNetLite(tower, TowerTuneConfig(from_block=11, steps=2))
    maps = tuned.trunk(_images(4)[0])
    with pytest.raises(ValueError, match="labels"):
        tuned.fit(maps, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="class ids"):
        tuned.fit(maps, np.array([0.5, 1, 0, 1]))
    with pytest.raises(RuntimeError, match="not tuned"):
        tuned.save(tmp_path / "x")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "encoder.json").write_text(json.dumps({"type": "aligned"}))
    with pytest.raises(ValueError, match="not a tuned"):
        TunedEfficientNetLite.load(tmp_path / "y", tower=tower)


def test_tune_key_follows_labels_and_config():
    labels = np.array([0, 1, 1])
    k = tune_key("d", labels, TowerTuneConfig())
    assert k == tune_key("d", labels.copy(), TowerTuneConfig())
    assert k != tune_key("d", np.array([0, 1, 0]), TowerTuneConfig())
    assert k != tune_key("d", labels, TowerTuneConfig(steps=7))
    assert k != tune_key("e", labels, TowerTuneConfig())
