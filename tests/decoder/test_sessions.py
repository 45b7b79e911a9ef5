"""The decoder's search sessions: incremental decoding against teacher forcing, the fused CPU
session and its kernels against torch, their thread and packing settings, compiled
decoding."""

from __future__ import annotations

import copy
import os
import time

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_ranking
from decoder_helpers import SESSIONS, make_session, tiny_decoder, token_queries
from genir.decoder import fused
from genir.decoder.fused import FusedSession
from genir.decoder.model import CodeDecoder, DecoderConfig, DecoderSession
from genir.ids.table import IDTable
from genir.search.beam import constrained_beam_search
from genir.search.trie import CodeTrie


def assert_session_matches_teacher_forcing(model, queries, kind="torch"):
    codes = torch.tensor([[1, 2, 0], [3, 0, 4], [0, 1, 2], [2, 2, 3]])
    with torch.no_grad():
        logits = model(queries, codes)
    session = make_session(model, queries, kind)
    for level in range(3):
        torch.testing.assert_close(session.log_probs(level), logits[level].log_softmax(-1),
                                   atol=1e-5, rtol=1e-5)
        if level < 2:
            session.advance(level, codes[:, level:level + 1], torch.zeros(4, 1, dtype=torch.int64))


@pytest.mark.parametrize("kind", SESSIONS)
@pytest.mark.parametrize("query_tokens", [0, 3])   # pooled prefix; 3 tokens, some padded
def test_incremental_decoding_matches_teacher_forcing(query_tokens, kind):
    model = tiny_decoder(query_tokens=query_tokens)
    queries = token_queries(4, 7) if query_tokens else torch.randn(4, 6)
    assert_session_matches_teacher_forcing(model, queries, kind)


def test_cached_decoding_weights_follow_in_place_updates():
    """The session's fused projections are cached on the model; an optimiser step and
    load_state_dict (both in place), parameters and modules assigned anew and new data
    must not leave later sessions on stale weights, and weights first made under
    inference mode must still serve a session with autograd on."""
    model = tiny_decoder(seed=4)
    spare = torch.nn.LayerNorm(16)      # made before any weights, assigned after them
    with torch.no_grad():
        spare.weight.fill_(2.0)
    queries = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    for kind in SESSIONS:
        assert_session_matches_teacher_forcing(model, queries, kind)
    assert model.decoding_weights() is model.decoding_weights()     # made once, then reused
    model.fuse_decoding(one_call=True).fused_weights()
    assert model.fused_weights() is model.fused_weights()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.loss(queries, torch.tensor([[1, 2, 0], [3, 0, 4], [0, 1, 2], [2, 2, 3]])).backward()
    opt.step()
    for kind in SESSIONS:
        assert_session_matches_teacher_forcing(model, queries, kind)
    model.load_state_dict(tiny_decoder(seed=5).state_dict())
    with torch.inference_mode():
        assert_session_matches_teacher_forcing(model, queries)
    assert_session_matches_teacher_forcing(model, queries, "fused")
    # a parameter or module assigned anew (not in place) after the first search
    with torch.no_grad():
        model.heads[1].weight = torch.nn.Parameter(torch.randn_like(model.heads[1].weight))
        model.ln_f = torch.nn.LayerNorm(16)
        model.ln_f.bias.fill_(0.5)
    for kind in SESSIONS:
        assert_session_matches_teacher_forcing(model, queries, kind)
    # modules made elsewhere leave the weights as they are; new data (as `.to` gives: no
    # version bump, new pointers) is seen
    weights = model.fused_weights()
    torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert model.fused_weights() is weights
    model.to(torch.float64).to(torch.float32)
    assert model.fused_weights() is not weights
    # parameters replaced by writing the module dicts directly (no registration hook fires): as
    # `.to` does with torch's overwrite-on-conversion setting, then changed in place
    weights = model.fused_weights()
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.to(torch.float64).to(torch.float32)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    with torch.no_grad():
        model.heads[0].weight.mul_(-1.0)
    assert model.fused_weights() is not weights
    for kind in SESSIONS:
        assert_session_matches_teacher_forcing(model, queries, kind)
    model.ln_f = spare
    for kind in SESSIONS:
        assert_session_matches_teacher_forcing(model, queries, kind)
    opt.zero_grad(set_to_none=True)
    session = model.session(queries)        # autograd on, weights from inference mode
    session.log_probs(0).sum().backward()
    assert model.prefix[0].weight.grad is not None


