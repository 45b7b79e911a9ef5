"""EMA codebooks, GENIUS' and AVG's tokenizers: losses on hand-made tensors, EMA against a
hand computation, seeded determinism, modality-first IDs, query augmentation statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genir.ids.avg import AVGConfig, AVGTokenizer, avg_loss
from genir.ids.ema import EMACodebook, EMAResidualQuantizer, commitment_loss
from genir.ids.genius import (
    Fusion,
    GeniusConfig,
    GeniusTokenizer,
    augment_queries,
    contrastive_loss,
    genius_loss,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation, which on a busy
    machine turns a sub-second fit into tens of seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def modality_mixture(num_items: int = 240, dim: int = 16, gap: float = 1.5, seed: int = 0):
    """Targets = semantic class center + modality offset + noise (the offset plays CLIP's
    modality gap); each query carries its class and, as an instruction would, half of its
    target's modality offset. Returns (targets, queries, modality, classes), unit rows."""
    rng = np.random.default_rng(seed)
    semantic = rng.normal(size=(6, dim))
    offset = gap * rng.normal(size=(3, dim))
    classes = rng.integers(6, size=num_items)
    modality = np.arange(num_items) % 3
    targets = semantic[classes] + offset[modality] + 0.3 * rng.normal(size=(num_items, dim))
    queries = semantic[classes] + 0.5 * offset[modality] + 0.3 * rng.normal(size=(num_items, dim))
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return targets.astype(np.float32), queries.astype(np.float32), modality, classes


def small_genius(**overrides) -> GeniusConfig:
    settings = dict(num_levels=3, codebook_size=8, hidden_dim=32, steps=60, batch_size=60, lr=1e-3)
    settings.update(overrides)
    return GeniusConfig(**settings)


def small_avg(**overrides) -> AVGConfig:
    settings = dict(num_levels=3, codebook_size=12, hidden_dim=32, steps=60, batch_size=60, lr=1e-2)
    settings.update(overrides)
    return AVGConfig(**settings)


# --- EMA codebooks -------------------------------------------------------------------------


def test_ema_update_matches_a_hand_computation():
    book = EMACodebook(2, 2, decay=0.5, eps=0.1, dead_threshold=0.0)
    book.centers.copy_(torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
    book.cluster_size.copy_(torch.tensor([2.0, 2.0]))
    book.embed_sum.copy_(torch.tensor([[0.0, 0.0], [8.0, 8.0]]))
    book.initialized.fill_(True)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [4.0, 6.0]])
    codes = book.assign(x)
    assert codes.tolist() == [0, 0, 1]
    book.update(x, codes)
    # N = 0.5 * [2, 2] + 0.5 * [2 hits, 1 hit];  m = 0.5 * old sums + 0.5 * batch sums
    n0, n1 = 0.5 * 2 + 0.5 * 2, 0.5 * 2 + 0.5 * 1            # 2.0, 1.5
    m0, m1 = [0.5 * 0 + 0.5 * 1, 0.5 * 0 + 0.5 * 1], [0.5 * 8 + 0.5 * 4, 0.5 * 8 + 0.5 * 6]
    total = n0 + n1
    s0, s1 = [(n + 0.1) / (total + 2 * 0.1) * total for n in (n0, n1)]  # Laplace smoothing
    expected = torch.tensor([[m0[0] / s0, m0[1] / s0], [m1[0] / s1, m1[1] / s1]])
    assert torch.allclose(book.cluster_size, torch.tensor([n0, n1]))
    assert torch.allclose(book.embed_sum, torch.tensor([m0, m1]))
    assert torch.allclose(book.centers, expected, atol=1e-6), (book.centers, expected)
    assert book.reseeds == 0


