"""The universal (GENIUS) index: modality-first IDs in GenerativeIndex, instruction-driven
search, task-pool subsets, and the genir_experiments.universal pipeline on fixture data (hermetic)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from test_universal_data import BUILD, write_clipart, write_fashion_mnist, write_wordnet

from genir.decoder.train import PairSampler
from genir.encoders.aligned import AlignConfig, AlignedEncoder
from genir.encoders.base import l2_normalize, load_image
from genir.encoders.cache import EmbeddingCache
from genir.ids.genius import MODALITIES
from genir.index import GenerativeIndex, IndexConfig
from genir_experiments.universal import (
    build_universal,
    decoder_input,
    default_config,
    evaluate_universal,
    format_universal,
    prepare_universal,
    score_rows,
)
from genir_experiments.universal_data import TASKS


def three_modality_pool(n_per: int = 60, dim: int = 16, seed: int = 0):
    """Items of three modalities around 4 topics; the modality shifts each vector a little,
    so content alone cannot say which modality a query wants."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(4, dim))
    shift = rng.normal(size=(3, dim)) * 0.3
    emb, modality, topic = [], [], []
    for m in range(3):
        t = rng.integers(4, size=n_per)
        emb.append(topics[t] + shift[m] + 0.4 * rng.normal(size=(n_per, dim)))
        modality += [m] * n_per
        topic += t.tolist()
    return (l2_normalize(np.concatenate(emb)).astype(np.float32), np.array(modality),
            np.array(topic))


def tiny_config(steps: int = 400) -> IndexConfig:
    cfg = IndexConfig(tokenizer="genius")
    cfg.rq.num_levels, cfg.rq.codebook_size = 3, 8
    cfg.rq.steps, cfg.rq.batch_size, cfg.rq.hidden_dim = 60, 64, 32   # type: ignore[attr-defined]
    cfg.rq.modality_codes = "given"                                     # type: ignore[attr-defined]
    cfg.decoder.d_model, cfg.decoder.num_layers, cfg.decoder.num_heads = 32, 1, 2
    cfg.decoder.num_prefix = 2
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps = steps, 64, 20
    return cfg


@pytest.fixture(scope="module")
def universal_index():
    emb, modality, topic = three_modality_pool()
    instruction = np.eye(3, dtype=np.float32)   # one vector per wanted modality
    # training queries: an item's content with each instruction -> a same-topic item of the
    # instructed modality
    rng = np.random.default_rng(1)
    inputs, targets = [], []
    for row in range(len(emb)):
        for want in range(3):
            same = np.flatnonzero((topic == topic[row]) & (modality == want))
            inputs.append(np.concatenate([emb[row], instruction[want]]))
            targets.append(rng.choice(same))
    inputs = np.array(inputs, dtype=np.float32)
    index = GenerativeIndex.build(
        emb, queries=inputs, sampler=PairSampler(np.arange(len(targets)), np.array(targets)),
        config=tiny_config(), item_modality=modality,
        tokenizer_pairs=(emb[[t for t in targets]], np.array(targets)))
    return index, emb, modality, topic, instruction


def test_genius_index_ids_start_with_the_modality(universal_index):
    index, emb, modality, _, _ = universal_index
    assert index.config.tokenizer == "genius"
    assert (index.codes[:, 0] == modality).all()
    assert [m["modality"] for m in index.item_meta] == [MODALITIES[m] for m in modality]
    assert (index.item_modality == modality).all()


def test_search_returns_the_instructed_modality(universal_index):
    index, emb, modality, topic, instruction = universal_index
    for want in range(3):
        q = decoder_input(emb, instruction[want])
        _, rows = index.search(q, 5, beam_size=10)
        assert (rows >= 0).all()
        assert (modality[rows] == want).mean() >= 0.99, want
        # and the topic too, well above the 1/4 of chance
        assert (topic[rows[:, 0]] == topic).mean() > 0.6


def test_build_needs_the_modality():
    emb, _, _ = three_modality_pool(10)
    with pytest.raises(ValueError, match="needs item_modality"):
        GenerativeIndex.build(emb, config=tiny_config(5))
    with pytest.raises(ValueError, match="item_modality must be"):
        GenerativeIndex.build(emb, config=tiny_config(5), item_modality=np.full(len(emb), 3))


