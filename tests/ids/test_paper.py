"""The paper tokenizers: hierarchical k-means (DSI/NCI, IRGen's HKM baseline) and IRGen's
classification-supervised RQ (eq. 1-4), on tiny seeded synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import clustered
from genir.ids.hkmeans import HierarchicalKMeansTokenizer, _cluster_seed
from genir.ids.irgen import IRGenConfig, IRGenTokenizer, irgen_loss
from genir.ids.kmeans import kmeans
from genir.ids.rq import ResidualQuantizer, RQConfig

# ---------------------------------------------------------------- hierarchical k-means


def _naive_descent(tok: HierarchicalKMeansTokenizer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference encode: per item, per level, argmin over its parent's children in float64
    numpy -> (codes, clear): clear[i] unless some level's best and second-best distances
    lie within 1e-5 of each other, where the tokenizer's float32 products may choose either
    (how they round differs by CPU)."""
    out = np.empty((len(x), tok.config.num_levels), dtype=np.int64)
    clear = np.ones(len(x), dtype=bool)
    for i, row in enumerate(x):
        node = 0
        for level, (centroids, offsets) in enumerate(zip(tok.centroids, tok.offsets, strict=True)):
            children = centroids[offsets[node]:offsets[node + 1]].numpy().astype(np.float64)
            dist = np.square(children - row).sum(1)
            out[i, level] = int(dist.argmin())
            if len(dist) > 1 and np.diff(np.sort(dist)[:2])[0] <= 1e-5:
                clear[i] = False
            node = int(offsets[node]) + out[i, level]
    return out, clear


def assert_codes_match_naive(tok: HierarchicalKMeansTokenizer, x: np.ndarray,
                             codes: np.ndarray) -> None:
    """`codes` equal the reference descent's for every item whose every choice is clear."""
    ref, clear = _naive_descent(tok, x)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(codes[clear], ref[clear])