def test_ema_dead_code_is_reseeded_from_the_batch_and_counted():
    book = EMACodebook(3, 2, decay=0.5, eps=0.0, dead_threshold=0.5)
    book.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    book.cluster_size.fill_(1.0)
    book.embed_sum.copy_(book.centers)
    book.initialized.fill_(True)
    x = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.9, 1.0], [1.0, 0.9]])
    book.update(x, book.assign(x))  # code 2 unused: N_2 = 0.5, not yet below 0.5
    assert book.reseeds == 0 and book.centers[2, 0] == 100.0
    book.update(x, book.assign(x))  # N_2 = 0.25 < 0.5: re-seeded from a batch row
    assert book.reseeds == 1
    assert any(torch.equal(book.centers[2], row) for row in x)
    assert book.cluster_size[2] == 1.0


def test_kmeans_init_is_deterministic_per_seed():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32))
    books = []
    for seed in (3, 3, 4):
        book = EMACodebook(8, 6, seed=seed)
        book.init_from(x)
        books.append(book.centers.clone())
    assert torch.equal(books[0], books[1])
    assert not torch.equal(books[0], books[2])
    # the quantizer initializes every level on its first training batch, the same way each run
    runs = []
    for _ in range(2):
        rq = EMAResidualQuantizer(6, (3, 8, 8), seed=5).train()
        rq(x)
        runs.append([c.clone() for c in rq.codebooks])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert [c.shape[0] for c in runs[0]] == [3, 8, 8]


def test_commitment_loss_value_and_stop_gradient():
    residuals = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]], requires_grad=True)  # (B=1, M=2, D=2)
    codewords = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    loss = commitment_loss(residuals, codewords)
    # eq. (7): level 1 mean((1, 4)) = 2.5, level 2 mean((0, 1)) = 0.5, summed over levels
    assert math.isclose(float(loss.detach()), 3.0)
    loss.backward()
    assert residuals.grad is not None and torch.allclose(residuals.grad, residuals.detach())  # 2r / 2
    assert codewords.grad is None  # sg(e)


def test_quantizer_is_straight_through_and_fixes_first_codes():
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32))
    rq = EMAResidualQuantizer(4, (3, 5), seed=0).train()
    rq(x)
    rq.eval()
    z = x.clone().requires_grad_(True)
    quantized, codes, commit = rq(z)
    assert quantized.shape == (30, 4) and codes.shape == (30, 2) and codes.dtype == torch.int64
    assert torch.allclose(quantized, rq.decode(codes), atol=1e-6)  # forward value is ẑ
    quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))                 # gradient copied to z
    forced = torch.full((30,), 2)
    assert (rq(x, first_codes=forced).codes[:, 0] == 2).all()
    with pytest.raises(RuntimeError, match="no codebooks"):
        EMAResidualQuantizer(4, (3,)).eval()(x)


# --- GENIUS --------------------------------------------------------------------------------


