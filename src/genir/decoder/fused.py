"""Fused CPU decoding: `DecoderSession`'s per-level step as numba kernels around MKL GEMMs.

With the default decoder (d 128) on a CPU, the matrix products of a search level were only
about a third of its time in the torch session (addmm 36% in a profile): the rest is 20-odd
small torch operations a block (layer norms, bias copies, residual adds, the cache gather
and concatenation, the attention's batched products over 1-30 keys), each a pass over a
(rows, d) array plus 5-50 us of dispatch. `FusedSession` keeps the products in torch
(`torch.mm`, MKL) and does everything between them in compiled loops over the rows:

  _add_ln           residual + bias + layer norm in one pass (x is updated in place)
  _self_attn        the new position's keys/values written once, attention over the cache
  _cross_attn       attention over the query's memory (shared by its beams, padding masked)
  _bias_gelu        the MLP's bias and GELU in one pass
  next_level        the surviving beams' ancestry (ints, instead of copying their caches)
                    and their next tokens (code embedding + position)

The self-attention cache is never gathered or concatenated: each level's keys/values stay
where they were written, (levels, rows, H, 2 hd) per block, and `anc[p, r]` says which row
of level p the beam in row r descends from. Re-ordering the beams only re-maps those ints.

The row loops (attention, layer norm, bias + GELU) are compiled twice, serial and parallel; a session
runs the parallel ones on torch's thread count (`row_kernels`), rows split into one chunk
per thread, unless torch has one thread or the model asks otherwise
(`CodeDecoder.fuse_decoding(parallel=False)`).

Same function as `DecoderSession` (tests/search/test_beam.py checks both against teacher
forcing, and the searches against each other); float32 sums in another order, so log-
probabilities agree to ~2e-6, not bit for bit. Measured with the default decoder, in pairs
(docs/benchmarks.md): 1.49-1.55x the torch session's queries/s at batch 32, of which
1.13-1.36x from running the row loops on two threads; 1.89-2.13x at batch 1 (where
levels of fewer than 32 rows run the serial kernels). Used by `CodeDecoder.session` for
inference on CPU in float32 (autograd off, eval mode, not compiled); everything else
takes the torch session. The kernels compile once per install into numba's cache (5.9 s
for a first batch-32 search from an empty cache, serial and parallel kernels), then load in
0.5 s per process.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, cast

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import prange
from torch import nn

if TYPE_CHECKING:
    from genir.decoder.model import Block, CodeDecoder

F32 = np.float32
# fastmath: reassociation (vectorised sums) without the no-NaN / no-inf assumptions: masked
# scores are -inf and a NaN must reach the beam search, which refuses it
_FAST = {"reassoc", "contract", "arcp", "nsz"}


def _add_ln(x, o, bias, add, ln, out):  # type: ignore[no-untyped-def]
    """out = LayerNorm(x) row by row, ln = (gamma, beta, eps); with `add`, first
    x += o + bias (in place)."""
    gamma, beta, eps = ln
    rows, d = x.shape
    inv_d = F32(1.0) / F32(d)
    for r in prange(rows):
        xr = x[r]
        total = F32(0.0)
        if add:
            orow = o[r]
            for j in range(d):
                v = xr[j] + orow[j] + bias[j]
                xr[j] = v
                total += v
        else:
            for j in range(d):
                total += xr[j]
        mean = total * inv_d
        var = F32(0.0)
        for j in range(d):
            c = xr[j] - mean
            var += c * c
        inv = F32(1.0) / np.sqrt(var * inv_d + eps)
        outr = out[r]
        for j in range(d):
            outr[j] = (xr[j] - mean) * inv * gamma[j] + beta[j]


def _self_attn(qkv, bias, kv, anc, t, y, chunks):  # type: ignore[no-untyped-def]
    """qkv (rows, 3d) without bias, laid out as `CodeDecoder.decoding_weights` makes it
    (scaled queries, then per head keys | values); writes the keys/values to kv[t, r] and
    y[r] = attention of the query over positions 0..t, position p read from kv[p, anc[p, r]].
    anc[t] must be the identity (a row reads the keys/values it wrote): rows run in parallel."""
    rows = qkv.shape[0]
    heads, hd2 = kv.shape[2], kv.shape[3]
    hd = hd2 // 2
    d = heads * hd
    for c in prange(chunks):   # chunks of rows (one per thread), each with its scratch
        s = np.empty(t + 1, np.float32)
        qv = np.empty(d, np.float32)
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            qr = qkv[r]
            new = kv[t, r]
            for h in range(heads):
                dst = new[h]
                src = qr[d + h * hd2:d + (h + 1) * hd2]
                b = bias[d + h * hd2:d + (h + 1) * hd2]
                for j in range(hd2):
                    dst[j] = src[j] + b[j]
            for j in range(d):
                qv[j] = qr[j] + bias[j]
            yr = y[r]
            for h in range(heads):
                q = qv[h * hd:(h + 1) * hd]
                top = F32(-np.inf)
                for p in range(t + 1):
                    k = kv[p, anc[p, r], h]
                    a = F32(0.0)
                    for j in range(hd):
                        a += q[j] * k[j]
                    s[p] = a
                    top = max(top, a)
                total = F32(0.0)
                for p in range(t + 1):
                    e = np.exp(s[p] - top)
                    s[p] = e
                    total += e
                inv = F32(1.0) / total
                acc = yr[h * hd:(h + 1) * hd]
                for j in range(hd):
                    acc[j] = F32(0.0)
                for p in range(t + 1):
                    v = kv[p, anc[p, r], h, hd:]
                    w = s[p] * inv
                    for j in range(hd):
                        acc[j] += w * v[j]


# _self_attn and _cross_attn spell out the same softmax and weighted sum on purpose: a
# shared inline helper (the softmax as its own pass) made both 14% slower (114 -> 130 and
# 171 -> 195 us a call on 320 rows, alternating in one process)
def _cross_attn(hc, bias, mem_k, mem_v, mask, beams, y, chunks):  # type: ignore[no-untyped-def]
    """hc (Q * beams, d) scaled queries without bias; mem_k, mem_v (Q, H, N, hd) the memory's
    keys/values, shared by a query's beams; mask (Q, N), False = padding (never all False)."""
    rows, d = hc.shape
    heads, n_mem, hd = mem_k.shape[1], mem_k.shape[2], mem_k.shape[3]
    for c in prange(chunks):   # chunks of rows (one per thread), each with its scratch
        s = np.empty(n_mem, np.float32)
        qv = np.empty(d, np.float32)
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            qi = r // beams
            hr = hc[r]
            for j in range(d):
                qv[j] = hr[j] + bias[j]
            yr = y[r]
            for h in range(heads):
                q = qv[h * hd:(h + 1) * hd]
                top = F32(-np.inf)
                for n in range(n_mem):
                    if mask[qi, n]:
                        k = mem_k[qi, h, n]
                        a = F32(0.0)
                        for j in range(hd):
                            a += q[j] * k[j]
                        s[n] = a
                        top = max(top, a)
                total = F32(0.0)
                for n in range(n_mem):
                    e = np.exp(s[n] - top) if mask[qi, n] else F32(0.0)
                    s[n] = e
                    total += e
                inv = F32(1.0) / total
                acc = yr[h * hd:(h + 1) * hd]
                for j in range(hd):
                    acc[j] = F32(0.0)
                for n in range(n_mem):
                    if mask[qi, n]:
                        v = mem_v[qi, h, n]
                        w = s[n] * inv
                        for j in range(hd):
                            acc[j] += w * v[j]