@pytest.mark.parametrize("cfg", [
    {},                                                   # the tiny test decoder
    {"d_model": 24, "num_heads": 3, "num_layers": 1, "num_prefix": 5},
    {"d_model": 32, "num_heads": 1, "num_layers": 3, "mlp_ratio": 2},
    {"query_tokens": 3},                                  # masked memory, padded tokens
])
@pytest.mark.parametrize("parallel,one_call,pack", [
    (True, True, True), (False, True, True), (True, True, False), (False, True, False),
    (True, False, True), (False, False, True)])
def test_fused_session_equals_torch_session(cfg, parallel, one_call, pack):
    """Both sessions fed the same codes and random parents, with the beam count growing
    (1 -> 3 -> 7 -> 7 rows a query, so the fused caches grow) and a parent chosen by several
    beams: log-probabilities agree at every level, fused kernels on threads or not, a level
    in one call (its products from weights packed by MKL or not) or torch's products
    between the kernels."""
    torch.manual_seed(sum(map(ord, str(cfg))))
    config = DecoderConfig(**{"query_dim": 6, "codebook_sizes": (4, 3, 5, 2), "d_model": 16,
                              "num_layers": 2, "num_heads": 2, "num_prefix": 3, "dropout": 0.0,
                              **cfg})
    model = CodeDecoder(config).eval().fuse_decoding(parallel=parallel, one_call=one_call,
                                                     pack=pack)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))   # LN gains, biases and positions off their init
    weights = model.fused_weights()   # packed from the first request (if asked for and
    assert (weights.level is not None) == fused.MKL                       # MKL has it)
    assert (weights.memory is not None) == (fused.MKL and not config.query_tokens)
    packs = pack and one_call                 # (packs only serve the level in one call)
    assert weights.packed == packs and model.fused_weights() is weights
    if weights.level is not None:   # the packed buffers: there, or not asked for
        groups = [*weights.level[15:], [h[2] for h in weights.level_heads]]
        if weights.memory is not None:
            groups += [weights.memory[10:12], weights.memory[12]]
        assert all(bool(b.size) == (packs and fused._PACK is not None)
                   for group in groups for b in group)
    queries = token_queries(5, 3) if config.query_tokens else torch.randn(5, 6)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        fast, ref = FusedSession(model, queries), DecoderSession(model, queries)
        width = 1
        for level, beams in enumerate((3, 7, 7, None)):
            torch.testing.assert_close(fast.log_probs(level), ref.log_probs(level),
                                       atol=2e-5, rtol=1e-5)
            if beams is None:
                break
            codes = torch.randint(config.codebook_sizes[level], (5, beams), generator=gen)
            parent = torch.randint(width, (5, beams), generator=gen)
            parent[:, :2] = 0                               # shared parents
            fast.advance(level, codes, parent)
            ref.advance(level, codes, parent)
            width = beams