def test_contrastive_loss_hand_value_and_gradients():
    zq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    zc = torch.tensor([[2.0, 0.0], [0.0, 3.0]], requires_grad=True)  # cosine ignores length
    loss = contrastive_loss(zq, zc, temperature=1.0)
    # each row: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1)
    assert math.isclose(float(loss.detach()), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    loss.backward()
    assert zq.grad is not None and zq.grad.abs().sum() > 0
    assert zc.grad is not None and zc.grad.abs().sum() > 0
    sharp = contrastive_loss(zq.detach(), zc.detach())  # τ = 0.01: positives dominate
    assert float(sharp) < 1e-6


def test_genius_loss_combines_the_three_terms():
    zq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    zc = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    zq_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    zc_hat = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    out = genius_loss(zq, zc, zq_hat, zc_hat, torch.tensor(0.5), temperature=1.0, beta=2.0, gamma=3.0)
    cl = math.log(1 + math.exp(-1))
    mse = 1.0 / 4  # one differing element out of four
    assert math.isclose(float(out.cl), cl, rel_tol=1e-6) and math.isclose(float(out.mse), mse)
    assert math.isclose(float(out.loss.detach()), cl + 2.0 * 0.5 + 3.0 * mse, rel_tol=1e-6)
    out.loss.backward()
    for t in (zq, zc, zq_hat, zc_hat):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_fusion_mixes_with_a_sigmoid_gate():
    fusion = Fusion(4, 8)
    x, y = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    lam = fusion.gate(torch.cat([x, y], 1))
    assert ((lam > 0) & (lam < 1)).all()
    out = fusion(x, y)
    assert out.shape == (5, 4)
    # the MLP starts at zero, so h is exactly the gated mix λx + (1 - λ)y
    assert torch.allclose(out, lam * x + (1 - lam) * y, atol=1e-6)
    out.square().sum().backward()
    assert fusion.mlp[2].weight.grad.abs().sum() > 0  # the zero layer still learns
    assert fusion.gate[0].weight.grad.abs().sum() > 0 and x.grad is not None and y.grad is not None


def test_genius_first_code_separates_the_three_modalities():
    targets, queries, modality, _ = modality_mixture()
    tok = GeniusTokenizer(small_genius()).fit(targets, modality, queries)
    assert tok.codebook_sizes == (3, 8, 8)
    assert tok.modality_agreement == 1.0
    assert np.array_equal(tok.assign_modality(targets, modality), modality)  # the quantizer's own pick
    codes = tok.encode(targets, modality)
    assert codes.shape == (len(targets), 3) and codes.dtype == np.int64
    assert np.array_equal(codes[:, 0], modality)
    assert codes[:, 1:].max() < 8 and len(tok.reseeds) == 3
    assert tok.decode(codes).shape == (len(targets), 16)
    assert tok.history[-1]["cl"] < tok.history[0]["cl"]  # the contrastive term is trained


def test_genius_given_modality_codes_work_where_the_gap_is_small():
    targets, queries, modality, _ = modality_mixture(gap=0.5)
    learned = GeniusTokenizer(small_genius(steps=0)).fit(targets, modality, queries)
    given = GeniusTokenizer(small_genius(steps=0, modality_codes="given")).fit(targets, modality, queries)
    # with a weak modality gap, k-means' three groups are not the modalities ...
    assert learned.modality_agreement is not None and learned.modality_agreement < 0.9
    # ... while codes initialized from the known modalities sit at each modality's mean
    z = given.embed(targets, modality)
    for m in range(3):
        assert torch.allclose(given.rq.codebooks[0][m], z[modality == m].mean(0), atol=0.05)
    assert np.array_equal(given.encode(targets, modality)[:, 0], modality)
    # during training too, code m follows the rows labelled m: with labels unrelated to the
    # geometry the three "given" codes all sit near the overall mean, the learned ones apart
    targets, queries, _, _ = modality_mixture()
    labels = np.random.default_rng(0).integers(3, size=len(targets))
    spread = {}
    for mode in ("learned", "given"):
        tok = GeniusTokenizer(small_genius(steps=20, modality_codes=mode)).fit(targets, labels, queries)
        spread[mode] = float(torch.cdist(tok.rq.codebooks[0], tok.rq.codebooks[0]).max())
    assert spread["given"] < 0.5 < 0.8 < spread["learned"], spread
    with pytest.raises(ValueError, match="learned, given"):
        GeniusConfig(modality_codes="forced")


def test_genius_is_deterministic_and_round_trips_through_state():
    targets, queries, modality, _ = modality_mixture(num_items=120)
    a = GeniusTokenizer(small_genius(steps=20)).fit(targets, modality, queries)
    b = GeniusTokenizer(small_genius(steps=20)).fit(targets, modality, queries)
    assert np.array_equal(a.encode(targets, modality), b.encode(targets, modality))
    restored = GeniusTokenizer.from_state(GeniusConfig(num_levels=3, codebook_size=8), a.state_dict())
    assert np.array_equal(restored.encode(targets, modality), a.encode(targets, modality))
    assert np.allclose(restored.decode(a.encode(targets, modality)), a.decode(a.encode(targets, modality)))
    # (N, 2, D) input gives the image and text parts explicitly: same as routing by modality
    parts = np.zeros((len(targets), 2, targets.shape[1]), np.float32)
    parts[:, 0][modality != 1] = targets[modality != 1]
    parts[:, 1][modality != 0] = targets[modality != 0]
    assert np.array_equal(a.encode(parts, modality), a.encode(targets, modality))


def test_genius_rejects_bad_input():
    targets, _, modality, _ = modality_mixture(num_items=30)
    tok = GeniusTokenizer(small_genius(steps=1))
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(targets, modality)
    with pytest.raises(ValueError, match="modality"):
        tok.fit(targets)
    with pytest.raises(ValueError, match="modality values"):
        tok.fit(targets, np.full(30, 3))
    with pytest.raises(ValueError, match="pair row by row"):
        tok.fit(targets, modality, targets[:10])


def test_augment_queries_sample_mode_is_eq_11():
    zq, zc = torch.ones(20000, 3), torch.zeros(20000, 3)
    mixed = augment_queries(zq, zc, alpha=2.0, mode="sample", generator=torch.Generator().manual_seed(0))
    assert mixed.shape == (20000, 3)
    mu = mixed[:, 0]
    assert torch.equal(mixed, mu[:, None].expand(-1, 3))  # one μ per sample
    assert abs(float(mu.mean()) - 0.5) < 0.01
    # Beta(2, 2) variance is 1 / (4 (2α + 1)) = 0.05 (uniform would give 0.083)
    assert abs(float(mu.var()) - 0.05) < 0.003
    # the same draw applied the other way round: μ·0 + (1 - μ)·1
    other = augment_queries(zc, zq, mode="sample", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mixed + other, torch.ones_like(mixed))


def test_augment_queries_dimension_mode_mixes_per_dimension_with_square_roots():
    zq, zc = torch.ones(4000, 8), torch.zeros(4000, 8)
    mixed = augment_queries(zq, zc, mode="dimension", generator=torch.Generator().manual_seed(1))
    mu = mixed.square()  # sqrt(μ)·1 + sqrt(1 - μ)·0
    assert abs(float(mu.mean()) - 0.5) < 0.01
    assert float(mu.std(1).mean()) > 0.1  # μ differs across a row's dimensions
    other = augment_queries(zc, zq, mode="dimension", generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mixed.square() + other.square(), torch.ones_like(mixed), atol=1e-5)


def test_augment_queries_is_seeded_and_validates():
    zq, zc = torch.randn(5, 4), torch.randn(5, 4)
    a = augment_queries(zq, zc, generator=torch.Generator().manual_seed(7))
    b = augment_queries(zq, zc, generator=torch.Generator().manual_seed(7))
    c = augment_queries(zq, zc, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="sample, dimension"):
        augment_queries(zq, zc, mode="mixup")
    with pytest.raises(ValueError, match="alpha"):
        augment_queries(zq, zc, alpha=0.0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        augment_queries(zq, zc[:3])


# --- AVG -----------------------------------------------------------------------------------


def test_avg_loss_hand_value_and_stop_gradient():
    v = torch.tensor([[1.0, 0.0]], requires_grad=True)
    v_t = torch.tensor([[0.0, 1.0]], requires_grad=True)
    partial_sums = torch.tensor([[[0.5, 0.0], [1.0, 0.5]]], requires_grad=True)  # ẑ^(1), ẑ^(2)
    v_hat = torch.tensor([[1.0, 1.0]], requires_grad=True)
    out = avg_loss(v, v_t, partial_sums, v_hat)
    # recon ||(0, -1)||² = 1; commit ||(0.5, 0)||² + ||(0, -0.5)||² = 0.5; align ||(1, 0)||² = 1
    assert (float(out.recon), float(out.commit), float(out.align)) == (1.0, 0.5, 1.0)
    assert math.isclose(float(out.loss.detach()), 2.5)
    out.loss.backward()
    assert partial_sums.grad is None  # sg(ẑ^(d)) in eq. (4)
    # d/dv: recon 2(v - v̂) = (0, -2); commit Σ_d 2(v - ẑ^(d)) = (1, -1)
    assert torch.allclose(v.grad, torch.tensor([[1.0, -3.0]]))
    # d/dv̂: recon -2(v - v̂) = (0, 2); align 2(v̂ - v_t) = (2, 0)
    assert torch.allclose(v_hat.grad, torch.tensor([[2.0, 2.0]]))
    assert torch.allclose(v_t.grad, torch.tensor([[-2.0, 0.0]]))
    weighted = avg_loss(v, v_t, partial_sums, v_hat, align_weight=0.0)
    assert math.isclose(float(weighted.loss.detach()), 1.5)


def test_avg_shared_and_per_level_codebooks():
    image, text, _, _ = modality_mixture(num_items=180, seed=2)
    shared = AVGTokenizer(small_avg(steps=5)).fit(image, text)
    per_level = AVGTokenizer(small_avg(steps=5, shared_codebook=False)).fit(image, text)
    assert shared.codebook_sizes == per_level.codebook_sizes == (12, 12, 12)
    assert [tuple(c.shape) for c in shared.codebooks] == [(12, 16)]
    assert [tuple(c.shape) for c in per_level.codebooks] == [(12, 16)] * 3
    assert set(shared.state_dict()) >= {"codebook"} and "codebook.0" not in shared.state_dict()
    assert {"codebook.0", "codebook.1", "codebook.2"} <= set(per_level.state_dict())
    for tok in (shared, per_level):
        codes = tok.encode(image)
        assert codes.shape == (180, 3) and codes.dtype == np.int64 and codes.max() < 12
        assert len(tok.reseeds) == 3
    # a shared codebook's codes may repeat across levels from one pool of N vokens
    assert len(np.unique(shared.encode(image))) <= 12
    with pytest.raises(ValueError, match="one code per level"):
        AVGConfig(num_levels=4, codebook_size=3)


def test_avg_alignment_pulls_reconstructions_toward_captions():
    image, caption, _, _ = modality_mixture(num_items=180, seed=3)
    caption = np.roll(caption, 1, axis=1)  # a caption space unlike the image space
    aligned = AVGTokenizer(small_avg(steps=80)).fit(image, caption)
    plain = AVGTokenizer(small_avg(steps=80, align_weight=0.0)).fit(image, caption)

    def caption_gap(tok: AVGTokenizer) -> float:
        return float(np.square(tok.decode(tok.encode(image)) - caption).sum(1).mean())

    assert caption_gap(aligned) < 0.7 * caption_gap(plain)
    assert not np.array_equal(aligned.encode(image), plain.encode(image))  # the vokens change too


def test_avg_is_deterministic_and_round_trips_through_state():
    image, text, _, _ = modality_mixture(num_items=120, seed=4)
    for shared in (True, False):
        a = AVGTokenizer(small_avg(steps=10, shared_codebook=shared)).fit(image, text)
        b = AVGTokenizer(small_avg(steps=10, shared_codebook=shared)).fit(image, text)
        assert np.array_equal(a.encode(image), b.encode(image))
        restored = AVGTokenizer.from_state(AVGConfig(num_levels=3), a.state_dict())
        assert restored.config.shared_codebook is shared and restored.codebook_sizes == (12, 12, 12)
        assert np.array_equal(restored.encode(image), a.encode(image))
        assert np.allclose(restored.decode(a.encode(image)), a.decode(a.encode(image)))
    with pytest.raises(ValueError, match="caption"):
        AVGTokenizer(small_avg()).fit(image)
    with pytest.raises(RuntimeError, match="not fitted"):
        AVGTokenizer(small_avg()).encode(image)