def test_hkmeans_codes_in_range_deterministic_and_seeded():
    x, _, _ = clustered(500, num_classes=5, dim=8, seed=2)
    cfg = RQConfig(num_levels=3, codebook_size=4, seed=1)
    tok = HierarchicalKMeansTokenizer(cfg).fit(x)
    codes = tok.encode(x)
    assert codes.shape == (500, 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 4 and tok.codebook_sizes == (4, 4, 4)
    assert len(tok.reseeds) == 3
    # level 1 is plain k-means of everything with the tokenizer's seed
    assert torch.equal(tok.centroids[0], kmeans(torch.from_numpy(x), 4, iters=cfg.kmeans_iters, seed=1,
                                                max_points=cfg.max_fit_points)[0])
    again = HierarchicalKMeansTokenizer(RQConfig(num_levels=3, codebook_size=4, seed=1)).fit(x)
    assert np.array_equal(again.encode(x), codes)
    other = HierarchicalKMeansTokenizer(RQConfig(num_levels=3, codebook_size=4, seed=2)).fit(x)
    assert not all(torch.equal(a, b) for a, b in zip(other.centroids, tok.centroids, strict=True))


def test_hkmeans_children_are_nested_under_their_parent():
    x, _, _ = clustered(400, num_classes=3, dim=6, seed=3)
    cfg = RQConfig(num_levels=3, codebook_size=4, seed=5)
    tok = HierarchicalKMeansTokenizer(cfg).fit(x)
    codes = tok.encode(x)
    level1 = tok.decode(codes, num_levels=1)
    level2 = tok.decode(codes, num_levels=2)
    for parent in range(4):
        members = codes[:, 0] == parent
        assert members.sum() > 4
        assert (level1[members] == level1[members][0]).all()  # one shared level-1 centroid
        # the parent's children are k-means of the parent's items only (a plain reference run)
        expected, _ = kmeans(torch.from_numpy(x[members]), 4, iters=cfg.kmeans_iters,
                             seed=_cluster_seed(cfg.seed, 1, parent), max_points=cfg.max_fit_points)
        children = tok.centroids[1][tok.offsets[1][parent]:tok.offsets[1][parent + 1]]
        assert torch.equal(children, expected)
    # a code means different things under different parents
    i, j = next((i, j) for i in range(len(x)) for j in range(len(x))
                if codes[i, 1] == codes[j, 1] and codes[i, 0] != codes[j, 0])
    assert not np.array_equal(level2[i], level2[j])
    # the stored greedy descent agrees with a per-item numpy reference
    assert_codes_match_naive(tok, x, codes)


def test_hkmeans_encode_reproduces_fit_and_handles_unseen_items():
    x, _, _ = clustered(600, num_classes=4, dim=8, seed=4)
    tok = HierarchicalKMeansTokenizer(RQConfig(num_levels=4, codebook_size=5)).fit(x)
    assert tok.fit_codes is not None and np.array_equal(tok.encode(x), tok.fit_codes)
    # reversed order and a batch of one give the same codes
    assert np.array_equal(tok.encode(x[::-1].copy())[::-1], tok.fit_codes)
    i = int(np.flatnonzero(_naive_descent(tok, x)[1])[0])   # (a batch of one: other products)
    assert np.array_equal(tok.encode(x[i:i + 1]), tok.fit_codes[i:i + 1])
    new, _, _ = clustered(100, num_classes=4, dim=8, seed=5)
    new_codes = tok.encode(new)
    assert_codes_match_naive(tok, new, new_codes)
    assert tok.decode(new_codes).shape == (100, 8)


def test_hkmeans_small_clusters_give_each_distinct_point_its_own_code():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    x = np.concatenate([x, x[:1]])  # an exact duplicate of item 0
    tok = HierarchicalKMeansTokenizer(RQConfig(num_levels=2, codebook_size=16)).fit(x)
    codes = tok.encode(x)
    assert len(np.unique(codes[:10, 0])) == 10 and np.array_equal(codes[10], codes[0])
    assert np.array_equal(tok.decode(codes, num_levels=1), x)  # the centroid is the point itself
    assert (codes[:, 1] == 0).all() and tok.reseeds == [0, 0]


def test_hkmeans_state_round_trip_through_safetensors(tmp_path):
    x, _, _ = clustered(300, num_classes=4, dim=8, seed=6)
    cfg = RQConfig(num_levels=3, codebook_size=4)
    tok = HierarchicalKMeansTokenizer(cfg).fit(x)
    save_file(tok.state_dict(), tmp_path / "hkm.safetensors")
    loaded = HierarchicalKMeansTokenizer.from_state(cfg, load_file(tmp_path / "hkm.safetensors"))
    assert loaded.is_fitted
    new, _, _ = clustered(50, num_classes=4, dim=8, seed=7)
    assert np.array_equal(loaded.encode(new), tok.encode(new))
    assert np.array_equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_hkmeans_bad_input_is_rejected():
    tok = HierarchicalKMeansTokenizer(RQConfig(num_levels=2, codebook_size=3))
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(np.zeros((2, 4), np.float32))
    x, _, _ = clustered(60, dim=4)
    tok.fit(x)
    with pytest.raises(ValueError, match="width"):
        tok.encode(np.zeros((2, 5), np.float32))
    codes = tok.encode(x)
    codes[0, 0] = 3  # out of range for K = 3
    with pytest.raises(ValueError, match="not a child"):
        tok.decode(codes)
    with pytest.raises(ValueError, match="cannot decode"):
        tok.decode(codes[:, :1])


# ---------------------------------------------------------------- IRGen loss (eq. 1-4)


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_irgen_loss_on_a_hand_made_two_point_case():
    f = torch.tensor([[1.2, 0.1], [0.2, 0.9]])
    codebooks = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.5, 0.0], [0.0, 0.5]])]
    labels = torch.tensor([0, 1])
    out = irgen_loss(f, codebooks, labels, lambda v: v, lambda_partial=0.5, lambda_commit=0.2)
    # eq. (1)-(2) by hand: point 0 -> (1,0) then (0.5,0); point 1 -> (0,1) then (0.5,0)
    assert out.codes.tolist() == [[0, 0], [1, 0]]
    # logits = the vector itself, 2 classes: CE = softplus(z_other - z_label)
    cls = (_softplus(0.1 - 1.2) + _softplus(0.2 - 0.9)) / 2
    partial = _softplus(0 - 1.0) + (_softplus(0 - 1.5) + _softplus(0.5 - 1.0)) / 2
    # residuals: r1 = (0.2, 0.1), (0.2, -0.1); r2 = (-0.3, 0.1), (-0.3, -0.1)
    commit = (0.05 + 0.05) / 2 + (0.10 + 0.10) / 2
    assert out.cls.item() == pytest.approx(cls, abs=1e-6)
    assert out.partial_cls.item() == pytest.approx(partial, abs=1e-6)
    assert out.commit.item() == pytest.approx(commit, abs=1e-6)
    assert out.loss.item() == pytest.approx(cls + 0.5 * partial + 0.2 * commit, abs=1e-6)