def test_parallel_kernels_split_rows_like_serial_ones():
    """The attention kernels split rows into `chunks` ranges (one per thread): any chunk
    count, rows not divisible by it included, gives the serial kernels' output; the
    parallel layer norm equals the serial one."""
    rng = np.random.default_rng(0)
    rows, heads, hd, t, levels, n_mem, beams = 7, 2, 4, 2, 3, 3, 7
    d = heads * hd
    kv = rng.normal(size=(levels, rows, heads, 2 * hd)).astype(np.float32)
    anc = rng.integers(rows, size=(levels, rows))
    anc[t] = np.arange(rows)
    qkv = rng.normal(size=(rows, 3 * d)).astype(np.float32)
    hc = rng.normal(size=(rows, d)).astype(np.float32)
    bias = rng.normal(size=3 * d).astype(np.float32)
    mem = rng.normal(size=(2, 1, heads, n_mem, hd)).astype(np.float32)
    mask = np.array([[True, False, True]])
    mem_k, mem_v = mem[0], mem[1]          # one query: (1, H, N, hd)
    outs = {}
    variants = [("serial", fused.SERIAL, 1)] + [("parallel", fused.PARALLEL, chunks)
                                                for chunks in (1, 2, 3, 7)]
    for name, kernels, chunks in variants:
        y_self, y_cross = np.zeros((rows, d), np.float32), np.zeros((rows, d), np.float32)
        cache = kv.copy()
        kernels.self_attn(qkv, bias, cache, anc, t, y_self, chunks)
        kernels.cross_attn(hc, bias[:d], mem_k, mem_v, mask, beams, y_cross, chunks)
        outs[name, chunks] = (y_self, y_cross, cache)
    ref = outs["serial", 1]
    assert (np.abs(ref[0]).max(axis=1) > 0).all() and (np.abs(ref[1]).max(axis=1) > 0).all()
    for out in outs.values():
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    x = rng.normal(size=(rows, d)).astype(np.float32)
    ln = (rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32),
          np.float32(1e-5))
    ln_out = []
    for kernels in (fused.SERIAL, fused.PARALLEL):
        xs, out = x.copy(), np.zeros_like(x)
        kernels.add_ln(xs, hc, bias[:d], True, ln, out)
        ln_out.append((xs, out))
    for a, b in zip(*ln_out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


needs_mkl = pytest.mark.skipif(not fused.MKL, reason="torch here has no MKL sgemm to call")
needs_pack = pytest.mark.skipif(fused._PACK is None,
                                reason="torch's MKL here has no packed products")


@needs_mkl
def test_gemm_rows_equals_numpy():
    """MKL's sgemm as `_level` calls it, from the weight or from the weight packed once by
    MKL (`fused.pack`, used for any number of rows): out[lo:hi] = x[lo:hi] @ w.T, other
    rows untouched, an empty range a no-op."""
    rng = np.random.default_rng(0)
    ints, flts = np.zeros(6, np.int32), np.zeros(2, np.float32)
    for rows, k, n in ((9, 5, 4), (180, 128, 384), (40, 512, 128)):
        x = rng.normal(size=(rows, k)).astype(np.float32)
        w = rng.normal(size=(n, k)).astype(np.float32)
        packed = fused.pack(w)
        assert bool(packed.size) == (fused._PACK is not None)
        for buffer in (fused.NOT_PACKED, packed):
            for lo, hi in ((0, rows), (2, 7), (rows - 1, rows), (3, 3), (1, 17), (5, 165)):
                hi = min(hi, rows)
                out = np.full((rows, n), 7.0, np.float32)
                fused._gemm_rows(x, w, buffer, out, lo, hi, ints, flts)
                np.testing.assert_allclose(out[lo:hi], x[lo:hi] @ w.T, rtol=1e-4, atol=1e-4)
                assert (np.delete(out, np.s_[lo:hi], axis=0) == 7.0).all()


def test_exp_and_log_softmax_rows():
    """`_exp` (the kernels' inline exponential): relative error <= 4e-6 over [-87, 0],
    <= 1e-6 over [-10, 0]; NaN stays NaN; -inf gives (about) 0. The head's bias +
    log-softmax over rows against torch, for K not a multiple of the 8 max lanes, huge
    logits, and a NaN logit (its row NaN, as torch's; the beam search refuses it)."""
    exp = numba.njit(lambda x: np.array([fused._exp(v) for v in x], dtype=np.float32))
    for low, tol in ((-87.0, 4e-6), (-10.0, 1e-6)):
        x = np.linspace(low, 0, 20001, dtype=np.float32)
        ref = np.exp(x.astype(np.float64))
        assert np.max(np.abs(exp(x) - ref) / ref) <= tol
    out = exp(np.array([np.nan, -np.inf, 0.0], np.float32))
    assert np.isnan(out[0]) and 0 <= out[1] < 1.2e-38 and out[2] == 1.0
    rng = np.random.default_rng(0)
    for k in (13, 256):
        z = (rng.normal(size=(6, k)) * 5).astype(np.float32)
        z[1] *= 300                                    # logits in the thousands
        bias = rng.normal(size=k).astype(np.float32)
        got = z.copy()
        got[4, 3] = np.nan
        fused._bias_log_softmax_rows(got, bias, 1, 6, np.empty(8, np.float32))
        ref = torch.log_softmax(torch.from_numpy(z + bias), -1).numpy()
        np.testing.assert_array_equal(got[0], z[0])   # row 0 outside lo..hi
        keep = np.ones(6, bool)
        keep[[0, 4]] = False
        # (a few float32 ulps of values in the thousands: rtol; torch's kernel differs by CPU)
        np.testing.assert_allclose(got[keep], ref[keep], rtol=1e-6, atol=5e-6)
        assert np.isnan(got[4]).all()                 # as torch's: the row is NaN
        assert np.isfinite(got[keep]).all()


@needs_mkl
def test_memory_kernel_equals_torch():
    """`_memory` (prefix MLP, layer norm and every block's cross-attention keys/values in
    one call) against `CodeDecoder.memory` + `keys_values`, serial and split into 1, 2, 3
    and 7 chunks of queries."""
    model = tiny_decoder()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    queries = torch.randn(5, 6)
    with torch.inference_mode():
        mem, _ = model.memory(queries)
        ref = [blk.cross_attn.keys_values(mem) for blk in model.blocks]
    arrays = model.fused_weights().memory
    shape = ref[0][0].shape
    for kernels, chunks in ((fused.SERIAL, 1), *((fused.PARALLEL, c) for c in (1, 2, 3, 7))):
        keys = tuple(np.zeros(shape, np.float32) for _ in model.blocks)
        values = tuple(np.zeros(shape, np.float32) for _ in model.blocks)
        kernels.memory(queries.numpy(), arrays, keys, values, chunks)
        for (k, v), got_k, got_v in zip(ref, keys, values, strict=True):
            np.testing.assert_allclose(got_k, k.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got_v, v.numpy(), rtol=1e-5, atol=1e-5)


@needs_mkl
def test_level_in_one_call_splits_rows_like_the_kernels():
    """A whole level in one call (`_level`), serial or split into 2, 3 or 7 chunks of rows
    (35 rows: at least `ROWS_PARALLEL_MIN`, so the chunks are real; 2 and 3 do not divide
    them), gives what torch's products with the row kernels between them give:
    log-probabilities, position t's keys/values and the residual stream."""
    model = tiny_decoder((4, 3, 5))
    queries = torch.randn(5, 6)
    rows = 5 * 7
    assert rows >= fused.ROWS_PARALLEL_MIN
    with torch.inference_mode():
        s = FusedSession(model, queries)
        s.advance(0, torch.tensor([[1, 2] * 3 + [0]] * 5), torch.zeros(5, 7, dtype=torch.int64))
    x = torch.randn(rows, 16)
    w = s.weights_fused
    results = []
    for kernels, one_call in ((fused.SERIAL, False), (fused.SERIAL, True),
                              *((fused.PARALLEL._replace(threads=c), True) for c in (2, 3, 7))):
        kv = tuple(a.copy() for a in s.kv)
        xs = x.clone()
        logp = fused.run_level(kernels, w, kv, s.anc, s.memory, s.mask, xs.numpy(), 1, 7,
                               one_call)
        results.append((torch.from_numpy(logp), torch.from_numpy(kv[0][1]),
                        torch.from_numpy(kv[1][1]), xs))
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=3e-6)


