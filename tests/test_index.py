from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_same_ranking, clustered
from genir.decoder.model import CodeDecoder, DecoderConfig
from genir.decoder.train import SameLabelSampler, TrainConfig
from genir.eval import metrics as M
from genir.eval.flat import FlatIndex
from genir.ids.rq import ResidualQuantizer, RQConfig
from genir.index import GenerativeIndex, IndexConfig, SearchConfig
from genir.search.beam import constrained_beam_search


def tiny_config(**search) -> IndexConfig:
    return IndexConfig(rq=RQConfig(num_levels=3, codebook_size=8),
                       decoder=DecoderConfig(d_model=32, num_layers=2, num_heads=2, num_prefix=4),
                       train=TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10),
                       search=SearchConfig(**search))


@pytest.fixture(scope="module")
def built():
    x, labels, centers = clustered(500, num_classes=5, dim=16, noise=0.9, seed=0)
    index = GenerativeIndex.build(x, queries=x, sampler=SameLabelSampler(labels, labels),
                                  config=tiny_config(beam_size=8))
    rng = np.random.default_rng(1)
    qlab = rng.integers(5, size=40)
    q = centers[qlab] + 0.9 * rng.normal(size=(40, 16))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return index, x, labels, q, qlab


def naive_expand(index, leaves, leaf_scores):
    """The items of each query's leaves in beam order, with the leaf's score."""
    out = []
    for q in range(leaves.shape[0]):
        row = []
        for leaf, score in zip(leaves[q].tolist(), leaf_scores[q].tolist(), strict=True):
            if leaf >= 0:
                row += [(int(i), score) for i in index.table.items_of(leaf)]
        out.append(row)
    return out


def naive_top_items(index, leaves, leaf_scores, k, queries=None):
    """Reference for search's last step (genir.search.results.top_items): the leaves' items
    in beam order, scored by the leaf or, given queries, by dot product with the item's
    embedding; a stable sort, best first; -1 / -inf past the candidates."""
    rows = np.full((len(leaves), k), -1)
    scores = np.full((len(leaves), k), -np.inf, dtype=np.float32)
    for q, cands in enumerate(naive_expand(index, leaves, leaf_scores)):
        if queries is not None:
            cands = [(item, float(index.item_emb[item] @ queries[q])) for item, _ in cands]
        best = sorted(cands, key=lambda c: -c[1])[:k]          # sorted() is stable
        rows[q, :len(best)] = [item for item, _ in best]
        scores[q, :len(best)] = [score for _, score in best]
    return scores, rows


@pytest.mark.parametrize("k", [1, 3, 12])
@pytest.mark.parametrize("rerank", [False, True])
def test_top_items_matches_naive_sort(built, k, rerank):
    """Leaves with shared IDs (several items each), a missing leaf (-1), tied leaf scores;
    k below and above the number of candidates."""
    from genir.search.results import top_items

    index, *_, q, _ = built
    assert index.table.max_items_per_id > 1   # 500 items on 512 IDs: shared IDs
    shared = np.flatnonzero(np.diff(index.table.offsets) > 1)[:3].tolist()
    leaves = torch.tensor([[3, 0, -1], [1, 2, 5], shared, [shared[1], shared[0], 7]])
    leaf_scores = torch.tensor([[-0.1, -0.5, float("-inf")], [-1.0, -2.0, -3.0],
                                [-0.2, -0.2, -0.3], [-0.4, -0.4, -0.4]])
    scores = np.empty((4, k), dtype=np.float32)
    rows = np.empty((4, k), dtype=np.int64)
    queries = q[:4]
    top_items(leaves.numpy(), leaf_scores.numpy(), index.table.offsets, index.table.items,
              queries, index.item_emb, rerank, scores, rows)
    ref_scores, ref_rows = naive_top_items(index, leaves, leaf_scores, k,
                                           queries if rerank else None)
    if rerank:   # compiled dot products against numpy's: the ranking, to float tolerance
        assert_same_ranking(scores, rows, ref_scores, ref_rows, atol=1e-5)
    else:        # scores copied from the leaves: exact, ties kept in beam order
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(scores, ref_scores)


