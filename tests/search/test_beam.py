"""The trie-constrained beam search against brute-force enumeration, the slow reference and
the search spelled out; its refusals (NaN, codes outside the trie) and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_same_ranking
from decoder_helpers import SESSIONS, make_session, tiny_decoder, token_queries
from genir.decoder import fused
from genir.decoder.model import DecoderConfig
from genir.ids.table import IDTable
from genir.search.beam import constrained_beam_search
from genir.search.trie import CodeTrie


def brute_force(model, queries, unique_ids, k):
    """Score every valid ID with teacher forcing and sort: the reference for beam search."""
    out_leaf, out_score = [], []
    ids = torch.as_tensor(unique_ids)
    with torch.no_grad():
        for q in queries:
            lp = model.sequence_log_prob(q.expand(len(ids), -1), ids)
            top = lp.topk(min(k, len(ids)))
            out_leaf.append(top.indices)
            out_score.append(top.values)
    return torch.stack(out_leaf), torch.stack(out_score)


@pytest.mark.parametrize("kind", SESSIONS)
@pytest.mark.parametrize("seed,query_tokens", [(0, 0), (1, 0), (2, 0), (0, 3), (1, 3)])
def test_full_beam_equals_brute_force(seed, query_tokens, kind):
    rng = np.random.default_rng(seed)
    model = tiny_decoder(seed=seed, query_tokens=query_tokens)
    table = IDTable.from_codes(rng.integers([4, 3, 5], size=(25, 3)))
    trie = CodeTrie.from_unique_ids(table.unique_ids)
    queries = token_queries(5, seed) if query_tokens else torch.randn(
        5, 6, generator=torch.Generator().manual_seed(seed))
    # a beam as wide as the number of IDs is exact search
    beam = table.num_ids
    leaves, scores = constrained_beam_search(make_session(model, queries, kind), trie,
                                             num_queries=5, beam_size=beam)
    ref_leaves, ref_scores = brute_force(model, queries, table.unique_ids, beam)
    assert_same_ranking(scores, leaves, ref_scores, ref_leaves, atol=1e-4, rtol=1e-4)


def test_beam_never_returns_invalid_ids_and_pads():
    model = tiny_decoder()
    valid = np.array([[0, 0, 0], [0, 2, 4], [3, 1, 1]])
    trie = CodeTrie.from_unique_ids(IDTable.from_codes(valid).unique_ids)
    queries = torch.randn(7, 6)
    leaves, scores = constrained_beam_search(model.session(queries), trie, num_queries=7,
                                             beam_size=5)
    assert leaves.shape == (7, 5)
    assert (leaves[:, :3] >= 0).all() and (leaves[:, 3:] == -1).all()
    assert torch.isinf(scores[:, 3:]).all() and torch.isfinite(scores[:, :3]).all()
    assert all(sorted(row[:3].tolist()) == [0, 1, 2] for row in leaves)
    # scores are sorted best first
    assert (scores[:, :2] >= scores[:, 1:3]).all()


@pytest.mark.parametrize("kind", SESSIONS)
def test_beam_results_do_not_depend_on_batch_size(kind):
    rng = np.random.default_rng(4)
    model = tiny_decoder(seed=4)
    trie = CodeTrie.from_unique_ids(IDTable.from_codes(rng.integers([4, 3, 5], size=(30, 3))).unique_ids)
    queries = torch.randn(6, 6, generator=torch.Generator().manual_seed(5))
    all_at_once = constrained_beam_search(make_session(model, queries, kind), trie, num_queries=6,
                                          beam_size=4)
    one_by_one = [constrained_beam_search(make_session(model, queries[i:i + 1], kind), trie,
                                          num_queries=1, beam_size=4) for i in range(6)]
    # one session's rows go through other products than six's: the same ranking, not bits
    assert_same_ranking(all_at_once[1], all_at_once[0], torch.cat([r[1] for r in one_by_one]),
                        torch.cat([r[0] for r in one_by_one]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", SESSIONS)
@pytest.mark.parametrize("seed,beam", [(0, 3), (1, 5), (2, 8)])
def test_fast_beam_search_equals_slow_reference(seed, beam, kind):
    from genir.search.reference import reference_beam_search

    rng = np.random.default_rng(seed)
    model = tiny_decoder(seed=seed)
    table = IDTable.from_codes(rng.integers([4, 3, 5], size=(30, 3)))
    trie = CodeTrie.from_unique_ids(table.unique_ids)
    queries = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed))
    leaves, scores = constrained_beam_search(make_session(model, queries, kind), trie,
                                             num_queries=4, beam_size=beam)
    ref_ids, ref_scores = reference_beam_search(model, queries, table.unique_ids, beam_size=beam)
    leaf_of = {tuple(ids.tolist()): leaf for leaf, ids in enumerate(table.unique_ids)}
    want = np.full((4, beam), -1)
    want_scores = np.full((4, beam), -np.inf)
    for q in range(4):
        want[q, :len(ref_ids[q])] = [leaf_of[ids] for ids in ref_ids[q]]
        want_scores[q, :len(ref_ids[q])] = ref_scores[q]
    assert_same_ranking(scores, leaves, want_scores, want, atol=1e-4)



class TableSession:
    """A fake decoder: fixed log-probs per level and beam row, (Q * width, K) at each level;
    `step_chunks` > 1: the search's steps split the queries into that many chunks on
    numba's threads (as after a fused session's parallel level)."""

    def __init__(self, logps: list[np.ndarray], num_queries: int, step_chunks: int = 1) -> None:
        self.logps, self.q, self.width, self.fed = logps, num_queries, 1, []
        self.numpy_steps = False
        self.step_chunks = step_chunks
        if step_chunks > 1:
            fused.row_kernels(True)     # numba's threads started as a fused session does

    def log_probs(self, level: int) -> torch.Tensor:
        return torch.from_numpy(self.logps[level][:self.q * self.width])

    def advance(self, level: int, codes: torch.Tensor, parent: torch.Tensor) -> None:
        self.fed.append((codes.clone(), parent.clone()))
        self.width = codes.shape[1]


def naive_beam(logps, unique_ids, num_queries, beam):
    """The search spelled out: every (beam, child) candidate listed in visit order (beams
    best first, children by code), stable-sorted by score, the best `beam` kept; -inf
    candidates are no IDs. Log-prob rows follow the search's layout: a level has
    min(beam, previous rows x the level's largest fan-out) rows, live beams first.
    -> per query: the final (leaf, score) list and each level's beam prefixes."""
    ids = [tuple(r) for r in unique_ids.tolist()]
    levels = len(ids[0])
    fan = [max(len({r[level] for r in ids if r[:level] == p}) for p in {r[:level] for r in ids})
           for level in range(levels)]
    out = []
    for q in range(num_queries):
        beams, width, prefixes = [((), 0.0)], 1, []
        for level in range(levels):
            cands = []
            for i, (prefix, score) in enumerate(beams):
                lp = logps[level][q * width + i]
                for code in sorted({r[level] for r in ids if r[:level] == prefix}):
                    v = np.float32(score) + lp[code]
                    if v > -np.inf:
                        cands.append((prefix + (code,), v))
            beams = sorted(cands, key=lambda c: -c[1])[:beam]   # sorted() is stable
            width = min(beam, width * fan[level])
            prefixes.append([p for p, _ in beams])
        out.append(([(ids.index(p), s) for p, s in beams], prefixes))
    return out


@pytest.mark.parametrize("seed,beam,ties,num_ids,masked", [
    (0, 1, False, None, False), (1, 3, False, None, False), (2, 7, False, None, False),
    (3, 4, True, None, False), (4, 9, True, None, False), (5, 30, True, None, False),
    (6, 10, False, 6, False),     # more beams than IDs: dead rows inside the search, -1 pads
    (7, 5, False, None, True), (8, 12, True, 9, True)])   # some codes at -inf
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_search_step_equals_the_search_spelled_out(seed, beam, ties, num_ids, masked, chunks):
    """Random tries (some with complete levels), random log-probs or coarse ones full of
    ties: the compiled per-level step keeps exactly the naive search's beams, in order,
    and feeds the decoder exactly those beams' codes and parents; also with the 5 queries
    split into 2 or 3 chunks at every level (the parallel step, `beam._STEP[True]`)."""
    rng = np.random.default_rng(seed)
    sizes = (3, 4, 5) if seed % 2 else (6, 2, 4)
    codes = rng.integers(sizes, size=(num_ids or int(rng.integers(5, 60)), 3))
    if seed % 3 == 0 and num_ids is None:   # every first two codes present: dense levels
        codes = np.concatenate([codes, [(a, b, 0) for a in range(sizes[0])
                                        for b in range(sizes[1])]])
    unique = IDTable.from_codes(codes).unique_ids
    trie = CodeTrie.from_unique_ids(unique)
    q = 5
    logps = [(rng.integers(-3, 0, size=(q * beam, k)) if ties else
              rng.normal(size=(q * beam, k))).astype(np.float32) for k in sizes]
    if masked:
        for lp in logps:
            lp[rng.random(lp.shape) < 0.3] = -np.inf
    session = TableSession(logps, q, chunks)
    leaves, scores = constrained_beam_search(session, trie, num_queries=q, beam_size=beam)
    assert leaves.shape == scores.shape == (q, beam)
    for row, (ref, prefixes) in enumerate(naive_beam(logps, unique, q, beam)):
        assert leaves[row, :len(ref)].tolist() == [leaf for leaf, _ in ref]
        np.testing.assert_array_equal(scores[row, :len(ref)].numpy(), [s for _, s in ref])
        assert (leaves[row, len(ref):] == -1).all() and torch.isinf(scores[row, len(ref):]).all()
        # the beams fed to the decoder, level by level, rebuilt from codes and parents
        fed: list[tuple[int, ...]] = [()]
        for level, (fed_codes, parents) in enumerate(session.fed):
            pairs = zip(fed_codes[row].tolist(), parents[row].tolist(), strict=True)
            fed = [fed[p] + (c,) for c, p in pairs]
            assert fed[:len(prefixes[level])] == prefixes[level]


def test_equal_scores_keep_the_order_of_the_ids():
    """All log-probs equal: ties go to the earlier beam, then the smaller code, so the
    first IDs in lexicographic order win, on the dense and the general path alike."""
    grid = np.array([(a, b, c) for a in range(3) for b in range(4) for c in (1, 3)])
    unique = IDTable.from_codes(grid).unique_ids
    dense = CodeTrie.from_unique_ids(unique)
    general = CodeTrie(dense.node_code, dense.child_start, dense.max_children,
                       complete=[False] * 3)
    assert dense.complete == [True, True, False]
    logps = [np.zeros((4 * 5, k), np.float32) for k in (3, 4, 4)]
    for trie in (dense, general):
        leaves, scores = constrained_beam_search(TableSession(logps, 4), trie, num_queries=4,
                                                 beam_size=5)
        assert leaves.tolist() == [[0, 1, 2, 3, 4]] * 4
        assert (scores == 0).all()


def test_nan_log_probs_are_refused():
    trie = CodeTrie.from_unique_ids(np.array([[0, 1], [1, 0]]))
    logps = [np.array([[0.0, np.nan]], np.float32), np.zeros((2, 2), np.float32)]
    with pytest.raises(ValueError, match="level 0 contain NaN"):
        constrained_beam_search(TableSession(logps, 1), trie, num_queries=1, beam_size=2)
    # also in a dense row that the step would skip as unable to beat the kept candidates
    from genir.search.beam import _STEP

    lp = np.array([[[1, 2, 3, 4], [0, 0, 0, np.nan]]], np.float32)
    out = _STEP[False](lp, np.array([[0.0, -5.0]], np.float32), np.array([[0, 1]]),
                       np.zeros(2, np.int64), np.zeros(1, np.int64), True, 2, 1)
    assert out[4] and out[1].tolist() == [[4.0, 3.0]]
    # split over queries: the NaN is reported from whichever chunk met it
    fused.row_kernels(True)
    lp3 = np.concatenate([np.zeros_like(lp), np.zeros_like(lp), lp])
    args = (np.tile(np.array([[0.0, -5.0]], np.float32), (3, 1)), np.tile([[0, 1]], (3, 1)),
            np.zeros(2, np.int64), np.zeros(1, np.int64), True, 2)
    for chunks in (2, 3):
        split = _STEP[True](lp3, *args, chunks)
        whole = _STEP[False](lp3, *args, 1)
        assert split[4] and whole[4]
        for a, b in zip(split[:4], whole[:4], strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_decoder_scoring_fewer_codes_than_the_trie_holds_is_refused():
    trie = CodeTrie.from_unique_ids(np.array([[0, 1], [3, 0]]))
    session = TableSession([np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32)], 1)
    with pytest.raises(ValueError, match="scores 3 codes at level 0, but the trie holds code 3"):
        constrained_beam_search(session, trie, num_queries=1, beam_size=2)

# -- token-sequence queries (IRGen patches, AVG word pieces): the same search, a masked memory --

def test_padding_tokens_are_masked_out():
    """A padded (all-zero) token has no say: moving its position embedding changes nothing
    for queries that pad it, and changes the others."""
    model = tiny_decoder(query_tokens=3)
    queries = token_queries(6, 3)
    codes = torch.zeros(6, 3, dtype=torch.int64)
    with torch.no_grad():
        before = torch.cat(model(queries, codes), 1)
        # (not a constant: the memory's layer norm would take a uniform shift away)
        model.prefix_pos[2] += torch.linspace(-5.0, 5.0, model.config.d_model)
        after = torch.cat(model(queries, codes), 1)
    torch.testing.assert_close(after[1::2], before[1::2])
    assert not torch.allclose(after[0::2], before[0::2])
    with pytest.raises(ValueError, match="divide query_dim"):
        DecoderConfig(query_dim=6, query_tokens=4)


@pytest.mark.parametrize("kind", SESSIONS)
def test_dense_levels_take_the_fast_path_and_agree_with_brute_force(kind):
    """Every (a, b) prefix present: levels 0 and 1 are complete (child = parent * K + code);
    results equal exhaustive scoring and the general path's."""
    rng = np.random.default_rng(3)
    grid = np.array([(a, b, c) for a in range(4) for b in range(3) for c in rng.choice(5, 2,
                                                                                     replace=False)])
    table = IDTable.from_codes(grid)
    trie = CodeTrie.from_unique_ids(table.unique_ids)
    assert trie.complete == [True, True, False]
    model = tiny_decoder(seed=3)
    queries = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))
    for beam in (3, 7, table.num_ids):
        leaves, scores = constrained_beam_search(make_session(model, queries, kind), trie,
                                                 num_queries=6, beam_size=beam)
        general = CodeTrie(trie.node_code, trie.child_start, trie.max_children,
                           complete=[False] * 3)
        ref_leaves, ref_scores = constrained_beam_search(make_session(model, queries, kind),
                                                         general, num_queries=6, beam_size=beam)
        assert torch.equal(leaves, ref_leaves)
        torch.testing.assert_close(scores, ref_scores)
    exact_leaves, exact_scores = brute_force(model, queries, table.unique_ids, table.num_ids)
    assert_same_ranking(scores, leaves, exact_scores, exact_leaves, atol=1e-4, rtol=1e-4)