def test_irgen_loss_gradients_follow_stop_gradient_and_straight_through():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    projection, classifier = nn.Linear(5, 4), nn.Linear(4, 3)
    codebooks = [torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    out = irgen_loss(projection(x), codebooks, labels, classifier, lambda_partial=0.7, lambda_commit=0.3)
    assert out.loss.shape == () and out.codes.shape == (6, 2) and out.codes.dtype == torch.int64
    out.loss.backward()
    # the network learns; the codebooks sit behind sg[.] / straight-through only (eq. 3-4)
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert classifier.weight.grad is not None and classifier.weight.grad.abs().sum() > 0
    assert all(c.grad is None for c in codebooks)

    # d loss / d f against the hand-derived gradient: the CE gradient at f, plus λ1 times the
    # CE gradient taken at each reconstruction f_hat (straight-through copies it to f), plus
    # λ2 * 2 (f - f_hat) per level (sg[f_hat] is a constant in eq. 4)
    weight = torch.randn(3, 4)
    f = torch.randn(6, 4, requires_grad=True)
    books = [c.detach() for c in codebooks]
    out = irgen_loss(f, books, labels, lambda v: v @ weight.T, lambda_partial=0.7, lambda_commit=0.3)
    out.loss.backward()
    onehot = torch.nn.functional.one_hot(labels, 3).float()

    def ce_grad(v: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(v @ weight.T, 1) - onehot) @ weight / len(v)

    expected = ce_grad(f.detach())
    recon = torch.zeros(6, 4)
    for level, book in enumerate(books):
        recon = recon + book[out.codes[:, level]]
        expected += 0.7 * ce_grad(recon) + 0.3 * 2 * (f.detach() - recon) / len(f)
    assert f.grad is not None and torch.allclose(f.grad, expected, atol=1e-6)


# ---------------------------------------------------------------- IRGen tokenizer


def _two_modes_per_class(num_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 Gaussian blobs, class = blob % 4: each class is two unrelated blobs, so k-means with
    K = 4 merges blobs of different classes, and only the labels say which belong together."""
    x, blob, _ = clustered(num_items, num_classes=8, dim=16, noise=0.5, seed=seed)
    return x, blob % 4


def _purity(codes: np.ndarray, labels: np.ndarray) -> float:
    """Share of items in their code's majority class."""
    return sum(np.bincount(labels[codes == c]).max() for c in np.unique(codes)) / len(labels)


def _small_irgen(**overrides) -> IRGenConfig:
    base = dict(num_levels=2, codebook_size=4, steps=300, batch_size=64, lr=1e-2, warmup_steps=10,
                codebook_refit_every=50, projection_dim=8, seed=0)
    return IRGenConfig(**{**base, **overrides})


def test_irgen_level1_codes_are_purer_in_class_than_plain_rq():
    x, labels = _two_modes_per_class(900)  # same blobs: fit on 600, check 300 unseen
    x, labels, new_x, new_labels = x[:600], labels[:600], x[600:], labels[600:]
    rq = ResidualQuantizer(RQConfig(num_levels=2, codebook_size=4)).fit(x)
    tok = IRGenTokenizer(_small_irgen()).fit(x, labels)
    rq_purity = _purity(rq.encode(x)[:, 0], labels)
    irgen_purity = _purity(tok.encode(x)[:, 0], labels)
    # measured: RQ 0.52 (it merges blobs of different classes), IRGen 0.99 (seeds 0-3 alike)
    assert irgen_purity > rq_purity + 0.3, (rq_purity, irgen_purity)
    assert irgen_purity > 0.9 and _purity(tok.encode(new_x)[:, 0], new_labels) > 0.9
    assert tok.history[-1]["cls"] < tok.history[0]["cls"]


def test_irgen_is_deterministic_and_round_trips_through_safetensors(tmp_path):
    x, labels = _two_modes_per_class(200)
    cfg = _small_irgen(steps=60, hidden_dim=16)
    tok = IRGenTokenizer(cfg).fit(x, labels)
    codes = tok.encode(x)
    assert codes.shape == (200, 2) and codes.min() >= 0 and codes.max() < 4
    assert tok.decode(codes).shape == (200, 8) and tok.codebook_sizes == (4, 4)
    assert len(tok.reseeds) == 2
    assert np.array_equal(IRGenTokenizer(cfg).fit(x, labels).encode(x), codes)
    # string labels work the same as their integer ids
    assert np.array_equal(IRGenTokenizer(cfg).fit(x, np.array(list("abcd"))[labels]).encode(x), codes)
    save_file(tok.state_dict(), tmp_path / "irgen.safetensors")
    state = load_file(tmp_path / "irgen.safetensors")
    # the network's shape is read from the tensors: the RQ fields alone are enough
    loaded = IRGenTokenizer.from_state(RQConfig(num_levels=2, codebook_size=4), state)
    assert np.array_equal(loaded.encode(x), codes)
    assert np.array_equal(loaded.decode(codes), tok.decode(codes))


def test_irgen_needs_labels_and_rejects_bad_input():
    x, labels = _two_modes_per_class(50)
    tok = IRGenTokenizer(_small_irgen(steps=5))
    with pytest.raises(ValueError, match="needs class labels"):
        tok.fit(x)
    with pytest.raises(ValueError, match="one label per item"):
        tok.fit(x, labels[:-1])
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(x)
    tok.fit(x, labels)
    with pytest.raises(ValueError, match="width"):
        tok.encode(x[:, :3])
    with pytest.raises(ValueError):
        IRGenConfig(batch_size=0)