def _row_sum(a):  # type: ignore[no-untyped-def]
    total = np.float32(0.0)
    for v in a:
        total += v
    return total


def _wide_row_sum(a):  # type: ignore[no-untyped-def]
    fused._wide_vectors()
    total = np.float32(0.0)
    for v in a:
        total += v
    return total


def test_wide_vectors_marks_the_function_that_calls_it():
    """`_wide_vectors` (first in every fused kernel) leaves LLVM's attribute for 512-bit
    vectors on the function that calls it, and on no other; what it computes is unchanged.
    (Fails if llvmlite's attribute set changes shape: the kernels would not compile.)"""
    wide, plain = numba.njit(_wide_row_sum), numba.njit(_row_sum)
    a = np.arange(100, dtype=np.float32)
    assert wide(a) == plain(a) == 4950
    assert '"prefer-vector-width"="512"' in wide.inspect_llvm(wide.signatures[0])
    assert "prefer-vector-width" not in plain.inspect_llvm(plain.signatures[0])


def test_bias_gelu_kernel_equals_torch():
    """The MLP's bias + GELU kernel (a rational erf) against torch's exact GELU, serial and
    split into chunks: within 2e-6 + 1e-6 |x| over [-10, 10] and on random rows (torch's
    erf rounds by CPU); NaN stays NaN."""
    x = torch.linspace(-10, 10, 21 * 953).view(21, 953)
    bias = torch.linspace(-0.5, 0.5, 953)
    rows = torch.randn(7, 953) * 3
    for kernels, chunks in ((fused.SERIAL, 1), (fused.PARALLEL, 3)):
        for f in (x, rows):
            out = f.clone()
            kernels.bias_gelu(out.numpy(), bias.numpy(), chunks)
            torch.testing.assert_close(out, F.gelu(f + bias), atol=2e-6, rtol=1e-6)
        nan = torch.tensor([[float("nan"), 1.0]])
        kernels.bias_gelu(nan.numpy(), np.zeros(2, np.float32), chunks)
        assert nan[0, 0].isnan() and not nan[0, 1].isnan()


