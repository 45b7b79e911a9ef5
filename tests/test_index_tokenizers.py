"""Every tokenizer by name through GenerativeIndex: build, search, save/load, side inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import clustered
from genir.decoder.model import DecoderConfig
from genir.decoder.train import SameLabelSampler, TrainConfig
from genir.ids.avg import AVGConfig
from genir.ids.irgen import IRGenConfig
from genir.ids.rq import RQConfig
from genir.index import MODALITY_TOKENIZERS, TOKENIZERS, GenerativeIndex, IndexConfig


def config(tokenizer: str, **train) -> IndexConfig:
    cfg = IndexConfig(tokenizer=tokenizer, rq=RQConfig(num_levels=2, codebook_size=8),
                      decoder=DecoderConfig(d_model=16, num_layers=1, num_heads=2, num_prefix=2),
                      train=TrainConfig(**{"steps": 60, "batch_size": 32, "warmup_steps": 5,
                                           **train}))
    if hasattr(cfg.rq, "steps"):
        cfg.rq.steps = 30
    if hasattr(cfg.rq, "batch_size"):
        cfg.rq.batch_size = 64
    return cfg


@pytest.fixture(scope="module")
def data():
    x, labels, _ = clustered(240, num_classes=4, dim=12, noise=0.5, seed=5)
    captions = x + 0.1 * np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    return x, labels, captions


# the modality tokenizer (genius) has its own tests: tests/test_universal_model.py
@pytest.mark.parametrize("name", sorted(set(TOKENIZERS) - set(MODALITY_TOKENIZERS)))
def test_each_tokenizer_builds_searches_and_round_trips(name, data, tmp_path):
    x, labels, captions = data
    index = GenerativeIndex.build(x, queries=x, sampler=SameLabelSampler(labels, labels),
                                  config=config(name), item_labels=labels,
                                  item_text_emb=captions)
    assert index.codes.shape == (240, 2)
    assert (index.codes >= 0).all() and (index.codes < 8).all()
    scores, rows = index.search(x[:10], 5)
    assert (rows >= 0).all()
    index.save(tmp_path / "idx")
    loaded = GenerativeIndex.load(tmp_path / "idx")
    assert type(loaded.tokenizer) is type(index.tokenizer)
    assert type(loaded.config.rq) is type(index.config.rq)
    assert np.array_equal(loaded.tokenizer.encode(x), index.tokenizer.encode(x))
    assert np.array_equal(loaded.search(x[:10], 5)[1], rows)


def test_tokenizer_config_class_follows_the_name():
    assert type(IndexConfig(tokenizer="irgen").rq) is IRGenConfig
    cfg = IndexConfig(rq=RQConfig(num_levels=3, codebook_size=32))
    cfg.tokenizer = "avg"
    cfg.check()
    assert type(cfg.rq) is AVGConfig and (cfg.rq.num_levels, cfg.rq.codebook_size) == (3, 32)
    again = IndexConfig.from_dict(cfg.to_dict())
    assert type(again.rq) is AVGConfig and again.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        IndexConfig(tokenizer="nope")


@pytest.mark.parametrize("name,needs", [("irgen", "item_labels"), ("avg", "item_text_emb"),
                                        ("genius", "item_modality")])
def test_supervised_tokenizers_name_their_missing_input(name, needs, data):
    x, _, _ = data
    with pytest.raises(ValueError, match=needs):
        GenerativeIndex.build(x, config=config(name))


def test_voken_init_and_query_augmentation_reach_the_decoder(data):
    x, labels, _ = data
    cfg = config("rq", query_aug="sample")
    cfg.voken_init = True
    cfg.train.steps = 0   # no training: the embeddings are exactly the initialisation
    index = GenerativeIndex.build(x, queries=x, sampler=SameLabelSampler(labels, labels),
                                  config=cfg)
    from genir.decoder.model import init_code_embeddings

    ref = GenerativeIndex.build(x, config=config("rq", steps=0))
    init_code_embeddings(ref.decoder, ref.tokenizer.codebooks, seed=0, rms=1.0)
    for a, b in zip(index.decoder.code_emb, ref.decoder.code_emb, strict=True):
        assert np.allclose(a.weight.detach().numpy(), b.weight.detach().numpy())
    random_init = GenerativeIndex.build(x, config=config("rq", steps=0))
    assert not np.allclose(random_init.decoder.code_emb[0].weight.detach().numpy(),
                           index.decoder.code_emb[0].weight.detach().numpy())
    shared = config("avg")
    shared.rq.shared_codebook, shared.voken_init = True, True
    captions = x[::-1].copy()
    avg = GenerativeIndex.build(x, config=shared, item_text_emb=captions)   # one shared codebook
    assert avg.decoder.code_emb[0].weight.shape[0] == 8
    with pytest.raises(ValueError, match="voken_init needs"):
        bad = config("hkmeans")
        bad.voken_init = True
        GenerativeIndex.build(x, config=bad)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_every_tokenizer_keeps_the_protocol_and_the_one_fit_signature(name, data):
    """fit(emb, *, side=Side(...)) / encode(emb, *, side=...) for all six; the paper
    tokenizers' positional forms give the same codes."""
    from genir.ids.base import Side, Tokenizer
    from genir.ids.registry import config_class

    x, labels, captions = data
    modality = np.arange(len(x)) % 3
    cfg = config(name).rq
    assert isinstance(config_class(name)(), type(cfg))
    side = Side(labels=labels, text_emb=captions, modality=modality)
    tok = TOKENIZERS[name](cfg).fit(x, side=side)
    assert isinstance(tok, Tokenizer)
    codes = tok.encode(x, side=side)
    assert codes.shape == (len(x), cfg.num_levels) and codes.dtype == np.int64
    positional = {"irgen": (labels,), "avg": (captions,), "genius": (modality,)}.get(name)
    if positional is not None:
        again = TOKENIZERS[name](cfg).fit(x, *positional)
        assert np.array_equal(again.encode(x, *positional[:1]) if name == "genius"
                              else again.encode(x), codes)
    for need in tok.fit_needs:
        with pytest.raises(ValueError, match="needs"):
            TOKENIZERS[name](cfg).fit(x, side=Side(**{n: v for n, v in vars(side).items()
                                                      if n != need}))


def test_large_corpora_are_encoded_in_chunks_with_the_same_codes(monkeypatch, data):
    """Over ENCODE_CHUNK items, build encodes chunk by chunk (a progress bar per chunk): the
    codes equal one call's, and each chunk gets its own items' modalities."""
    import genir.index as index_module
    from genir.ids.base import Side
    from genir.ids.rq import ResidualQuantizer

    x, _, _ = data
    monkeypatch.setattr(index_module, "ENCODE_CHUNK", 64)
    tok = ResidualQuantizer(RQConfig(num_levels=3, codebook_size=8)).fit(x)
    chunked = index_module._encode_all(tok, x, Side(), progress=False)
    assert np.array_equal(chunked, tok.encode(x))

    class EchoModality:
        def encode(self, emb, *, side):
            assert len(side.modality) == len(emb)
            return np.asarray(side.modality)[:, None]

    modality = np.arange(len(x)) % 3
    codes = index_module._encode_all(EchoModality(), x, Side(modality=modality), progress=False)
    assert np.array_equal(codes[:, 0], modality)
