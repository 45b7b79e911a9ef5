"""Trie-constrained beam search, batched over queries and beams.

Each beam carries its trie node; at every level only that node's children are scored and
the best `beam_size` of (beams x children) per query become the next beams. That step is
one compiled loop (`_best_children`, numba): per query it walks each live beam's CSR slice
of the trie, adds the beam's score to the log-probability of each child's code, and keeps
the best candidates in a small heap; no vocabulary-wide mask, no per-beam Python callback,
no (beams x max fan-out) padded tensors; split over the queries in the chunks a session's
levels ran in (`FusedSession.step_chunks`), on numba's threads. The model side is any `DecodingSession`: it
scores the next level and advances its caches by the chosen beams. The search returns leaf
ids (= `IDTable` rows), never an invalid ID; slots with no valid ID left are -1 with
score -inf.

The step used to be ~15 torch operations a level (CSR slots, gathers, a masked top-k);
on 2 CPU cores each costs 5-50 us on tensors this small, which made the loop 6-9% of a
batch-32 query (3-5% now; docs/benchmarks.md). Its references in the tests: brute-force
enumeration, the slow dict-trie search (`genir.search.reference`) and a spelled-out Python
beam search.
"""

from __future__ import annotations

from typing import Protocol, cast

import numba
import numpy as np
import torch
from numba import prange

from genir.compiled import compile_variant
from genir.search.trie import CodeTrie


class DecodingSession(Protocol):
    """What the search asks of a decoder. A session whose `numpy_steps` is True also has
    `log_prob_array(level)` (the same as a float32 C-contiguous numpy array) and
    `advance_arrays(level, codes, parent)` (int64 numpy arrays), which the search then uses.
    `step_chunks`: the chunks of whole queries the session's last level ran in; the search's
    step splits its queries the same way (> 1 promises numba's threads were started safely,
    as `genir.decoder.fused.row_kernels` does; 1 keeps the step on the calling thread)."""

    numpy_steps: bool
    step_chunks: int

    def log_probs(self, level: int) -> torch.Tensor:
        """(Q * B, K_level) log-probabilities of the next code for every live beam."""
        ...

    def advance(self, level: int, codes: torch.Tensor, parent: torch.Tensor) -> None:
        """Feed `codes` (Q, B') at `level`; beam b' of query q continues beam parent[q, b']."""
        ...


class ArraySession(DecodingSession, Protocol):
    """A `DecodingSession` with `numpy_steps` True."""

    def log_prob_array(self, level: int) -> np.ndarray: ...

    def advance_arrays(self, level: int, codes: np.ndarray, parent: np.ndarray) -> None: ...