# erf as a rational function of x^2 on [-4, 4] (clamped outside; erf(4) = 1 - 1.5e-8):
# Eigen's float coefficients (generic_fast_erf_float). GELU with it is within 1.5e-6 of
# torch's over [-10, 10] (tests/search/test_beam.py)
_ERF_P = tuple(F32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08,
                                -2.10102402082508e-06, -5.69250639462346e-05,
                                -7.34990630326855e-04, -2.95459980854025e-03,
                                -1.60960333262415e-02))
_ERF_Q = tuple(F32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04,
                                -1.68282697438203e-03, -7.37332916720468e-03,
                                -1.42647390514189e-02))
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = _ERF_P
_Q0, _Q1, _Q2, _Q3, _Q4 = _ERF_Q


def _bias_gelu(f, bias, chunks):  # type: ignore[no-untyped-def]
    """f = GELU(f + bias) in place (exact GELU, x/2 (1 + erf(x/sqrt 2))), rows split into
    `chunks` ranges. One pass where torch took two (add_, gelu) that cost 1.12-1.17x the
    decoder's time in the flow (in pairs), although torch's GELU alone was as fast in a tight
    loop (84 us against 77 on (320, 512))."""
    rows, n = f.shape
    for c in prange(chunks):
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            fr = f[r]
            for j in range(n):
                x = fr[j] + bias[j]
                z = min(max(x * F32(0.7071067811865476), F32(-4.0)), F32(4.0))
                z2 = z * z
                p = ((((((_P0 * z2 + _P1) * z2 + _P2) * z2 + _P3) * z2 + _P4) * z2 + _P5) * z2
                     + _P6) * z
                q = (((_Q0 * z2 + _Q1) * z2 + _Q2) * z2 + _Q3) * z2 + _Q4
                fr[j] = F32(0.5) * x * (F32(1.0) + p / q)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def next_level(codes, parent, width, table, pos, anc, t, x):  # type: ignore[no-untyped-def]
    """Level t's rows from the codes chosen at level t - 1, in one pass: row r = q * beams + b
    continues row q * width + parent[q, b] (its ancestors at levels < t are that beam's, at
    level t it is itself) and its token is x[r] = table[codes[q, b]] + pos. Returns 1 if a
    parent is outside 0..width - 1, 2 if a code is outside the table (nothing written then),
    else 0."""
    nq, beams = codes.shape
    for i in range(nq):
        for b in range(beams):
            if not 0 <= parent[i, b] < width:
                return 1
            if not 0 <= codes[i, b] < table.shape[0]:
                return 2
    old = anc[:t, :].copy()
    d = x.shape[1]
    for i in range(nq):
        for b in range(beams):
            r = i * beams + b
            src = i * width + parent[i, b]
            for p in range(t):
                anc[p, r] = old[p, src]
            anc[t, r] = r
            emb, xr = table[codes[i, b]], x[r]
            for j in range(d):
                xr[j] = emb[j] + pos[j]
    return 0


