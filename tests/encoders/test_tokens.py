"""Query token sequences: patch grids, word-piece states, channel PCA (genir.encoders.tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genir.encoders.tokens import TokenPCA, flatten_tokens, image_patch_tokens, text_tokens


class GridTower:
    """feature_map = a (B, C, 2, 3) grid whose cell (i, j) holds the image index, i and j."""

    def feature_map(self, images):
        b = len(images)
        fm = torch.zeros(b, 3, 2, 3)
        for n, img in enumerate(images):
            fm[n, 0] = float(img[0, 0])
            fm[n, 1] = torch.arange(2.0)[:, None]
            fm[n, 2] = torch.arange(3.0)[None, :]
        return fm


def test_patch_tokens_are_grid_cells_row_major():
    images = np.stack([np.full((4, 4), i, dtype=np.uint8) for i in range(5)])
    tokens = image_patch_tokens(GridTower(), images, batch_size=2)
    assert tokens.shape == (5, 6, 3) and tokens.dtype == np.float32
    assert (tokens[3, :, 0] == 3).all()
    assert tokens[0, :, 1:].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


class WordTower:
    class model:  # noqa: N801 - mimics SentenceTransformer.encode(output_value="token_embeddings")
        @staticmethod
        def encode(texts, output_value, batch_size, show_progress_bar, convert_to_numpy):
            assert output_value == "token_embeddings" and not convert_to_numpy
            return [torch.arange(1.0, len(t.split()) + 1)[:, None].repeat(1, 4) for t in texts]


def test_text_tokens_pad_with_zeros_and_cut():
    out = text_tokens(WordTower(), ["a b", "a b c d e f"], max_tokens=4)
    assert out.shape == (2, 4, 4)
    assert out[0, :, 0].tolist() == [1, 2, 0, 0] and (out[0, 2:] == 0).all()
    assert out[1, :, 0].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="max_tokens"):
        text_tokens(WordTower(), ["a"], max_tokens=0)


def test_token_pca_keeps_padding_zero_and_matches_numpy():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(40, 5, 8)).astype(np.float32) @ np.diag(np.arange(1.0, 9.0)).astype(np.float32)
    tokens[::3, 3:] = 0                                   # padding
    pca = TokenPCA(3, seed=0).fit(tokens)
    out = pca.transform(tokens)
    assert out.shape == (40, 5, 3)
    assert (out[::3, 3:] == 0).all() and (out[1::3] != 0).any(-1).all()
    # against a plain SVD of the real rows (up to the sign convention)
    real = tokens.reshape(-1, 8)[(tokens.reshape(-1, 8) != 0).any(1)]
    _, s, vt = np.linalg.svd(real - real.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(pca.components), np.abs(vt[:3].T), atol=1e-4)
    # variance captured in decreasing order, deterministic
    var = out[(tokens != 0).any(-1)].var(0)
    assert var[0] > var[1] > var[2]
    np.testing.assert_array_equal(TokenPCA(3, seed=0).fit(tokens).transform(tokens), out)
    with pytest.raises(RuntimeError, match="not fitted"):
        TokenPCA(2).transform(tokens)


def test_flatten_tokens_layout():
    t = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flat = flatten_tokens(t)
    assert flat.shape == (2, 12) and (flat.reshape(2, 3, 4) == t).all()
    with pytest.raises(ValueError, match="expected"):
        flatten_tokens(t[0])