@torch.inference_mode()
def constrained_beam_search(session: DecodingSession, trie: CodeTrie, *, num_queries: int,
                            beam_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (leaves (Q, beam) int64, scores (Q, beam) float32), best first, -1 / -inf padded.

    Ties between equal scores go to the earlier beam, then the smaller code (the order the
    candidates are visited), so results never depend on the batch."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    q = num_queries
    node = np.zeros((q, 1), dtype=np.int64)  # the root
    score = np.zeros((q, 1), dtype=np.float32)
    # a session that gives and takes numpy arrays (`FusedSession`) skips the conversions
    arrays = cast(ArraySession, session) if session.numpy_steps else None
    for level in range(trie.num_levels):
        width = node.shape[1]
        if arrays is not None:
            logp = arrays.log_prob_array(level).reshape(q, width, -1)
        else:
            lp = session.log_probs(level)
            if lp.requires_grad or lp.dtype != torch.float32 or lp.device.type != "cpu":
                lp = lp.detach().float().cpu()
            logp = np.ascontiguousarray(lp.numpy()).reshape(q, width, -1)
        k = logp.shape[2]
        if k <= trie.max_code[level]:
            raise ValueError(f"the decoder scores {k} codes at level {level}, but the trie "
                             f"holds code {trie.max_code[level]} there")
        # a dense level: every code is a valid child, child id = parent * K + code
        dense = trie.complete[level] and k == trie.max_children[level]
        starts, codes = trie.csr(level)
        fan_out = k if dense else trie.max_children[level]
        chunks = session.step_chunks
        node, score, parent, chosen, nan = _STEP[chunks > 1](
            logp, score, node, starts, codes, dense, min(beam_size, width * fan_out), chunks)
        if nan:   # the step never picks a NaN candidate: say so rather than drop it
            raise ValueError(f"the decoder's log-probabilities at level {level} contain NaN")
        if level + 1 < trie.num_levels and arrays is not None:
            arrays.advance_arrays(level, chosen, parent)
        elif level + 1 < trie.num_levels:
            session.advance(level, torch.from_numpy(chosen), torch.from_numpy(parent))
    node[np.isinf(score)] = -1
    if node.shape[1] < beam_size:  # fewer valid IDs than beams: pad
        pad = beam_size - node.shape[1]
        node = np.concatenate([node, np.full((q, pad), -1, dtype=np.int64)], 1)
        score = np.concatenate([score, np.full((q, pad), -np.inf, dtype=np.float32)], 1)
    return torch.from_numpy(node), torch.from_numpy(score)


def _best_children(logp, score, node, starts, codes, dense, width,  # type: ignore[no-untyped-def]
                   chunks):
    """One level for a batch: logp (Q, B, K) float32 log-probs of each beam's next code,
    score (Q, B) float32 beam scores (-inf: dead), node (Q, B) int64 the beams' trie nodes;
    starts / codes the level's CSR (children of node p are slots starts[p]:starts[p + 1],
    slot s has code codes[s] and is node s of the level), unused when `dense` (children of
    p are p * K + code for every code). -> the best `width` children per query, best first:
    (node, score, parent beam, code), each (Q, width); missing ones score -inf (node 0);
    and whether a live beam's child had a NaN log-prob. The queries split into `chunks`
    (`_best_queries` each), on numba's threads in the parallel variant (`_STEP[True]`), the
    way the fused decoder splits a level's rows (`genir.decoder.fused.query_chunks`): with
    numba's static split of both parallel loops (its omp layer here), each thread reads the
    log-probabilities it wrote, where one thread reading them all read half of them from
    the other core's cache (with 2 threads, the step took 0.79x its time at beam 10 and
    0.68x at beam 30, N = 1M, batch 32). Results do not depend on the chunks."""
    num_q = logp.shape[0]
    out_node = np.zeros((num_q, width), np.int64)
    out_score = np.full((num_q, width), -np.inf, np.float32)
    out_parent = np.zeros((num_q, width), np.int64)
    out_code = np.zeros((num_q, width), np.int64)
    if not dense:
        out_code[:] = codes[0]
    nans = np.zeros(chunks, np.bool_)
    for c in prange(chunks):
        nans[c] = _best_queries(logp, score, node, starts, codes, dense,
                                (out_node, out_score, out_parent, out_code),
                                c * num_q // chunks, (c + 1) * num_q // chunks)
    return out_node, out_score, out_parent, out_code, nans.any()


@numba.njit(cache=True, nogil=True)
def _best_queries(logp, score, node, starts, codes, dense, outs, q_lo, q_hi):  # type: ignore[no-untyped-def]
    """`_best_children` for queries q_lo..q_hi - 1 into outs (node, score, parent, code);
    -> whether a live beam's child had a NaN log-prob."""
    out_node, out_score, out_parent, out_code = outs
    num_beams, k = logp.shape[1], logp.shape[2]
    width = out_node.shape[1]
    stride = k if dense else 1 << 40   # candidate number = beam * stride + slot offset
    heap_v = np.empty(width, np.float32)  # min-heap: the root is the worst kept candidate
    heap_c = np.empty(width, np.int64)
    nan = False
    for q in range(q_lo, q_hi):
        n = 0
        bar = -np.inf   # a candidate enters when above it: the worst kept one once full
        for b in range(num_beams):
            s = score[q, b]
            if s == -np.inf:
                continue
            if dense:
                # a full row of K codes: skip it when none of its codes can enter (or is
                # NaN), counted branch-free so that the count vectorises
                if n == width:
                    above = 0
                    for code in range(k):
                        above += not (s + logp[q, b, code] <= bar)
                    if above == 0:
                        continue
                lo, hi = 0, k
            else:
                lo, hi = starts[node[q, b]], starts[node[q, b] + 1]
            for slot in range(lo, hi):
                v = s + logp[q, b, slot - lo if dense else codes[slot]]
                # visited in candidate order, so an equal score never displaces a kept one
                if v > bar:
                    if n < width:
                        _heap_push(heap_v, heap_c, n, v, b * stride + slot)
                        n += 1
                        if n == width:
                            bar = heap_v[0]
                    else:
                        _heap_replace_root(heap_v, heap_c, n, v, b * stride + slot)
                        bar = heap_v[0]
                elif v != v:
                    nan = True
        # pop the worst first, filling the output from the back: best first, ties by order
        for i in range(n - 1, -1, -1):
            v, c = heap_v[0], heap_c[0]
            n -= 1
            if n > 0:
                _heap_replace_root(heap_v, heap_c, n, heap_v[n], heap_c[n])
            b, slot = c // stride, c % stride
            out_score[q, i] = v
            out_parent[q, i] = b
            if dense:
                out_node[q, i] = node[q, b] * k + slot
                out_code[q, i] = slot
            else:
                out_node[q, i] = slot
                out_code[q, i] = codes[slot]
    return nan


@numba.njit(cache=True, nogil=True, inline="always")
def _worse(v1, c1, v2, c2):  # type: ignore[no-untyped-def]
    """Candidate 1 ranks below candidate 2: a lower score, or the same score found later."""
    return v1 < v2 or (v1 == v2 and c1 > c2)


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_push(heap_v, heap_c, n, v, c):  # type: ignore[no-untyped-def]
    """Add (v, c) to the heap of n entries (sift up)."""
    i = n
    while i > 0:
        up = (i - 1) >> 1
        if not _worse(v, c, heap_v[up], heap_c[up]):
            break
        heap_v[i], heap_c[i] = heap_v[up], heap_c[up]
        i = up
    heap_v[i], heap_c[i] = v, c


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_replace_root(heap_v, heap_c, n, v, c):  # type: ignore[no-untyped-def]
    """Replace the worst entry of the heap of n entries by (v, c) (sift down)."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and _worse(heap_v[child + 1], heap_c[child + 1],
                                    heap_v[child], heap_c[child]):
            child += 1
        if not _worse(heap_v[child], heap_c[child], v, c):
            break
        heap_v[i], heap_c[i] = heap_v[child], heap_c[child]
        i = child
    heap_v[i], heap_c[i] = v, c


# the step, serial and parallel (`_STEP[chunks > 1]`): one source, two compiled variants
_STEP = tuple(compile_variant(_best_children, parallel) for parallel in (False, True))