def test_unique_ids_keep_the_beam_order():
    """One item per ID: search returns the beam's leaves in beam order, as items, with the
    leaves' scores."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    codes = rng.integers(64, size=(300, 3))
    torch.manual_seed(0)
    decoder = CodeDecoder(DecoderConfig(query_dim=16, codebook_sizes=(64,) * 3, d_model=32,
                                        num_heads=2)).eval()
    index = GenerativeIndex(tokenizer=ResidualQuantizer(RQConfig(num_levels=3, codebook_size=64)),
                            decoder=decoder, item_emb=emb, codes=codes,
                            item_ids=[str(i) for i in range(300)], config=IndexConfig())
    assert index.table.max_items_per_id == 1 and index.table.num_ids == 300
    q = rng.normal(size=(9, 16)).astype(np.float32)
    scores, rows = index.search(q, 10, beam_size=12)
    with torch.inference_mode():
        leaves, leaf_scores = constrained_beam_search(index.decoder.session(torch.from_numpy(q)),
                                                      index.trie, num_queries=9, beam_size=12)
    assert np.array_equal(rows, index.table.items[index.table.offsets[leaves[:, :10].numpy()]])
    assert np.array_equal(scores, leaf_scores[:, :10].numpy())
    assert (rows >= 0).all() and (np.diff(scores, axis=1) <= 0).all()


def test_search_returns_valid_sorted_results_and_learns_classes(built):
    index, x, labels, q, qlab = built
    scores, rows = index.search(q, 10)
    assert scores.shape == rows.shape == (40, 10)
    assert rows.min() >= 0 and rows.max() < len(x)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    hits = M.hit_matrix(rows, query_labels=qlab, item_labels=labels)
    assert M.precision_at(hits, 10) > 0.8  # 5 well-separated classes: chance is 0.2


def test_rerank_equals_naive_cosine_sort_of_the_beam_candidates(built):
    index, x, labels, q, _ = built
    beam = 8
    scores, rows = index.search(q, beam, rerank=True, beam_size=beam)
    with torch.inference_mode():    # the session search takes
        leaves, leaf_scores = constrained_beam_search(
            index.decoder.session(torch.from_numpy(q)), index.trie, num_queries=len(q),
            beam_size=beam)
    ref_rows = np.full((len(q), beam), -1)
    ref_scores = np.full((len(q), beam), -np.inf)
    for i, cands in enumerate(naive_expand(index, leaves, leaf_scores)):
        items = np.array([item for item, _ in cands])
        sims = x[items] @ q[i]
        order = np.argsort(-sims, kind="stable")[:beam]
        ref_rows[i, :len(order)], ref_scores[i, :len(order)] = items[order], sims[order]
    assert_same_ranking(scores, rows, ref_scores, ref_rows, atol=1e-5)
    # never above exact search's best similarity
    flat_scores, _ = FlatIndex(x).search(q, 1)
    assert (scores[:, 0] <= flat_scores[:, 0] + 1e-5).all()


def test_batch_size_does_not_change_results(built):
    index, *_, q, _ = built
    a = index.search(q, 10)
    index.config.search.batch_size = 7
    try:
        b = index.search(q, 10)
    finally:
        index.config.search.batch_size = 256
    # other batches, other products: the same ranking, to float tolerance
    assert_same_ranking(b[0], b[1], a[0], a[1], atol=1e-5)


def test_save_load_gives_identical_results(built, tmp_path):
    index, *_, q, _ = built
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and "weights.safetensors" in manifest["files"]
    assert (tmp_path / "idx" / "items.sqlite").exists()
    loaded = GenerativeIndex.load(tmp_path / "idx")
    for rerank in (False, True):
        a, b = index.search(q, 10, rerank=rerank), loaded.search(q, 10, rerank=rerank)
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert loaded.item_ids == index.item_ids and loaded.config.to_dict() == index.config.to_dict()


SEARCH_IN_A_NEW_PROCESS = """
import sys
import numpy as np
import torch
from genir.index import GenerativeIndex
torch.set_num_threads(int(sys.argv[4]))   # as the tests' process (conftest)
index = GenerativeIndex.load(sys.argv[1])
q = np.load(sys.argv[2])
for rerank in (False, True):
    scores, rows = index.search(q, 10, rerank=rerank)
    np.save(f"{sys.argv[3]}_{int(rerank)}_scores.npy", scores)
    np.save(f"{sys.argv[3]}_{int(rerank)}_rows.npy", rows)