def test_fused_session_with_tanh_gelu_equals_torch_session():
    """A decoder whose MLP uses the tanh-approximate GELU (torch's, in the fused session
    too) gets the torch session's log-probs."""
    model = tiny_decoder()
    for blk in model.blocks:
        blk.mlp[1].approximate = "tanh"
    assert model.fused_weights().level is None     # one call has the exact GELU only
    queries = torch.randn(3, 6)
    exact = tiny_decoder()
    with torch.inference_mode():
        fused_session, ref = FusedSession(model, queries), DecoderSession(model, queries)
        codes = torch.tensor([[1, 2], [0, 3], [2, 2]])
        fused_session.advance(0, codes, torch.zeros(3, 2, dtype=torch.int64))
        ref.advance(0, codes, torch.zeros(3, 2, dtype=torch.int64))
        torch.testing.assert_close(fused_session.log_probs(1), ref.log_probs(1), atol=2e-5,
                                   rtol=1e-5)
        plain = FusedSession(exact, queries)   # the same weights, exact GELU: another function
        plain.advance(0, codes, torch.zeros(3, 2, dtype=torch.int64))
        assert not torch.allclose(plain.log_probs(1), ref.log_probs(1), atol=1e-4)


def test_row_kernels_choice(monkeypatch):
    """Parallel kernels on torch's thread count; one thread when asked, when torch has
    one, in a forked child (numba's OpenMP layer would abort it) and, with a warning, when
    numba has no thread-safe threading layer."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    chosen = fused.row_kernels(True)
    assert chosen.threads == threads
    assert chosen.self_attn is (fused.PARALLEL if threads > 1 else fused.SERIAL).self_attn
    assert fused.row_kernels(False) is fused.SERIAL
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert fused.row_kernels(True) is fused.SERIAL
    finally:
        torch.set_num_threads(previous)
    if threads < 2:
        return
    monkeypatch.setattr(fused, "_THREADS_PID", os.getpid() + 1)       # a forked child
    assert fused.row_kernels(True) is fused.SERIAL
    monkeypatch.setattr(fused, "_THREADS_PID", None)                  # first call, no layer
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    with pytest.warns(RuntimeWarning, match="workqueue"):
        assert fused.row_kernels(True) is fused.SERIAL
    assert fused.row_kernels(True) is fused.SERIAL                    # decided once


def test_forked_child_gets_serial_kernels(monkeypatch):
    """A child forked after numba's threads started, by genir or by anyone else, gets the
    serial kernels (numba aborts a child starting a parallel region on GNU OpenMP threads
    inherited from its parent). The child only asks which kernels it would run: a torch
    matmul on 2 threads hangs in such a child here, with or without genir."""
    if min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS) < 2:
        pytest.skip("one thread: serial kernels anyway")
    fused.row_kernels(True)                                   # numba's threads started
    for started_by in ("genir", "someone else"):
        if started_by == "someone else":   # genir never looked: no pid of its own recorded
            monkeypatch.setattr(fused, "_THREADS_PID", None)
        pid = os.fork()
        if pid == 0:                                          # the child: answer and leave
            os._exit(0 if fused.row_kernels(True) is fused.SERIAL else 1)
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, started_by


def test_searches_from_several_threads_at_once():
    """Searches running in several Python threads at once (a server's worker threads) on
    one model, parallel kernels included, each get the results they get alone."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(0)
    sizes = (4, 3, 5)
    model = tiny_decoder(sizes)
    trie = CodeTrie.from_unique_ids(IDTable.from_codes(rng.integers(sizes, size=(60, 3))).unique_ids)
    batches = [torch.randn(16, 6, generator=torch.Generator().manual_seed(i)) for i in range(8)]

    def search(queries):
        with torch.inference_mode():
            return constrained_beam_search(model.session(queries), trie,
                                           num_queries=len(queries), beam_size=6)

    alone = [search(q) for q in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(search, batches * 3))
    for i, (leaves, scores) in enumerate(together):
        torch.testing.assert_close(leaves, alone[i % len(batches)][0], rtol=0, atol=0)
        torch.testing.assert_close(scores, alone[i % len(batches)][1])


def test_fuse_decoding_keeps_parallel_unless_asked():
    model = tiny_decoder()
    assert model.options.parallel and model.options.one_call and model.options.pack
    model.fuse_decoding(parallel=False, one_call=False, pack=False)
    model.fuse_decoding(False)
    model.fuse_decoding()
    assert model.options.fused and not model.options.parallel and not model.options.one_call
    assert not model.options.pack
    model.fuse_decoding(parallel=True)
    assert model.options.parallel and not model.options.one_call
    model.fuse_decoding(one_call=True, pack=True)
    assert model.options.parallel and model.options.one_call and model.options.pack


@needs_pack
def test_packed_weights_follow_the_setting_and_copies():
    """Weights are packed from the first request (every search on them runs the same
    products), again after a parameter update; `fuse_decoding(pack=False)` and
    `session(pack=False)` (AVG's discriminative loss: a search per weight update) take
    them unpacked; a deep copy of a model whose weights were packed searches with its own
    packed buffers (MKL's packed matrices must not move), with the original's
    log-probabilities."""
    torch.manual_seed(0)
    model = CodeDecoder(DecoderConfig(query_dim=6, codebook_sizes=(4, 3, 5), d_model=16,
                                      num_heads=2, num_prefix=3)).eval()
    packed = model.fused_weights()
    assert packed.packed and model.fused_weights() is packed and packed.level[15][0].size
    plain = model.fused_weights(pack=False)
    assert not plain.packed and not plain.level[15][0].size
    with torch.inference_mode():
        assert not model.session(torch.randn(2, 6), pack=False).weights_fused.packed
        assert model.session(torch.randn(2, 6)).weights_fused.packed
    with torch.no_grad():
        model.heads[0].bias.add_(1.0)
    assert model.fused_weights() is not packed and model.fused_weights().packed
    plain = model.fuse_decoding(pack=False).fused_weights()
    assert not plain.packed and model.fused_weights() is plain
    assert model.fuse_decoding(pack=True).fused_weights().packed
    twin = copy.deepcopy(model)      # without the derived weights: made from its own
    assert twin._fused is None and twin._decoding is None and model._fused is not None
    assert twin.fused_weights().packed
    plain_twin = copy.deepcopy(model.fuse_decoding(one_call=False))   # nothing reads packs:
    assert not plain_twin.fused_weights().packed                      # none made
    assert model.fuse_decoding(one_call=True).fused_weights().packed
    queries = torch.randn(40, 6)     # 40 rows: the parallel variants, where threads allow
    with torch.inference_mode():
        mine, theirs = model.session(queries), twin.session(queries)
        assert isinstance(theirs, FusedSession) and theirs.weights_fused.packed
        torch.testing.assert_close(theirs.log_probs(0), mine.log_probs(0), atol=0, rtol=0)
        codes, parent = torch.randint(4, (40, 2)), torch.zeros(40, 2, dtype=torch.long)
        mine.advance(0, codes, parent)
        theirs.advance(0, codes, parent)
        torch.testing.assert_close(theirs.log_probs(1), mine.log_probs(1), atol=0, rtol=0)


def test_session_kind_follows_how_it_is_asked_for():
    """Inference on CPU in float32 takes the fused session; autograd on, training mode,
    fuse_decoding(False), compile_decoding and float64 take the torch one."""
    model = tiny_decoder()
    queries = torch.randn(2, 6)
    with torch.inference_mode():
        assert type(model.session(queries)) is FusedSession
    with torch.no_grad():
        assert type(model.session(queries)) is FusedSession
    assert type(model.session(queries)) is DecoderSession
    with torch.inference_mode():
        assert type(model.train().session(queries)) is DecoderSession
        model.eval()
        assert type(model.fuse_decoding(False).session(queries)) is DecoderSession
        model.fuse_decoding()
        model.options.compiled = True                  # (not run: only which session)
        assert type(model.session(queries)) is DecoderSession
        model.options.compiled = False
        assert type(model.double().session(queries.double())) is DecoderSession
        assert type(model.float().session(queries)) is FusedSession
        with pytest.raises(ValueError, match="float32"):      # no fused weights for float64
            FusedSession(model.double(), queries.double())
        model.float()


@pytest.mark.slow   # inductor compiles C++ for ~5 graphs: 1-2 minutes on 2 cores
def test_compiled_decoding_equals_eager():
    """compile_decoding runs the same sessions through torch.compile: the same beams and
    scores as eager decoding, across batch sizes (shapes turn dynamic), with padded query
    tokens (the masked cross-attention); sessions made with autograd on stay eager. (The
    pooled-query path is the same code without the mask.)"""
    rng = np.random.default_rng(3)
    table = IDTable.from_codes(rng.integers([4, 3, 5], size=(30, 3)))
    trie = CodeTrie.from_unique_ids(table.unique_ids)
    model = tiny_decoder(seed=6, query_tokens=3)
    for n in (5, 3):
        queries = token_queries(n, n)
        with torch.inference_mode():
            eager = constrained_beam_search(DecoderSession(model, queries), trie, num_queries=n,
                                            beam_size=6)
            model.compile_decoding()
            session = model.session(queries)
            assert session.compiled
            compiled = constrained_beam_search(session, trie, num_queries=n, beam_size=6)
            model.compile_decoding(False)
        assert_same_ranking(compiled[1], compiled[0], eager[1], eager[0], atol=1e-5, rtol=1e-5)
    model.compile_decoding()
    assert not model.session(queries).compiled    # autograd on: eager


def test_compiled_decoding_failure_names_the_way_out(monkeypatch):
    """A compile failure (e.g. no C++ compiler) surfaces at the first search as an error
    that says what failed and how to decode without compiling."""
    import genir.decoder.model as model_mod

    def broken(*args):
        raise OSError("no compiler")

    # what torch.compile hands back when inductor cannot build: fails at the first call
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    monkeypatch.setattr(model_mod, "_COMPILED", None)
    model = tiny_decoder().compile_decoding()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="compile_decoding\\(False\\)"):
        model.session(torch.randn(2, 6))
    with torch.inference_mode():
        assert not model.compile_decoding(False).session(torch.randn(2, 6)).compiled