class RowKernels(NamedTuple):
    """The kernels that loop over rows, compiled serial or parallel, and the threads (chunks
    of rows) the attention and GELU kernels split their rows into (the layer norm's `prange`
    is over rows: it keeps no scratch)."""
    add_ln: Callable[..., None]
    self_attn: Callable[..., None]
    cross_attn: Callable[..., None]
    bias_gelu: Callable[..., None]
    threads: int


def _compile(func: Callable[..., None], parallel: bool) -> Callable[..., None]:
    """`func` compiled by numba, `prange` over threads when `parallel`. A copy named apart
    per variant: numba's on-disk cache keys a function by name and bytecode, not by flags."""
    f = cast(types.FunctionType, func)
    copy = types.FunctionType(f.__code__, f.__globals__, f.__name__)
    copy.__qualname__ = f"{f.__qualname__}_{'parallel' if parallel else 'serial'}"
    return cast(Callable[..., None], numba.njit(cache=True, nogil=True, error_model="numpy",
                                                fastmath=_FAST, parallel=parallel)(copy))


SERIAL, PARALLEL = (RowKernels(_compile(_add_ln, parallel), _compile(_self_attn, parallel),
                               _compile(_cross_attn, parallel), _compile(_bias_gelu, parallel),
                               threads=1)
                    for parallel in (False, True))
