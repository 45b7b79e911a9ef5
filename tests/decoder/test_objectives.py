"""AVG's discriminative loss and voken embeddings, GENIUS' query augmentation (decoder side)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genir.decoder import train as train_mod
from genir.decoder.model import CodeDecoder, DecoderConfig, init_code_embeddings, voken_projection
from genir.decoder.train import (
    PairSampler,
    TrainConfig,
    discriminative_loss,
    insert_positive,
    mix_queries,
    train_decoder,
)
from genir.search.trie import CodeTrie


def tiny_decoder(sizes=(4, 3, 5), query_dim=6, seed=0, dropout=0.0) -> CodeDecoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(query_dim=query_dim, codebook_sizes=sizes, d_model=16, num_layers=1,
                        num_heads=2, num_prefix=2, dropout=dropout)
    return CodeDecoder(cfg)


def toy_data(seed=0, num_items=30, num_queries=40):
    rng = np.random.default_rng(seed)
    codes = rng.integers([4, 3, 5], size=(num_items, 3))
    item_emb = rng.normal(size=(num_items, 6)).astype(np.float32)
    targets = rng.integers(num_items, size=num_queries)
    queries = (item_emb[targets] + 0.3 * rng.normal(size=(num_queries, 6))).astype(np.float32)
    return codes, item_emb, queries, PairSampler(np.arange(num_queries), targets)


# --- AVG discriminative loss (eq. 8-10) ---------------------------------------------------

def fixed_logit_decoder() -> CodeDecoder:
    """Logits ignore the input: level 0 p = (0.3, 0.7), level 1 p = (0.5, 0.3, 0.2)."""
    model = tiny_decoder(sizes=(2, 3), dropout=0.1).train()
    with torch.no_grad():
        for head, probs in zip(model.heads, [(0.3, 0.7), (0.5, 0.3, 0.2)], strict=True):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(probs).log())
    return model


# IDs (0,0) p=.15, (0,2) p=.06, (1,1) p=.21, (1,2) p=.14; a beam of 2 keeps (1,1) and (0,0)
@pytest.mark.parametrize("target, expected", [
    ((1, 1), -math.log(0.21 / (0.21 + 0.15))),   # present, best
    ((0, 0), -math.log(0.15 / (0.21 + 0.15))),   # present, second
    ((0, 2), -math.log(0.06 / (0.21 + 0.06))),   # missing: replaces (0, 0), the lowest
    ((1, 2), -math.log(0.14 / (0.21 + 0.14))),
])
def test_dis_loss_equals_hand_computed_softmax(target, expected):
    model = fixed_logit_decoder()
    unique_ids = torch.tensor([[0, 0], [0, 2], [1, 1], [1, 2]])
    trie = CodeTrie.from_unique_ids(unique_ids.numpy())
    loss = discriminative_loss(model, torch.randn(1, 6), torch.tensor([target]), trie,
                               unique_ids, beam_size=2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert model.training  # the search's eval mode is undone


def test_dis_loss_is_batch_mean():
    model = fixed_logit_decoder()
    unique_ids = torch.tensor([[0, 0], [0, 2], [1, 1], [1, 2]])
    trie = CodeTrie.from_unique_ids(unique_ids.numpy())
    loss = discriminative_loss(model, torch.randn(2, 6), torch.tensor([[1, 1], [0, 2]]), trie,
                               unique_ids, beam_size=2)
    expected = (-math.log(0.21 / 0.36) - math.log(0.06 / 0.27)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_insert_positive_when_missing_and_not_duplicated_when_present():
    candidates = torch.tensor([[[1, 1], [0, 0], [1, 2]],    # target (0, 2) missing
                               [[1, 1], [0, 2], [0, 0]],    # present in slot 1
                               [[1, 1], [0, 2], [0, 2]]])   # slot 2 is padding (garbage codes)
    valid = torch.tensor([[True, True, True], [True, True, True], [True, False, False]])
    target = torch.tensor([[0, 2], [0, 2], [0, 2]])
    out, out_valid, pos = insert_positive(candidates, valid, target)
    assert pos.tolist() == [2, 1, 2]
    assert out[0].tolist() == [[1, 1], [0, 0], [0, 2]]           # lowest replaced
    assert torch.equal(out[1], candidates[1])                    # unchanged
    assert out_valid.tolist() == [[True] * 3, [True] * 3, [True, False, True]]
    matches = ((out == target[:, None]).all(-1) & out_valid).sum(1)
    assert matches.tolist() == [1, 1, 1]                         # the positive, exactly once
    assert torch.equal(candidates[0, 2], torch.tensor([1, 2]))  # inputs not modified


def test_dis_search_runs_in_eval_mode_without_grad(monkeypatch):
    seen = []
    original = train_mod.constrained_beam_search

    def spy(session, *args, **kwargs):
        seen.append((session.model.training, torch.is_inference_mode_enabled()))
        return original(session, *args, **kwargs)

    monkeypatch.setattr(train_mod, "constrained_beam_search", spy)
    model = fixed_logit_decoder()
    unique_ids = torch.tensor([[0, 0], [0, 2], [1, 1], [1, 2]])
    trie = CodeTrie.from_unique_ids(unique_ids.numpy())
    loss = discriminative_loss(model, torch.randn(3, 6), unique_ids[:3], trie, unique_ids,
                               beam_size=2)
    assert seen == [(False, True)]                  # no dropout, no graph in the search
    assert model.training and loss.requires_grad    # re-scoring is in train mode, with grad


def test_dis_loss_gradients_reach_the_decoder():
    model = tiny_decoder(dropout=0.0).train()
    rng = np.random.default_rng(0)
    unique_ids = torch.from_numpy(np.unique(rng.integers([4, 3, 5], size=(12, 3)), axis=0))
    trie = CodeTrie.from_unique_ids(unique_ids.numpy())
    target = unique_ids[torch.tensor([0, 3, 5, 7])]
    # a beam wider than the number of IDs: -1 padding must not give NaNs
    loss = discriminative_loss(model, torch.randn(4, 6), target, trie, unique_ids,
                               beam_size=len(unique_ids) + 3)
    loss.backward()
    assert loss.item() > 0
    for name in ["prefix.0.weight", "blocks.0.self_attn.q.weight", "blocks.0.cross_attn.kv.weight",
                 "code_emb.0.weight", "heads.2.weight"]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_training_with_dis_loss_is_deterministic_and_adds_the_loss(monkeypatch):
    codes, _, queries, sampler = toy_data()
    calls = []
    original = train_mod.discriminative_loss

    def counting(*args, **kwargs):
        calls.append(kwargs["beam_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(train_mod, "discriminative_loss", counting)

    def run(**over):
        cfg = TrainConfig(steps=6, batch_size=16, warmup_steps=2, seed=3, **over)
        model = tiny_decoder(dropout=0.1, seed=1)
        losses = train_decoder(model, queries=queries, item_codes=codes, sampler=sampler, config=cfg)
        return losses, model.state_dict()

    l1, s1 = run(dis_weight=0.5, dis_beam=4, dis_every=2)
    assert calls == [4, 4, 4]  # steps 0, 2, 4
    l2, s2 = run(dis_weight=0.5, dis_beam=4, dis_every=2)
    plain, _ = run()
    assert len(calls) == 6      # the plain run never searches
    assert l1 == l2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert l1[0] > plain[0]     # same first batch and init: L_gen + 0.5 L_dis > L_gen
    assert all(np.isfinite(l1))


def test_train_config_rejects_bad_options():
    with pytest.raises(ValueError, match="none, sample, dimension"):
        TrainConfig(query_aug="mixup")
    with pytest.raises(ValueError, match="dis_beam"):
        TrainConfig(dis_weight=1.0, dis_beam=1)
    with pytest.raises(ValueError, match="query_aug_prob"):
        TrainConfig(query_aug_prob=1.5)


# --- AVG voken embeddings -----------------------------------------------------------------

def test_voken_init_copies_codebooks_when_widths_match():
    model = tiny_decoder()
    books = [torch.arange(k * 16, dtype=torch.float32).view(k, 16) / 100 for k in (4, 3, 5)]
    keys = set(model.state_dict())
    init_code_embeddings(model, books)
    assert torch.equal(model.code_emb[0].weight, books[0])
    assert torch.equal(model.code_emb[1].weight, books[1])
    assert set(model.state_dict()) == keys  # checkpoints stay loadable
    assert model.code_emb[0].weight.requires_grad  # still trained, as in AVG


def test_voken_init_projects_other_widths_with_a_seeded_map():
    model = tiny_decoder()
    # one-hot codes: each embedding row must be one row of the projection
    books = [torch.eye(8)[:k] * 2.0 for k in (4, 3, 5)]
    init_code_embeddings(model, books[:2], seed=7)  # M - 1 tables are enough
    proj = voken_projection(8, 16, seed=7)
    assert torch.equal(proj, voken_projection(8, 16, seed=7))
    assert not torch.equal(proj, voken_projection(8, 16, seed=8))
    torch.testing.assert_close(model.code_emb[0].weight, 2.0 * proj[:4])
    torch.testing.assert_close(model.code_emb[1].weight, 2.0 * proj[:3])
    # N(0, 1/d_model) entries keep squared norms in expectation
    big = voken_projection(64, 512, seed=0)
    assert big.pow(2).sum(1).mean().item() == pytest.approx(1.0, abs=0.05)


def test_voken_init_rms_rescale_and_shape_checks():
    model = tiny_decoder()
    books = [torch.randn(k, 16) * 0.01 for k in (4, 3, 5)]
    init_code_embeddings(model, books, rms=1.0)
    for lv in range(2):
        w = model.code_emb[lv].weight
        assert w.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
        torch.testing.assert_close(w / w[0, 0], books[lv] / books[lv][0, 0])  # same direction
    with pytest.raises(ValueError, match="codes"):
        init_code_embeddings(model, [torch.randn(5, 16), torch.randn(3, 16)])
    with pytest.raises(ValueError, match="codebooks"):
        init_code_embeddings(model, [torch.randn(4, 16)])


# --- GENIUS query augmentation (eq. 11) ---------------------------------------------------

@pytest.mark.parametrize("alpha", [2.0, 0.5])
def test_sample_mode_mu_is_beta_alpha_alpha(alpha):
    n = 20000
    out = mix_queries(torch.zeros(n, 3), torch.ones(n, 3), np.random.default_rng(0),
                      mode="sample", alpha=alpha)
    mu = 1 - out[:, 0].double()                     # z' = μ·0 + (1 - μ)·1
    assert torch.equal(out[:, 0], out[:, 2])        # one μ per query
    assert mu.mean().item() == pytest.approx(0.5, abs=0.01)
    assert mu.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
    assert 0 <= mu.min() and mu.max() <= 1


def test_sample_mode_lies_between_query_and_target():
    gen = torch.Generator().manual_seed(0)
    q, c = torch.randn(50, 8, generator=gen), torch.randn(50, 8, generator=gen)
    out = mix_queries(q, c, np.random.default_rng(1), mode="sample")
    t = ((out - q) * (c - q)).sum(1) / (c - q).pow(2).sum(1)   # out = q + t (c - q)
    torch.testing.assert_close(out, q + t[:, None] * (c - q), atol=1e-5, rtol=1e-5)
    assert (t > 0).all() and (t < 1).all()


def test_dimension_mode_mixes_per_dimension_with_square_roots():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen), dim=1)
    c = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen), dim=1)
    out = mix_queries(q, c, np.random.default_rng(2), mode="dimension", alpha=2.0)
    mu = torch.from_numpy(np.random.default_rng(2).beta(2.0, 2.0, size=(6, 5))).float()
    ref = torch.nn.functional.normalize(mu.sqrt() * q + (1 - mu).sqrt() * c, dim=1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))
    # per-dimension μ: the mix is not on the segment from q to c
    t = (out - q) / (c - q)
    assert (t.std(1) > 1e-3).all()


def test_aug_prob_keeps_some_queries():
    q, c = torch.zeros(4000, 2), torch.ones(4000, 2)
    assert torch.equal(mix_queries(q, c, np.random.default_rng(0), prob=0.0), q)
    kept = (mix_queries(q, c, np.random.default_rng(0), prob=0.25) == 0).all(1).float().mean()
    assert kept.item() == pytest.approx(0.75, abs=0.03)


def test_query_aug_needs_item_emb_and_changes_training():
    codes, item_emb, queries, sampler = toy_data()
    cfg = TrainConfig(steps=3, batch_size=16, warmup_steps=1, query_aug="sample")
    with pytest.raises(ValueError, match="item_emb"):
        train_decoder(tiny_decoder(), queries=queries, item_codes=codes, sampler=sampler, config=cfg)
    with pytest.raises(ValueError, match="item_emb"):   # wider than the queries
        train_decoder(tiny_decoder(), queries=queries, item_codes=codes, sampler=sampler,
                      config=cfg, item_emb=np.concatenate([item_emb, item_emb[:, :1]], 1))
    runs = [train_decoder(tiny_decoder(), queries=queries, item_codes=codes, sampler=sampler,
                          config=c, item_emb=item_emb)
            for c in (cfg, cfg, TrainConfig(steps=3, batch_size=16, warmup_steps=1))]
    assert runs[0] == runs[1]          # seeded
    assert runs[0][0] != runs[2][0]    # the augmented first batch differs from the plain one


def test_query_aug_on_content_plus_instruction_keeps_the_instruction(monkeypatch):
    """A universal query is [content (D) ; instruction (E)]: only the content is mixed."""
    codes, item_emb, queries, sampler = toy_data()
    content = item_emb[:, :4]
    seen = []
    real_loss = CodeDecoder.loss

    def spy(self, query, target):
        seen.append(query.detach().clone())
        return real_loss(self, query, target)

    monkeypatch.setattr(CodeDecoder, "loss", spy)
    cfg = TrainConfig(steps=2, batch_size=16, warmup_steps=1, query_aug="sample")
    train_decoder(tiny_decoder(), queries=queries, item_codes=codes, sampler=sampler, config=cfg,
                  item_emb=content)
    q_rows, targets = sampler.sample(np.random.default_rng(cfg.seed), cfg.batch_size)
    first = seen[0]
    torch.testing.assert_close(first[:, 4:], torch.from_numpy(queries[q_rows, 4:]))  # kept
    assert not torch.allclose(first[:, :4], torch.from_numpy(queries[q_rows, :4]))   # mixed
    # on the segment between the query's content and its target's
    q, c = torch.from_numpy(queries[q_rows, :4]), torch.from_numpy(content[targets])
    t = ((first[:, :4] - q) * (c - q)).sum(1) / (c - q).pow(2).sum(1)
    torch.testing.assert_close(first[:, :4], q + t[:, None] * (c - q), atol=1e-5, rtol=1e-5)