def test_session_refuses_levels_out_of_order():
    model = tiny_decoder()
    with torch.inference_mode():
        session = model.session(torch.randn(2, 6))
        with pytest.raises(ValueError, match="at level 0"):
            session.log_probs(1)
        with pytest.raises(ValueError, match="at level 0"):
            session.advance(1, torch.zeros(2, 1, dtype=torch.int64),
                            torch.zeros(2, 1, dtype=torch.int64))


def test_fused_session_says_how_its_level_split_the_queries():
    """`step_chunks`, which the beam search splits its step by: the thread count from 32
    rows a level up (whole queries), 1 below it, 1 where there are fewer queries than
    threads (rows split within queries), 1 on one thread."""
    model = tiny_decoder()
    threads = fused.row_kernels(True).threads
    with torch.inference_mode():
        for q, beams, chunks in ((40, 2, threads), (5, 1, 1), (5, 7, min(threads, 5)),
                                 (1, 40, 1)):
            s = model.session(torch.randn(q, 6))
            assert s.step_chunks == (threads if q >= fused.ROWS_PARALLEL_MIN else 1)
            s.advance(0, torch.zeros(q, beams, dtype=torch.int64),
                      torch.zeros(q, beams, dtype=torch.int64))
            assert s.step_chunks == (chunks if q * beams >= fused.ROWS_PARALLEL_MIN else 1)
        serial = model.fuse_decoding(parallel=False).session(torch.randn(40, 6))
        assert serial.step_chunks == 1
        model.fuse_decoding(parallel=True)