# layer norms over fewer elements than this run serial: the parallel launch (~3 us) cost
# more than it saved at 320 x 128 (20.4 vs 20.1 us a call); at 960 x 128 parallel took 40
# against 60 us, at 960 x 512 206 against 402 us (2 threads). The attention kernels gain
# from 32 rows up (cross-attention 10.6 vs 19.4 us at 32 rows, 79 vs 220 us at 320;
# self-attention 106 vs 162 us at 320); at 10 rows self-attention lost 0.2 us (6.9 vs 6.7),
# cross-attention gained (4.9 vs 6.7).
LN_PARALLEL_MIN = 65_536
# levels with fewer rows run all kernels serial: at batch 1 (10 or 30 rows a level) the
# parallel kernels made whole searches 0.96x (beam 10) and 0.99x (beam 30) as fast as the
# serial ones, in pairs (single calls in tight loops were on par or faster); with this
# threshold 0.98x / 0.98x and 0.98x / 1.00x in two runs, both sides then running the same
# serial kernels
ROWS_PARALLEL_MIN = 32
# the process whose numba threads the parallel kernels may use: set by the first search
# that asks for them; -1 if no thread-safe threading layer could start, or in a child forked
# from a process whose numba threads had started (whoever started them)
_THREADS_PID: int | None = None


def row_kernels(parallel: bool) -> RowKernels:
    """The kernels a session runs: PARALLEL on torch's thread count (numba's set to match)
    when `parallel`, torch has more than one thread and numba's threads are usable here,
    else SERIAL. Usable: a thread-safe threading layer (tbb or omp: searches may run in
    several Python threads at once, which numba's fallback layer does not allow) started in
    this process. A child forked after numba's threads started gets SERIAL: numba aborts a
    child that starts a parallel region on GNU OpenMP's threads inherited from its parent.
    (torch's own thread pool has the same problem after a fork: on this machine a child's
    first 2-thread matmul hangs once the parent has run one.)"""
    threads = min(torch.get_num_threads(),
                  numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if not parallel or threads < 2 or _threads_pid() != os.getpid():
        return SERIAL
    if numba.get_num_threads() != threads:   # per calling thread in numba
        numba.set_num_threads(threads)
    return PARALLEL._replace(threads=threads)


def _threads_pid() -> int:
    global _THREADS_PID
    if _THREADS_PID is None:
        config = numba.config
        previous = config.THREADING_LAYER  # type: ignore[attr-defined]
        if previous == "default" and "NUMBA_THREADING_LAYER" not in os.environ:
            config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]
        layer: str
        try:
            numba.np.ufunc.parallel._launch_threads()  # type: ignore[attr-defined]
            layer = numba.threading_layer()
        except (ValueError, RuntimeError) as exc:
            layer = f"none ({exc})"
            config.THREADING_LAYER = previous  # type: ignore[attr-defined]  # others may fall back
        if layer in ("tbb", "omp"):
            _THREADS_PID = os.getpid()
        else:
            _THREADS_PID = -1
            warnings.warn(f"numba's threading layer is {layer}, not tbb or omp: the fused "
                          "decoding kernels run on one thread", RuntimeWarning, stacklevel=3)
    return _THREADS_PID


def _after_fork_in_child() -> None:
    global _THREADS_PID
    if getattr(numba.np.ufunc.parallel, "_is_initialized", True):  # started, by anyone
        _THREADS_PID = -1


os.register_at_fork(after_in_child=_after_fork_in_child)


