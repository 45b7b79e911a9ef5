"""CLIPEncoder on a tiny random CLIP saved to a temp dir: hermetic, no weights downloaded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from fixtures import write_tiny_clip  # noqa: E402
from genir.encoders.base import Encoder  # noqa: E402
from genir.encoders.clip import CLIPEncoder  # noqa: E402

DIM = 16  # projection_dim of the tiny model


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_clip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        write_tiny_clip(path)
    return path


@pytest.fixture(scope="module")
def encoder(model_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return CLIPEncoder(str(model_dir), device="cpu")


def _pictures(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(n)]


TEXTS = ["a cat", "a dog on a sofa", "two red cars", "x", "the quick brown fox 42"]


def test_satisfies_protocol(encoder):
    assert isinstance(encoder, Encoder)
    assert encoder.dim == DIM


def test_shapes_dtype_unit_norm(encoder):
    img = encoder.encode_images(_pictures(3))
    txt = encoder.encode_texts(TEXTS)
    assert img.shape == (3, DIM) and img.dtype == np.float32
    assert txt.shape == (len(TEXTS), DIM) and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)


def test_deterministic(encoder):
    pics = _pictures(2)
    np.testing.assert_array_equal(encoder.encode_images(pics), encoder.encode_images(pics))
    np.testing.assert_array_equal(encoder.encode_texts(TEXTS), encoder.encode_texts(TEXTS))


def test_batch_size_does_not_change_results(encoder):
    pics = _pictures(5)
    np.testing.assert_allclose(encoder.encode_images(pics, batch_size=1),
                               encoder.encode_images(pics, batch_size=3), atol=1e-5)
    # Texts of different lengths: padding differs per batch, results must not.
    np.testing.assert_allclose(encoder.encode_texts(TEXTS, batch_size=1),
                               encoder.encode_texts(TEXTS, batch_size=3), atol=1e-5)


def test_path_pil_and_array_agree(encoder, tmp_path):
    array = _pictures(1, seed=7)[0]
    path = tmp_path / "picture.png"
    Image.fromarray(array).save(path)
    as_path, as_str, as_pil, as_array = encoder.encode_images(
        [path, str(path), Image.open(path), array])
    np.testing.assert_allclose(as_path, as_array, atol=1e-6)
    np.testing.assert_allclose(as_str, as_array, atol=1e-6)
    np.testing.assert_allclose(as_pil, as_array, atol=1e-6)


def test_rgba_and_grayscale_images(encoder):
    rgba = np.random.default_rng(1).integers(0, 256, size=(32, 32, 4), dtype=np.uint8)
    gray = np.random.default_rng(2).integers(0, 256, size=(32, 32), dtype=np.uint8)
    emb = encoder.encode_images([rgba, Image.fromarray(rgba, mode="RGBA"), gray])
    assert emb.shape == (3, DIM) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


def test_different_inputs_differ(encoder):
    txt = encoder.encode_texts(["a cat", "a dog"])
    assert not np.allclose(txt[0], txt[1], atol=1e-3)
    img = encoder.encode_images(_pictures(2))
    assert not np.allclose(img[0], img[1], atol=1e-3)


def test_long_text_is_truncated(encoder):
    long = " ".join(["word"] * 100)  # far past max_position_embeddings=16
    emb = encoder.encode_texts([long, "short"])
    assert emb.shape == (2, DIM) and np.isfinite(emb).all()


def test_text_input_errors(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.encode_texts([])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode_texts(["ok", 3])
    with pytest.raises(TypeError, match="single str"):
        encoder.encode_texts("a cat")


def test_cache_key_stable_across_loads(model_dir, encoder):
    again = CLIPEncoder(str(model_dir), device="cpu")
    assert again.cache_key() == encoder.cache_key()
    assert encoder.cache_key().startswith(f"clip:{model_dir}:{DIM}:")
    shorter = CLIPEncoder(str(model_dir), device="cpu", max_text_length=8)
    assert shorter.cache_key() != encoder.cache_key()


def test_unknown_dtype(model_dir):
    with pytest.raises(ValueError, match="float32"):
        CLIPEncoder(str(model_dir), dtype="float64")


def test_missing_path_names_it(tmp_path):
    missing = str(tmp_path / "no_such_clip")
    with pytest.raises(OSError, match="no_such_clip") as info:
        CLIPEncoder(missing)
    assert missing in str(info.value)
    assert "local directory" in str(info.value)