def test_fused_session_refuses_what_its_kernels_cannot_check():
    """The fused kernels read and write without bounds checks: a parent outside the live
    beams, a code outside the level's table, another number of queries and an advance past
    the last level are refused before the session changes, and the session still decodes
    correctly afterwards."""
    model = tiny_decoder()
    queries = torch.randn(2, 6)
    ref = make_session(model, queries, "torch")
    session = make_session(model, queries, "fused")
    zeros = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="parent"):
        session.advance(0, zeros, zeros + 1)               # width is 1 at level 0
    with pytest.raises(IndexError):
        session.advance(0, zeros + 4, zeros)               # level 0 has codes 0..3
    with pytest.raises(ValueError, match="Q = 2"):        # another number of queries
        session.advance(0, torch.zeros(3, 2, dtype=torch.int64),
                        torch.zeros(3, 2, dtype=torch.int64))
    codes = torch.tensor([[1, 2, 0], [2, 0, 1]])            # valid at levels 0 and 1
    for level in (0, 1):
        parent = zeros if level == 0 else torch.tensor([[2, 0, 0], [1, 1, 2]])
        if level == 1:   # one bad value, in the last row: refused before any row is written
            for bad_parent in (3, -1):
                wrong = parent.clone()
                wrong[1, 2] = bad_parent
                with pytest.raises(ValueError, match="parent"):
                    session.advance(level, codes, wrong)
            wrong = codes.clone()
            wrong[1, 2] = 3                                  # level 1 has codes 0..2
            with pytest.raises(IndexError):
                session.advance(level, wrong, parent)
        session.advance(level, codes, parent)
        ref.advance(level, codes, parent)
        torch.testing.assert_close(session.log_probs(level + 1), ref.log_probs(level + 1),
                                   atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="last"):
        session.advance(2, codes, zeros)