"""


def search_in_new_process(index, q, folder, run, **env):
    """index.search(q, 10) with rerank off and on, in a new Python process (with `env`
    added to the environment) that loads the index saved in `folder` -> {rerank: (scores,
    rows)}. Saves the index and the queries there first, unless already there."""
    if not (folder / "idx").exists():
        index.save(folder / "idx")
        np.save(folder / "q.npy", q)
    subprocess.run([sys.executable, "-c", SEARCH_IN_A_NEW_PROCESS, str(folder / "idx"),
                    str(folder / "q.npy"), str(folder / run), str(torch.get_num_threads())],
                   check=True, env={**os.environ, **env})
    return {rerank: tuple(np.load(folder / f"{run}_{int(rerank)}_{name}.npy")
                          for name in ("scores", "rows")) for rerank in (False, True)}


def assert_same_bits(got, want, what):
    """(scores, rows) equal, the scores bit for bit."""
    assert np.array_equal(got[1], want[1]), what
    assert got[0].tobytes() == want[0].tobytes(), what


def test_search_does_not_depend_on_call_history_or_process(built, tmp_path):
    """A search's rows and scores depend only on the index, the queries and the options:
    the first search after new weights, the next ones, a search with the same queries
    stored at another alignment, and a search of the saved index in a new process are
    bitwise equal (same machine: across CPUs they may differ in the last bits)."""
    index, *_, q, _ = built
    other_process = search_in_new_process(index, q, tmp_path, "out")
    fresh = GenerativeIndex.load(tmp_path / "idx")        # weights never searched
    shifted = np.empty(q.size + 1, dtype=np.float32)[1:].reshape(q.shape)  # 4 bytes off
    shifted[:] = q
    for rerank in (False, True):
        first = fresh.search(q, 10, rerank=rerank)
        runs = {"second search": fresh.search(q, 10, rerank=rerank),
                "queries at another alignment": fresh.search(shifted, 10, rerank=rerank),
                "the index saved": index.search(q, 10, rerank=rerank),
                "a new process": other_process[rerank]}
        for what, got in runs.items():
            assert_same_bits(got, first, what)


@pytest.mark.slow   # compiles the search's kernels from an empty numba cache: ~40 s
def test_kernels_compiled_in_a_process_equal_those_loaded_from_the_cache(built, tmp_path):
    """The first process compiles every kernel (an empty cache), the second loads them from
    the cache the first wrote: both search the saved index to the same bits as this process.
    (With fastmath's reassociation the compiler chose each sum's order by context, and a
    freshly compiled kernel rounded otherwise than its cached copy.)"""
    index, *_, q, _ = built
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = {run: search_in_new_process(index, q, tmp_path, run, **cache)
            for run in ("compiled", "cached")}
    for rerank in (False, True):
        want = index.search(q, 10, rerank=rerank)
        for run, got in runs.items():
            assert_same_bits(got[rerank], want, run)


@pytest.mark.slow   # compiles the search's kernels for another CPU: ~40 s
def test_kernels_compiled_for_a_generic_cpu_give_the_same_bits(built, tmp_path):
    """numba's kernels compiled for a generic x86-64 CPU (no AVX, no FMA instruction: fma
    is then a libm call) search to the same bits as those compiled for this CPU: their
    sums have a stated order and their multiply-adds are fused by name, so what is left
    to differ between CPUs is MKL's products."""
    index, *_, q, _ = built
    got = search_in_new_process(index, q, tmp_path, "generic", NUMBA_CPU_NAME="generic",
                                NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    for rerank in (False, True):
        assert_same_bits(got[rerank], index.search(q, 10, rerank=rerank), "generic CPU")


def test_load_rejects_corrupt_files(built, tmp_path):
    index = built[0]
    index.save(tmp_path / "idx")
    weights = tmp_path / "idx" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        GenerativeIndex.load(tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match="manifest"):
        GenerativeIndex.load(tmp_path / "nothing")


def test_fewer_items_than_k_pads_with_minus_one():
    x, _, _ = clustered(12, num_classes=2, dim=8)
    index = GenerativeIndex.build(x, config=tiny_config(beam_size=4))
    scores, rows = index.search(x[:3], 20)
    assert (rows[:, :12] >= 0).all() and (rows[:, 12:] == -1).all()
    assert np.isinf(scores[:, 12:]).all()
    assert sorted(rows[0, :12].tolist()) == list(range(12))


def test_bad_queries_and_k_are_rejected(built):
    index = built[0]
    with pytest.raises(ValueError, match=r"\(Q, 16\)"):
        index.search(np.zeros((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.zeros((2, 16), np.float32), 0)


def test_add_makes_new_items_searchable_without_retraining(built, tmp_path):
    index, x, labels, q, qlab = built
    fresh = GenerativeIndex.load(_saved(index, tmp_path))
    decoder_state = {k: v.clone() for k, v in fresh.decoder.state_dict().items()}
    rng = np.random.default_rng(7)
    new = q[:5] + 0.01 * rng.normal(size=q[:5].shape).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    rows = fresh.add(new, [f"new-{i}" for i in range(5)])
    assert rows.tolist() == list(range(500, 505)) and len(fresh) == 505
    assert fresh.table.stats()["num_items"] == 505
    # the new items are in the trie: an exhaustive beam reaches them, and rerank puts each
    # first for its near-duplicate query (how often a narrow beam reaches them is the
    # fresh-data question the decoder answers, measured in the ablations)
    _, got = fresh.search(q[:5], 5, rerank=True, beam_size=fresh.table.num_ids)
    assert (got[:, 0] == rows).all()
    assert all(torch.equal(v, decoder_state[k]) for k, v in fresh.decoder.state_dict().items())
    with pytest.raises(ValueError, match="already"):
        fresh.add(new[:1], ["new-0"])
    with pytest.raises(ValueError, match=r"\(M, 16\)"):
        fresh.add(new[:1, :3], ["x"])


def test_remove_never_returns_removed_items_and_survives_save(built, tmp_path):
    index, x, labels, q, qlab = built
    fresh = GenerativeIndex.load(_saved(index, tmp_path))
    _, before = fresh.search(q, 10)
    gone = {fresh.item_ids[r] for r in before[:, 0]}
    assert fresh.remove(sorted(gone)) == len(gone)
    _, after = fresh.search(q, 10)
    returned = {fresh.item_ids[r] for r in after.ravel() if r >= 0}
    assert not returned & gone and len(fresh) == 500 - len(gone)
    fresh.save(tmp_path / "after")
    again = GenerativeIndex.load(tmp_path / "after")
    assert np.array_equal(again.search(q, 10)[1], after)
    with pytest.raises(KeyError, match="unknown"):
        fresh.remove(["nope"])


def _saved(index, tmp_path):
    path = tmp_path / "copy"
    index.save(path)
    return path


def test_many_single_adds_equal_one_index_of_all_rows(built):
    """add() appends through growing buffers; the result must equal an index made at once."""
    index, x, _, q, _ = built
    grown = GenerativeIndex(tokenizer=index.tokenizer, decoder=index.decoder,
                            item_emb=x[:400], codes=index.codes[:400],
                            item_ids=[str(i) for i in range(400)], config=index.config)
    for i in range(400, 500):
        grown.add(x[i:i + 1], [str(i)])
        if i == 450:
            grown.remove(["3", "420"])
            grown.add(x[[3, 420]], ["3", "420"])
    order = ([str(i) for i in range(451) if i not in (3, 420)] + ["3", "420"]
             + [str(i) for i in range(451, 500)])
    rows = [int(i) for i in order]
    at_once = GenerativeIndex(tokenizer=index.tokenizer, decoder=index.decoder,
                              item_emb=x[rows], codes=index.tokenizer.encode(x[rows]),
                              item_ids=order, config=index.config)
    assert grown.item_ids == at_once.item_ids
    assert np.array_equal(grown.item_emb, at_once.item_emb)
    assert np.array_equal(grown.codes, at_once.codes)
    for rerank in (False, True):
        a, b = grown.search(q, 10, rerank=rerank), at_once.search(q, 10, rerank=rerank)
        assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])


def test_query_emb_needs_one_row_per_query(built):
    index, *_, q, _ = built
    with pytest.raises(ValueError, match="one row per query"):
        index.search(q, 5, rerank=True, query_emb=q[:2])