class FusedWeights:
    """Per block the arrays `FusedSession` reads: torch weights for the products (transposed
    views, no copies), numpy views of biases and layer-norm parameters for the kernels.
    Made by `CodeDecoder.fused_weights`, which keeps it until a parameter changes."""

    def __init__(self, model: CodeDecoder) -> None:
        fused = model.decoding_weights()
        blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]
        self.blocks: list[dict] = []
        with torch.inference_mode(False), torch.no_grad():
            for i, blk in enumerate(blocks):
                qkv_w, qkv_b, cross_w, cross_b = fused[i]
                nxt = blocks[i + 1].ln_self if i + 1 < len(blocks) else model.ln_f
                sa, ca = blk.self_attn, blk.cross_attn
                fc1, gelu, fc2 = (cast(nn.Linear, blk.mlp[0]), cast(nn.GELU, blk.mlp[1]),
                                  cast(nn.Linear, blk.mlp[2]))
                self.blocks.append({
                    "ln_self": _ln(blk.ln_self), "ln_cross": _ln(blk.ln_cross),
                    "ln_mlp": _ln(blk.ln_mlp), "ln_next": _ln(nxt),
                    "qkv": qkv_w.t(), "qkv_b": qkv_b.numpy(),
                    "self_out": sa.out.weight.detach().t(),
                    "self_out_b": sa.out.bias.detach().numpy(),
                    "cross_q": cross_w.t(), "cross_q_b": cross_b.numpy(),
                    "cross_out": ca.out.weight.detach().t(),
                    "cross_out_b": ca.out.bias.detach().numpy(),
                    "fc1": fc1.weight.detach().t(), "fc1_b": fc1.bias.detach().numpy(),
                    "gelu": gelu.approximate,
                    "fc2": fc2.weight.detach().t(), "fc2_b": fc2.bias.detach().numpy(),
                })
            heads = [cast(nn.Linear, h) for h in model.heads]
            self.heads = [(h.weight.detach().t(), h.bias.detach()) for h in heads]
            # per level t >= 1: the table of level t - 1's codes and position t
            self.tokens = [(cast(nn.Embedding, e).weight.detach().numpy(),
                            model.pos.detach()[t + 1].numpy())
                           for t, e in enumerate(model.code_emb)]


def _ln(m: nn.Module) -> tuple:
    ln = cast(nn.LayerNorm, m)
    return ln.weight.detach().numpy(), ln.bias.detach().numpy(), F32(ln.eps)


def fusable(model: CodeDecoder, query: torch.Tensor) -> bool:
    """Whether this query is asked for in a way `FusedSession` serves: inference (autograd
    off, eval mode), not compiled, a float32 query on the CPU. The model's own parameters
    are checked by `CodeDecoder.fused_weights` (None unless all are float32 on the CPU)."""
    return (model.fused_decoding and not model.compiled_decoding and not torch.is_grad_enabled()
            and not model.training and query.device.type == "cpu"
            and query.dtype == torch.float32)


def run_level(k: RowKernels, w: FusedWeights, kv: list[np.ndarray], anc: np.ndarray,
              memory: list[tuple[np.ndarray, np.ndarray]], mask: np.ndarray,
              x: torch.Tensor, t: int, beams: int) -> torch.Tensor:
    """x (rows, d) contiguous tokens of position t (updated in place) -> log-probabilities of
    level t's code (rows, K_t); writes position t's keys/values into kv[block][t]."""
    rows, d = x.shape
    if rows < ROWS_PARALLEL_MIN:
        k = SERIAL
    xn = x.numpy()
    h = torch.empty(rows, d)
    y = torch.empty(rows, d)
    hn, yn = h.numpy(), y.numpy()
    add_ln = k.add_ln if rows * d >= LN_PARALLEL_MIN else SERIAL.add_ln
    chunks = min(k.threads, max(rows, 1))
    add_ln(xn, xn, xn[0], False, w.blocks[0]["ln_self"], hn)
    for i, b in enumerate(w.blocks):
        k.self_attn(torch.mm(h, b["qkv"]).numpy(), b["qkv_b"], kv[i], anc, t, yn, chunks)
        add_ln(xn, torch.mm(y, b["self_out"]).numpy(), b["self_out_b"], True, b["ln_cross"], hn)
        mem_k, mem_v = memory[i]
        k.cross_attn(torch.mm(h, b["cross_q"]).numpy(), b["cross_q_b"], mem_k, mem_v, mask,
                     beams, yn, chunks)
        add_ln(xn, torch.mm(y, b["cross_out"]).numpy(), b["cross_out_b"], True, b["ln_mlp"], hn)
        f = torch.mm(h, b["fc1"])
        if b["gelu"] == "none":
            k.bias_gelu(f.numpy(), b["fc1_b"], chunks)
        else:            # tanh-approximate GELU: torch's
            f = F.gelu(f.add_(torch.from_numpy(b["fc1_b"])), approximate=b["gelu"])
        add_ln(xn, torch.mm(f, b["fc2"]).numpy(), b["fc2_b"], True, b["ln_next"], hn)
    head_w, head_b = w.heads[t]
    return torch.mm(h, head_w).add_(head_b).log_softmax(-1)