def test_add_reads_the_modality_and_round_trips(universal_index, tmp_path):
    index, emb, modality, _, instruction = universal_index
    index.save(tmp_path / "u")
    loaded = GenerativeIndex.open(tmp_path / "u", writable=True)
    try:
        assert (loaded.codes == index.codes).all() and (loaded.item_modality == modality).all()
        q = decoder_input(emb[:20], instruction[1])
        assert (loaded.search(q, 5)[1] == index.search(q, 5)[1]).all()
        with pytest.raises(ValueError, match="modality"):
            loaded.add(emb[:1], ["new-0"])
        rows = loaded.add(emb[:2], ["new-1", "new-2"],
                          item_meta=[{"modality": "text"}, {"modality": "image_text"}])
        assert loaded.codes[rows, 0].tolist() == [1, 2]
    finally:
        loaded.close()
    again = GenerativeIndex.load(tmp_path / "u")
    assert again.item_modality[-2:].tolist() == [1, 2]


def test_subset_confines_search_to_its_rows(universal_index):
    """A subset without text items, asked for text: its search must still return its own
    best IDs, exactly those that exhaustive scoring of the subset's IDs ranks first."""
    import torch

    index, emb, modality, _, instruction = universal_index
    rows = np.flatnonzero(modality != 1)[::2]
    sub = index.subset(rows)
    assert len(sub) == len(rows) and sub.item_ids == [index.item_ids[r] for r in rows]
    q = decoder_input(emb[:8], instruction[1])        # wants text; the subset has none
    full_rows = index.search(q, 1)[1]
    assert (modality[full_rows[:, 0]] == 1).all()      # the whole index answers with text
    ids = sub.table.unique_ids
    scores, got = sub.search(q, len(ids), beam_size=len(ids))   # exact: every ID in the beam
    assert (got >= 0).all() and (got < len(rows)).all()
    with torch.no_grad():
        ref = torch.stack([index.decoder.sequence_log_prob(
            torch.from_numpy(qi).expand(len(ids), -1), torch.from_numpy(ids)) for qi in q])
    best = ref.max(1).values.numpy()
    np.testing.assert_allclose(scores[:, 0], best, atol=1e-4)
    # the ID found scores the best by exhaustive scoring too (within float tolerance: a
    # near-tie may go either way on another CPU)
    found = [int(np.flatnonzero((ids == sub.codes[g]).all(1))[0]) for g in got[:, 0]]
    np.testing.assert_allclose(ref.numpy()[np.arange(len(q)), found], best, atol=1e-4)
    with pytest.raises(ValueError, match="distinct rows"):
        index.subset(np.array([0, 0]))


def test_score_rows_by_hand():
    rows = np.array([[3, 1, -1], [2, 0, 4]])
    modality = np.array([0, 0, 1, 0, 0])
    res = score_rows(np.pad(rows, ((0, 0), (0, 7)), constant_values=-1), [[1], [9]], modality,
                     want=0)
    assert res["R@1"] == 0.0 and res["R@5"] == 0.5
    assert res["modality@1"] == 0.5            # query 0 starts with an image, query 1 a text
    assert res["modality@10"] == 0.5           # query 1 has a text in its list


# -- the pipeline on fixture data -----------------------------------------------------------------

class PixelTower:
    """8x8 RGB thumbnails as features: enough to tell the fixtures' colours apart."""

    dim = 192

    def cache_key(self) -> str:
        return "test-pixels"

    def encode_images(self, images, progress=False) -> np.ndarray:
        out = [np.asarray(load_image(p).resize((8, 8)), dtype=np.float32).ravel() / 255
               for p in images]
        return l2_normalize(np.stack(out) - 0.5)


class WordTower:
    """Hashed bag of words."""

    dim = 64

    def cache_key(self) -> str:
        return "test-words"

    def encode_texts(self, texts, progress=False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                out[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1
        return l2_normalize(out + 1e-3)


_PIPELINE_DATA: list = []


def pipeline_data():
    """The universal fixture data, prepared once per test session (tiny towers)."""
    import tempfile
    from pathlib import Path

    if not _PIPELINE_DATA:
        base = Path(tempfile.mkdtemp(prefix="genir-uni-"))
        _PIPELINE_DATA.append(_prepare_fixture(base))
    return _PIPELINE_DATA[0]


def _prepare_fixture(base):
    sources = {"openclipart_root": write_clipart(base / "openclipart"),
               "fashion_mnist_root": write_fashion_mnist(base / "fmnist"),
               "wordnet_root": write_wordnet(base / "wordnet")}
    encoder = AlignedEncoder(image_tower=PixelTower(), text_tower=WordTower(),
                             config=AlignConfig(dim=16, steps=50, batch_size=32),
                             cache=EmbeddingCache(enabled=False))
    data = prepare_universal(base / "tasks", cache=EmbeddingCache(enabled=False), encoder=encoder,
                             per_task_queries=BUILD["per_task_queries"],
                             build_kwargs={k: v for k, v in BUILD.items() if k != "per_task_queries"}
                             | sources)
    assert encoder.fitted   # an unfitted encoder gets its heads trained
    return data


@pytest.fixture(scope="module")
def pipeline():
    data = pipeline_data()
    cfg = default_config(quick=True)
    cfg.rq.codebook_size = 8
    cfg.rq.steps = 30          # type: ignore[attr-defined]
    cfg.rq.hidden_dim = 32     # type: ignore[attr-defined]
    cfg.decoder.d_model, cfg.decoder.num_layers, cfg.decoder.num_heads = 32, 1, 2
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps = 300, 64, 20
    return data, build_universal(data, cfg)


def test_training_pairs_never_use_a_test_query(pipeline):
    from genir_experiments.universal_data import load_universal_task

    data, _ = pipeline

    def key(text):
        return " ".join((text or "").casefold().split())

    test_texts, test_images = set(), set()
    for name in data.tasks:
        q = load_universal_task(data.root, name).queries
        test_images |= {p for p in (q.images or []) if p}
        images = q.images or [None] * len(q)
        test_texts |= {key(t) for t, p in zip(q.texts, images, strict=True) if t and not p}
    assert test_texts and test_images
    # no test query's image is in any training query; no text-only test query is trained on
    assert len(data.train_sources) == len(data.train_targets) == len(data.train_inputs)
    assert not {img for img, _, _, _ in data.train_sources} & test_images
    assert not {key(txt) for _, txt, _, _ in data.train_sources if txt} & test_texts
    # no one-answer task's test positive is the target of a one-answer training pair (the
    # indexing pairs and the category-level pairs may target any candidate)
    one_answer = ("text_to_image", "image_to_text", "text_to_image_text", "text_to_text")
    forbidden = {r for t in one_answer
                 for rel in load_universal_task(data.root, t, pool="global").relevant for r in rel}
    kinds = [kind for _, _, _, kind in data.train_sources]
    targeted = {int(t) for t, kind in zip(data.train_targets, kinds, strict=True) if kind in one_answer}
    assert forbidden and targeted and not forbidden & targeted
    assert kinds[:len(data.item_ids)] == ["index"] * len(data.item_ids)
    assert set(data.train_kinds) >= {"index", "text_to_image", "image_to_image"}


def test_universal_evaluation_covers_every_task_and_pool(pipeline):
    data, index = pipeline
    assert index.extra["task"] == "universal"
    assert (index.codes[:, 0] == data.item_modality).all()
    result = evaluate_universal(data, index)
    assert set(result) == set(TASKS)
    for task in result.values():
        assert set(task["pools"]) == {"task", "global"}
        for pool in task["pools"].values():
            assert set(pool["methods"]) == {"genir", "genir+rerank", "flat knn"}
    # in the global pool the instruction picks the modality of the top-1 (the first code)
    top1 = [t["pools"]["global"]["methods"]["genir"]["modality@1"] for t in result.values()]
    assert np.mean(top1) >= 0.9, top1
    table = format_universal(result)
    assert table.count("\n") == 2 + len(TASKS) * 2 * 3 - 1
    with pytest.raises(ValueError, match="unknown universal tasks"):
        evaluate_universal(data, index, tasks=["nope"])
