"""Fused CPU decoding: `DecoderSession`'s per-level step as compiled numba loops.

With the default decoder (d 128) on a CPU, the matrix products of a search level were only
about a third of its time in the torch session (addmm 36% in a profile): the rest is 20-odd
small torch operations a block (layer norms, bias copies, residual adds, the cache gather
and concatenation, the attention's batched products over 1-30 keys), each a pass over a
(rows, d) array plus 5-50 us of dispatch. `FusedSession` does everything between the
products in compiled loops over the rows:

  _add_ln           residual + bias + layer norm in one pass (x is updated in place)
  _self_attn        the new position's keys/values written once, attention over the cache
  _cross_attn       attention over the query's memory (shared by its beams, padding masked)
  _bias_gelu        the MLP's bias and GELU in one pass
  next_level        the surviving beams' ancestry (ints, instead of copying their caches)
                    and their next tokens (code embedding + position)

and, where torch ships MKL (its x86-64 builds: `MKL`), the products too: `_level` runs a
whole level in one call, each thread taking a chunk of rows through every block and the
output head (bias + log-softmax included) with MKL's sgemm on that thread, called from
the compiled code (`_gemm_rows`), from weights MKL packed once (`pack`: sgemm re-packs
them on every call; a block's products on 16 rows ran 1.4-2.0x as fast packed, scratch);
`_memory` does the same for the query memory and its
cross-attention keys/values at the session's start. A level's rows are independent (a row
reads earlier levels' keys/values and its own), so a level needs no synchronisation
beyond its one parallel region, where the row kernels between torch's products took 12
calls from Python a block (6 products, 6 compiled loops), each a thread hand-off.
Elsewhere, and with
`CodeDecoder.fuse_decoding(one_call=False)`, the products stay torch's (`torch.mm`) with the
row kernels between them (`run_level`).

The self-attention cache is never gathered or concatenated: each level's keys/values stay
where they were written, (levels, rows, H, 2 hd) per block, and `anc[p, r]` says which row
of level p the beam in row r descends from. Re-ordering the beams only re-maps those ints.

The row kernels, `_level` and `_memory` are compiled twice, serial and parallel (the
per-chunk functions they call once); a session runs the parallel variants on torch's
thread count (`row_kernels`), rows split into one chunk per thread, unless torch has one
thread or the model asks otherwise (`CodeDecoder.fuse_decoding(parallel=False)`).

Same function as `DecoderSession` (tests/decoder/test_sessions.py checks both against teacher
forcing, and the searches against each other); float32 sums in another order, so log-
probabilities agree to ~2e-6, not bit for bit. Measured with the default decoder, in pairs
(docs/benchmarks.md): 1.66-2.21x the torch session's queries/s at batch 32, of which
1.06-1.50x from a level in one call (over torch's products with the row kernels between
them); the loops on two threads 1.32-1.66x the row kernels on one; 2.24-3.49x at batch 1 (where levels of
fewer than 32 rows run serial). Used by `CodeDecoder.session` for inference on CPU in
float32 (autograd off, eval mode, not compiled); everything else takes the torch session.
The functions compile once per install into numba's cache (~20-25 s for a first batch-32
search from an empty cache, most of it numba's parallel lowering of `_level`, `_memory`
and the beam search's split step; ~5 s more for a first batch-1 search; `genir compile`,
run by `make install`, does it ahead), then load in ~0.5 s per process. No fastmath: sums
in a fixed order and explicit FMAs (`genir.reduce`), so a kernel gives the same bits
however and whenever it was compiled.

Why ~1,000 lines: the compiled kernels of one level share their buffers, layouts and fixed-
order reductions; split, numba's cache would key them by file and lose inlining across them.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import prange
from numba.core.extending import intrinsic
from torch import nn

from genir.compiled import compile_variant
from genir.decoder.model import Block, CodeDecoder, DecoderSession, _parameter_state
from genir.reduce import dot, fma, squares, total

F32 = np.float32
# No fastmath flags: with them LLVM chose each sum's order by context, and the same kernel
# compiled in one process and loaded from numba's cache in the next returned other bits.
# Sums run in a fixed order as vector code and multiply-adds are fused by name
# (`genir.reduce`): the same bits on every compile, at the speed fastmath gave.


# 2^f on [-1/2, 1/2]: Taylor series of e^(f ln 2) to degree 7 (relative error < 5e-9)
_EXP2 = tuple(F32(0.6931471805599453 ** i / np.prod(np.arange(1, i + 1))) for i in range(8))
_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7 = _EXP2


@intrinsic
def _bits_as_float32(typingctx, bits):  # type: ignore[no-untyped-def]
    """The float32 whose bits are the int32 `bits` (a register bitcast)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())
    return numba.types.float32(numba.types.int32), codegen


@intrinsic
def _wide_vectors(typingctx):  # type: ignore[no-untyped-def]
    """Asks LLVM to vectorise the calling function with 512-bit vectors where the CPU has
    them (the function attribute "prefer-vector-width"="512"; LLVM prefers 256 bits on
    AVX-512 CPUs, for the clock drop some of them take on wide vectors, which MKL's
    products take anyway). In alternating pairs here (Xeon, AVX-512) a level with its
    kernels so compiled ran 1.01-1.04x as fast (beam 10 and 30); the GELU loop 1.5x. The
    body of a `prange` loop is outlined by numba into a function of its own, which does not
    carry the attribute: the per-chunk functions it calls (`_level_rows`, ...) do, the
    inlined `_ln_row` of the parallel `_add_ln` does not. Where vectors are narrower the
    attribute changes nothing. (llvmlite's attribute set takes no quoted attributes:
    written past its check.)"""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return numba.types.none(), codegen


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _exp(x):  # type: ignore[no-untyped-def]
    """e^x in float32 for x <= 88 (relative error <= 4e-6 over [-87, 0] and <= 1e-6 over
    [-10, 0], from rounding x log2 e to float32; 1.2e-38 below -87, not 0; NaN stays NaN):
    2^f 2^n with n = round(x log2 e), 2^n built from its exponent bits. Inline
    and vectorisable, where numba's np.exp is a scalar libm call (no SVML in pip's llvmlite):
    that call made the head's log-softmax 14-15% of a level's time and the attention's
    softmaxes most of theirs."""
    t = max(x * F32(1.4426950408889634), F32(-126.0))
    k = np.floor(t + F32(0.5))
    f = t - k
    # Horner with explicit fused multiply-adds (`genir.reduce.fma`)
    p = fma(fma(fma(fma(fma(fma(fma(_E7, f, _E6), f, _E5), f, _E4), f, _E3), f, _E2),  # type: ignore[call-arg,var-annotated]
                    f, _E1), f, _E0)
    e = p * _bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))  # type: ignore[call-arg]
    return e if x == x else x


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _ln_row(x, o, bias, add, gamma, beta, eps, out, r):  # type: ignore[no-untyped-def]
    """out[r] = LayerNorm(x[r]); with `add`, first x[r] += o[r] + bias (in place). Rows
    are indexed in place, not taken as views (`x[r]`): a view whose reference counting
    numba does not prune costs an atomic increment and decrement of its array's count
    (NRT) per row (see `_cross_attn_rows`; `_self_attn_rows` keeps its views, pruned)."""
    d = x.shape[1]
    inv_d = F32(1.0) / F32(d)
    if add:
        for j in range(d):
            x[r, j] = x[r, j] + o[r, j] + bias[j]
    # sums in a fixed order (`genir.reduce`; x is C-contiguous: row r at r * d)
    mean = total(x, r * d, d) * inv_d  # type: ignore[call-arg]
    var = squares(x, r * d, d, mean)  # type: ignore[call-arg]
    inv = F32(1.0) / np.sqrt(var * inv_d + eps)
    for j in range(d):
        out[r, j] = (x[r, j] - mean) * inv * gamma[j] + beta[j]


def _add_ln(x, o, bias, add, ln, out):  # type: ignore[no-untyped-def]
    """out = LayerNorm(x) row by row, ln = (gamma, beta, eps); with `add`, first
    x += o + bias (in place)."""
    _wide_vectors()  # type: ignore[call-arg]
    gamma, beta, eps = ln
    for r in prange(x.shape[0]):
        _ln_row(x, o, bias, add, gamma, beta, eps, out, r)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _self_attn_rows(qkv, bias, kv, anc, t, y, lo, hi, s, qv):  # type: ignore[no-untyped-def]
    """`_self_attn` on rows lo..hi - 1; s (>= H (t + 1)) and qv (d) are scratch. A row's
    scores for every head first, then their exponentials in one loop (vectorised: one at
    a time they were ~15% of the kernel's time), then the weighted sums."""
    _wide_vectors()  # type: ignore[call-arg]
    heads, hd2 = kv.shape[2], kv.shape[3]
    hd = hd2 // 2
    d = heads * hd
    n = t + 1
    rows = kv.shape[1]
    for r in range(lo, hi):
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
        for h in range(heads):
            top = F32(-np.inf)
            for p in range(n):
                at = ((p * rows + anc[p, r]) * heads + h) * hd2   # kv[p, anc[p, r], h]
                a = dot(qv, h * hd, kv, at, hd)  # type: ignore[call-arg]
                s[h * n + p] = a
                top = max(top, a)
            for p in range(n):
                s[h * n + p] -= top
        for i in range(heads * n):
            s[i] = _exp(s[i])
        yr = y[r]
        for h in range(heads):
            total = F32(0.0)
            for p in range(n):
                total += s[h * n + p]
            inv = F32(1.0) / total
            acc = yr[h * hd:(h + 1) * hd]
            for j in range(hd):
                acc[j] = F32(0.0)
            for p in range(n):
                v = kv[p, anc[p, r], h, hd:]
                w = s[h * n + p] * inv
                for j in range(hd):
                    acc[j] += w * v[j]


def _self_attn(qkv, bias, kv, anc, t, y, chunks):  # type: ignore[no-untyped-def]
    """qkv (rows, 3d) without bias, laid out as `CodeDecoder.decoding_weights` makes it
    (scaled queries, then per head keys | values); writes the keys/values to kv[t, r] and
    y[r] = attention of the query over positions 0..t, position p read from kv[p, anc[p, r]].
    anc[t] must be the identity (a row reads the keys/values it wrote): rows run in parallel."""
    _wide_vectors()  # type: ignore[call-arg]
    rows = qkv.shape[0]
    d = kv.shape[2] * kv.shape[3] // 2
    for c in prange(chunks):   # chunks of rows (one per thread), each with its scratch
        _self_attn_rows(qkv, bias, kv, anc, t, y, c * rows // chunks, (c + 1) * rows // chunks,
                        np.empty(kv.shape[2] * (t + 1), np.float32), np.empty(d, np.float32))


# _self_attn and _cross_attn spell out the same softmax and weighted sum on purpose: a
# shared inline helper (the softmax as its own pass) made both 14% slower (114 -> 130 and
# 171 -> 195 us a call on 320 rows, alternating in one process)
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cross_attn_rows(hc, bias, mem_k, mem_v, mask, beams, y, lo, hi, s,  # type: ignore[no-untyped-def]
                     qv):
    """`_cross_attn` on rows lo..hi - 1; s (>= H N) and qv (d) are scratch. Laid out as
    `_self_attn_rows`; padding scores are -inf and their weights exactly 0. Arrays are
    indexed in place, not through views of rows (`mem_k[qi, h, n]`): here those views kept
    their reference counting (NRT's atomic increments and decrements, which numba prunes
    from `_self_attn_rows`), which made the kernel 2.0-2.4x as slow on one thread."""
    _wide_vectors()  # type: ignore[call-arg]
    d = hc.shape[1]
    heads, n_mem, hd = mem_k.shape[1], mem_k.shape[2], mem_k.shape[3]
    for r in range(lo, hi):
        qi = r // beams
        for j in range(d):
            qv[j] = hc[r, j] + bias[j]
        for h in range(heads):
            c = h * hd
            top = F32(-np.inf)
            for n in range(n_mem):
                a = F32(-np.inf)
                if mask[qi, n]:
                    at = ((qi * heads + h) * n_mem + n) * hd      # mem_k[qi, h, n]
                    a = dot(qv, c, mem_k, at, hd)  # type: ignore[call-arg]
                    top = max(top, a)
                s[h * n_mem + n] = a
            for n in range(n_mem):
                s[h * n_mem + n] -= top
        for i in range(heads * n_mem):
            x = s[i]
            e = _exp(x)
            s[i] = e if x != -np.inf else F32(0.0)
        for h in range(heads):
            c = h * hd
            total = F32(0.0)
            for n in range(n_mem):
                total += s[h * n_mem + n]
            inv = F32(1.0) / total
            for j in range(hd):
                y[r, c + j] = F32(0.0)
            for n in range(n_mem):
                if mask[qi, n]:
                    w = s[h * n_mem + n] * inv
                    for j in range(hd):
                        y[r, c + j] += w * mem_v[qi, h, n, j]


def _cross_attn(hc, bias, mem_k, mem_v, mask, beams, y, chunks):  # type: ignore[no-untyped-def]
    """hc (Q * beams, d) scaled queries without bias; mem_k, mem_v (Q, H, N, hd) the memory's
    keys/values, shared by a query's beams; mask (Q, N), False = padding (never all False)."""
    _wide_vectors()  # type: ignore[call-arg]
    rows, d = hc.shape
    for c in prange(chunks):   # chunks of rows (one per thread), each with its scratch
        _cross_attn_rows(hc, bias, mem_k, mem_v, mask, beams, y, c * rows // chunks,
                         (c + 1) * rows // chunks,
                         np.empty(mem_k.shape[1] * mem_k.shape[2], np.float32),
                         np.empty(d, np.float32))


# erf as a rational function of x^2 on [-4, 4] (clamped outside; erf(4) = 1 - 1.5e-8):
# Eigen's float coefficients (generic_fast_erf_float). GELU with it is within 1.5e-6 of
# torch's over [-10, 10] (tests/decoder/test_sessions.py)
_ERF_P = tuple(F32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08,
                                -2.10102402082508e-06, -5.69250639462346e-05,
                                -7.34990630326855e-04, -2.95459980854025e-03,
                                -1.60960333262415e-02))
_ERF_Q = tuple(F32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04,
                                -1.68282697438203e-03, -7.37332916720468e-03,
                                -1.42647390514189e-02))
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = _ERF_P
_Q0, _Q1, _Q2, _Q3, _Q4 = _ERF_Q


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _bias_gelu_rows(f, bias, lo, hi):  # type: ignore[no-untyped-def]
    """`_bias_gelu` on rows lo..hi - 1."""
    _wide_vectors()  # type: ignore[call-arg]
    n = f.shape[1]
    for r in range(lo, hi):
        for j in range(n):
            x = f[r, j] + bias[j]
            z = min(max(x * F32(0.7071067811865476), F32(-4.0)), F32(4.0))
            z2 = z * z
            # Horner with explicit fused multiply-adds (`genir.reduce.fma`)
            p = fma(fma(fma(fma(fma(fma(_P0, z2, _P1), z2, _P2), z2, _P3), z2, _P4),  # type: ignore[call-arg]
                        z2, _P5), z2, _P6) * z
            q = fma(fma(fma(fma(_Q0, z2, _Q1), z2, _Q2), z2, _Q3), z2, _Q4)  # type: ignore[call-arg]
            f[r, j] = F32(0.5) * x * (F32(1.0) + p / q)


def _bias_gelu(f, bias, chunks):  # type: ignore[no-untyped-def]
    """f = GELU(f + bias) in place (exact GELU, x/2 (1 + erf(x/sqrt 2))), rows split into
    `chunks` ranges. One pass where torch took two (add_, gelu) that cost 1.12-1.17x the
    decoder's time in the flow (in pairs), although torch's GELU alone was as fast in a tight
    loop (84 us against 77 on (320, 512))."""
    _wide_vectors()  # type: ignore[call-arg]
    rows = f.shape[0]
    for c in prange(chunks):
        _bias_gelu_rows(f, bias, c * rows // chunks, (c + 1) * rows // chunks)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def next_level(codes, parent, width, table, pos, anc, t, x):  # type: ignore[no-untyped-def]
    """Level t's rows from the codes chosen at level t - 1 (a check, then the rows): row
    r = q * beams + b
    continues row q * width + parent[q, b] (its ancestors at levels < t are that beam's, at
    level t it is itself) and its token is x[r] = table[codes[q, b]] + pos. Returns 1 if a
    parent is outside 0..width - 1, 2 if a code is outside the table (nothing written then),
    else 0."""
    _wide_vectors()  # type: ignore[call-arg]
    status = _step_status(codes, parent, width, table.shape[0])
    if status == 0:
        _step_rows(codes, parent, width, table, pos, anc[:t, :].copy(), anc, t, x, 0, codes.size)
    return status


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _step_status(codes, parent, width, size):  # type: ignore[no-untyped-def]
    """`next_level`'s check: 1 if a parent is outside 0..width - 1, 2 if a code is outside
    0..size - 1, else 0."""
    nq, beams = codes.shape
    for i in range(nq):
        for b in range(beams):
            if not 0 <= parent[i, b] < width:
                return 1
            if not 0 <= codes[i, b] < size:
                return 2
    return 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _step_rows(codes, parent, width, table, pos, old, anc, t, x, lo, hi):  # type: ignore[no-untyped-def]
    """`next_level` on rows lo..hi - 1, old: anc[:t] as it was before."""
    _wide_vectors()  # type: ignore[call-arg]
    beams, d = codes.shape[1], x.shape[1]
    for r in range(lo, hi):
        i, b = r // beams, r % beams
        src = i * width + parent[i, b]
        for p in range(t):
            anc[p, r] = old[p, src]
        anc[t, r] = r
        c = codes[i, b]
        for j in range(d):
            x[r, j] = table[c, j] + pos[j]


def _find_mkl() -> bool:
    """Registers MKL's sgemm_ and MKL_Set_Num_Threads_Local from torch's own library with
    numba's linker (as `genir_sgemm`, `genir_mkl_threads_local`) so `_level` can call them
    (and numba can cache it: the symbols are resolved by name when it loads). True where
    torch ships MKL (its x86-64 builds); elsewhere `run_level` keeps torch's products."""
    import ctypes

    import llvmlite.binding as ll

    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        try:
            lib = ctypes.CDLL(os.path.join(folder, name))
            sgemm, local = lib.sgemm_, lib.MKL_Set_Num_Threads_Local
        except (OSError, AttributeError):
            continue
        ll.add_symbol("genir_sgemm", ctypes.cast(sgemm, ctypes.c_void_p).value)
        ll.add_symbol("genir_mkl_threads_local", ctypes.cast(local, ctypes.c_void_p).value)
        global _PACK
        try:
            compute = lib.sgemm_compute
            get_size, pack_a = lib.sgemm_pack_get_size, lib.sgemm_pack
            get_size.restype = ctypes.c_size_t
            local.restype, local.argtypes = ctypes.c_int, [ctypes.c_int]
            _PACK = (get_size, pack_a, local)
        except AttributeError:   # an MKL without packed products: `pack` gives NOT_PACKED,
            compute = sgemm      # and _gemm_rows never calls this name (linked all the same)
        ll.add_symbol("genir_sgemm_compute", ctypes.cast(compute, ctypes.c_void_p).value)
        return True
    return False


# MKL's Fortran sgemm_pack_get_size, sgemm_pack and MKL_Set_Num_Threads_Local, when it has them
_PACK: tuple | None = None
MKL = _find_mkl()
# Fortran sgemm: every argument by address (pointers passed as integers: same registers)
_sgemm: Any = numba.types.ExternalFunction("genir_sgemm",
                                           numba.types.void(*[numba.types.intp] * 13))
_mkl_threads_local: Any = numba.types.ExternalFunction("genir_mkl_threads_local",
                                                  numba.types.int32(numba.types.int32))
# Fortran sgemm_compute: sgemm with A packed by sgemm_pack (no alpha: applied when packing)
_sgemm_compute: Any = numba.types.ExternalFunction("genir_sgemm_compute",
                                                   numba.types.void(*[numba.types.intp] * 12))
NOT_PACKED = np.zeros(0, np.float32)
# bytes: every array MKL reads or writes starts on this boundary (a cache line; AVX-512's
# vector), so its kernels take the same path on every run: MKL may order a sum by where an
# array starts ("array alignment", in its notes on reproducible results)
ALIGN = 64


def aligned(shape: tuple[int, ...], *, zeros: bool = False) -> np.ndarray:
    """An uninitialised (or, with `zeros`, zeroed: calloc'd pages, resident only once
    written) float32 C-contiguous array of `shape` starting on an ALIGN-byte boundary."""
    size = 4
    for n in shape:     # (np.prod and .ctypes cost microseconds: a few calls every search)
        size *= n
    buf = (np.zeros if zeros else np.empty)(size + ALIGN, np.uint8)
    start = -buf.__array_interface__["data"][0] % ALIGN
    return buf[start:start + size].view(F32).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """`a` as a float32 C-contiguous array on an ALIGN-byte boundary: `a` itself if it is
    one, else a copy."""
    if (a.dtype == F32 and a.flags.c_contiguous
            and a.__array_interface__["data"][0] % ALIGN == 0):
        return a
    out = aligned(a.shape)
    out[...] = a
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _aligned(rows, cols):  # type: ignore[no-untyped-def]
    """`aligned((rows, cols))` in compiled code (numba's own arrays start on 32 bytes)."""
    buf = np.empty(rows * cols + ALIGN // 4, np.float32)
    lanes = ALIGN // 4
    start = (lanes - (buf.ctypes.data // 4) % lanes) % lanes
    return buf[start:start + rows * cols].reshape(rows, cols)


def pack(w: np.ndarray) -> np.ndarray:
    """w (n, k) float32 C-contiguous, as torch stores a Linear's weight, packed by MKL as
    `_gemm_rows` multiplies it (the A of a column-major product, transposed): the buffer
    for `_gemm_rows`' `packed`; NOT_PACKED where MKL has no packed products. Packed with
    one MKL thread, as `_level`'s parallel chunks compute; serial levels (under
    ROWS_PARALLEL_MIN rows) compute with MKL's threads, which MKL advises against for
    speed (searches at batch 1, beam 10: 0.97x unpacked). MKL asks for a fixed-size buffer
    (7.6 MB for every weight of the default decoder here); np.zeros takes it from calloc,
    so only the pages MKL writes become resident. The buffer must not move (MKL: do not
    copy a packed matrix): `FusedWeights` keeps it, and a copied model makes its own."""
    if _PACK is None:
        return NOT_PACKED
    import ctypes

    get_size, pack_a, local = _PACK
    n, k = w.shape
    ints = np.array([n, 1, k], dtype=np.int32)
    ident, trans = ctypes.c_char(b"A"), ctypes.c_char(b"T")
    p = ints.ctypes.data
    size = get_size(ctypes.byref(ident), ctypes.c_void_p(p), ctypes.c_void_p(p + 4),
                    ctypes.c_void_p(p + 8))
    out = aligned((-(-size // 4),), zeros=True)
    alpha = np.ones(1, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    previous = local(1)
    try:
        pack_a(ctypes.byref(ident), ctypes.byref(trans), ctypes.c_void_p(p),
               ctypes.c_void_p(p + 4), ctypes.c_void_p(p + 8),
               ctypes.c_void_p(alpha.ctypes.data), ctypes.c_void_p(w.ctypes.data),
               ctypes.c_void_p(p + 8), ctypes.c_void_p(out.ctypes.data))
    finally:
        local(previous)
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gemm_rows(x, w, packed, out, lo, hi, ints, flts):  # type: ignore[no-untyped-def]
    """out[lo:hi] = x[lo:hi] @ w.T by MKL's sgemm, w (n, k) as torch stores a Linear's
    weight, or from `packed` (w packed by `pack`; NOT_PACKED: sgemm); all C-contiguous
    float32 (strides are not read), x.shape[1] == k and out.shape[1] == n: the callers'
    arrays, not checked here. ints (6) int32 and flts (2) float32 are scratch."""
    if hi <= lo:
        return
    n, k = w.shape
    # column-major: out^T (n, rows) = w (n, k) @ x^T, w read as the transpose of (k, n)
    ints[0], ints[1], ints[2] = n, hi - lo, k
    ints[3], ints[4] = x.shape[1], out.shape[1]     # leading dimensions of x and out
    flts[0], flts[1] = 1.0, 0.0
    p, f = ints.ctypes.data, flts.ctypes.data
    xp, op = x.ctypes.data + 4 * lo * x.shape[1], out.ctypes.data + 4 * lo * out.shape[1]
    if packed.size:
        ints[5] = 0x4E50                            # b"PN": transa (packed), transb
        _sgemm_compute(p + 20, p + 21, p, p + 4, p + 8, packed.ctypes.data, p + 8, xp, p + 12,
                       f + 4, op, p + 16)
    else:
        ints[5] = 0x4E54                            # b"TN": transa, transb
        _sgemm(p + 20, p + 21, p, p + 4, p + 8, f, w.ctypes.data, p + 8, xp, p + 12, f + 4, op,
               p + 16)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_max(z, r, lanes):  # type: ignore[no-untyped-def]
    """max(z[r]) over 8 running maxima (lanes: 8 float32 of scratch; NaNs are passed over):
    a single running max does not vectorise without fastmath's no-NaN flag (345 against
    120 us over (960, 256) here)."""
    for i in range(8):
        lanes[i] = -np.inf
    n = z.shape[1]
    n8 = n // 8 * 8
    for j in range(0, n8, 8):
        for i in range(8):
            v = z[r, j + i]
            lanes[i] = v if v > lanes[i] else lanes[i]
    top = lanes[0]
    for i in range(1, 8):
        top = lanes[i] if lanes[i] > top else top
    for j in range(n8, n):
        top = z[r, j] if z[r, j] > top else top
    return top


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _bias_log_softmax_rows(z, bias, lo, hi, lanes):  # type: ignore[no-untyped-def]
    """z[r] = log_softmax(z[r] + bias) for rows lo..hi - 1, in place (a NaN logit makes its
    row NaN, as torch's does: the beam search refuses it); lanes: 8 float32 of scratch."""
    _wide_vectors()  # type: ignore[call-arg]
    n = z.shape[1]
    exps = np.empty(n, np.float32)
    for r in range(lo, hi):
        for j in range(n):
            z[r, j] += bias[j]
        top = _row_max(z, r, lanes)
        for j in range(n):         # (exponentials apart from their sum: they vectorise)
            exps[j] = _exp(z[r, j] - top)
        shift = top + np.log(total(exps, 0, n))  # type: ignore[call-arg]
        for j in range(n):
            z[r, j] -= shift


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _level_rows(x, t, beams, anc, mask, kv, memory, weights, head, logp,  # type: ignore[no-untyped-def]
                scratch, lo, hi, own_thread):
    """`_level` on rows lo..hi - 1 (scratch: h, y, o, qkv, f, rows for every row).
    `own_thread`: MKL's products on the calling thread only (a chunk of a parallel region;
    else MKL would start its own threads inside it); otherwise MKL's threads, as torch.mm
    would use."""
    _wide_vectors()  # type: ignore[call-arg]
    mem_k, mem_v = memory
    (w_qkv, w_self, w_cq, w_cross, w_fc1, w_fc2, b_qkv, b_self, b_cq, b_cross, b_fc1, b_fc2,
     ln_g, ln_b, ln_eps, p_qkv, p_self, p_cq, p_cross, p_fc1, p_fc2) = weights
    head_w, head_b, head_p = head
    h, y, o, qkv, f = scratch
    previous = _mkl_threads_local(1) if own_thread else 0
    ints = np.empty(6, np.int32)
    flts = np.empty(2, np.float32)
    s_self = np.empty(kv[0].shape[2] * (t + 1), np.float32)
    s_cross = np.empty(mem_k[0].shape[1] * mem_k[0].shape[2], np.float32)
    qv = np.empty(x.shape[1], np.float32)
    gamma, beta = ln_g[0, 0], ln_b[0, 0]     # (views made once: none in the row loops)
    for r in range(lo, hi):
        _ln_row(x, x, gamma, False, gamma, beta, ln_eps[0, 0], h, r)
    for i in range(len(w_qkv)):
        _gemm_rows(h, w_qkv[i], p_qkv[i], qkv, lo, hi, ints, flts)
        _self_attn_rows(qkv, b_qkv[i], kv[i], anc, t, y, lo, hi, s_self, qv)
        _gemm_rows(y, w_self[i], p_self[i], o, lo, hi, ints, flts)
        bias, gamma, beta = b_self[i], ln_g[i, 1], ln_b[i, 1]
        for r in range(lo, hi):
            _ln_row(x, o, bias, True, gamma, beta, ln_eps[i, 1], h, r)
        _gemm_rows(h, w_cq[i], p_cq[i], o, lo, hi, ints, flts)
        _cross_attn_rows(o, b_cq[i], mem_k[i], mem_v[i], mask, beams, y, lo, hi, s_cross, qv)
        _gemm_rows(y, w_cross[i], p_cross[i], o, lo, hi, ints, flts)
        bias, gamma, beta = b_cross[i], ln_g[i, 2], ln_b[i, 2]
        for r in range(lo, hi):
            _ln_row(x, o, bias, True, gamma, beta, ln_eps[i, 2], h, r)
        _gemm_rows(h, w_fc1[i], p_fc1[i], f, lo, hi, ints, flts)
        _bias_gelu_rows(f, b_fc1[i], lo, hi)
        _gemm_rows(f, w_fc2[i], p_fc2[i], o, lo, hi, ints, flts)
        bias, gamma, beta = b_fc2[i], ln_g[i, 3], ln_b[i, 3]
        for r in range(lo, hi):
            _ln_row(x, o, bias, True, gamma, beta, ln_eps[i, 3], h, r)
    _gemm_rows(h, head_w, head_p, logp, lo, hi, ints, flts)
    _bias_log_softmax_rows(logp, head_b, lo, hi, np.empty(8, np.float32))
    if own_thread:
        _mkl_threads_local(previous)


def _level(x, t, beams, anc, mask, kv, memory, weights, head, logp,  # type: ignore[no-untyped-def]
           chunks, codes, parent, width, table, pos):
    """`run_level` in one call: each chunk of rows (one per thread) goes through every block
    and the head on its own (`_level_rows`), MKL's sgemm on that thread for the products (a
    level's rows are independent: a row reads earlier levels' keys/values and its own).
    Unless width is 0, the chunk first writes its rows from the codes chosen at level t - 1
    (`next_level`'s, checked before anything is written: a refusal returns its status;
    else 0), so that the thread that reads them wrote them. Chunks are whole queries where
    there are at least as many queries as chunks: a query's rows, its beams' keys/values at every
    level and its log-probabilities (which the beam search's step reads on the same thread,
    `genir.search.beam`) stay with one thread.
    memory: (keys, values) per block; weights: `FusedWeights.level` (w_*: (out, in) as
    torch stores them, per block in tuples; b_*: biases stacked; ln_g, ln_b (blocks, 4, d),
    ln_eps (blocks, 4): the self, cross, MLP and next layer norms); head: (weight, bias) of
    level t. Writes logp (rows, K_t), the log-probabilities, and position t's keys/values.
    The chunk's work is its own compiled function, shared by the serial and parallel
    variants."""
    _wide_vectors()  # type: ignore[call-arg]
    status = _step_status(codes, parent, width, table.shape[0]) if width else 0
    if status:
        return status
    old = anc[:t if width else 0, :].copy()
    rows, d = x.shape
    nq = rows // beams
    mem_k, mem_v = memory       # (a parallel loop takes tuples of arrays, not nested ones)
    (w_qkv, w_self, w_cq, w_cross, w_fc1, w_fc2, b_qkv, b_self, b_cq, b_cross, b_fc1, b_fc2,
     ln_g, ln_b, ln_eps, p_qkv, p_self, p_cq, p_cross, p_fc1, p_fc2) = weights
    head_w, head_b, head_p = head
    h = _aligned(rows, d)
    y = _aligned(rows, d)
    o = _aligned(rows, d)
    qkv = _aligned(rows, 3 * d)
    f = _aligned(rows, w_fc1[0].shape[0])
    for c in prange(chunks):
        lo, hi = _chunk(c, chunks, nq, beams)
        if width:
            _step_rows(codes, parent, width, table, pos, old, anc, t, x, lo, hi)
        _level_rows(x, t, beams, anc, mask, kv, (mem_k, mem_v),
                    (w_qkv, w_self, w_cq, w_cross, w_fc1, w_fc2, b_qkv, b_self, b_cq, b_cross,
                     b_fc1, b_fc2, ln_g, ln_b, ln_eps, p_qkv, p_self, p_cq, p_cross, p_fc1,
                     p_fc2), (head_w, head_b, head_p), logp,
                    (h, y, o, qkv, f), lo, hi, chunks > 1)
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _chunk(c, chunks, nq, beams):  # type: ignore[no-untyped-def]
    """Rows lo..hi - 1 of chunk c of nq queries x beams rows: whole queries when there are
    at least as many queries as chunks, else an even share of the rows."""
    if nq >= chunks:
        return (c * nq // chunks) * beams, ((c + 1) * nq // chunks) * beams
    return c * nq * beams // chunks, (c + 1) * nq * beams // chunks


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _memory_rows(query, weights, mem_k, mem_v, scratch, lo, hi,  # type: ignore[no-untyped-def]
                 own_thread):
    """`_memory` for queries lo..hi - 1 (scratch: hidden, prefix, mem, kv rows)."""
    _wide_vectors()  # type: ignore[call-arg]
    w1, b1, w2, b2, pos, ln_g, ln_b, eps, kv_w, kv_b, p1, p2, kv_p = weights
    hidden, prefix, mem, kv = scratch
    previous = _mkl_threads_local(1) if own_thread else 0
    d = w1.shape[0]
    n_mem = pos.shape[0]
    heads, hd = mem_k[0].shape[1], mem_k[0].shape[3]
    rows = prefix.reshape(prefix.shape[0] * n_mem, d)
    ints = np.empty(6, np.int32)
    flts = np.empty(2, np.float32)
    _gemm_rows(query, w1, p1, hidden, lo, hi, ints, flts)
    _bias_gelu_rows(hidden, b1, lo, hi)
    _gemm_rows(hidden, w2, p2, prefix, lo, hi, ints, flts)
    for r in range(lo * n_mem, hi * n_mem):
        p = r % n_mem
        for j in range(d):
            rows[r, j] += b2[p * d + j] + pos[p, j]
        _ln_row(rows, rows, b2, False, ln_g, ln_b, eps, mem, r)
    for i in range(len(kv_w)):
        _gemm_rows(mem, kv_w[i], kv_p[i], kv, lo * n_mem, hi * n_mem, ints, flts)
        bias, keys, values = kv_b[i], mem_k[i], mem_v[i]
        for r in range(lo * n_mem, hi * n_mem):
            qi, n = r // n_mem, r % n_mem
            for h in range(heads):
                for j in range(hd):
                    keys[qi, h, n, j] = kv[r, h * hd + j] + bias[h * hd + j]
                    values[qi, h, n, j] = kv[r, d + h * hd + j] + bias[d + h * hd + j]
    if own_thread:
        _mkl_threads_local(previous)


def _memory(query, weights, mem_k, mem_v, chunks):  # type: ignore[no-untyped-def]
    """`CodeDecoder.memory` for pooled queries and every block's cross-attention keys and
    values of it, in one call: the prefix MLP (query_dim -> d, exact GELU, d -> P d), plus
    positions, layer norm, then per block kv_w (2d, d) + kv_b written as mem_k, mem_v
    (Q, H, P, hd); weights: `FusedWeights.memory`. Queries split into `chunks`, each on its
    own thread as in `_level`."""
    _wide_vectors()  # type: ignore[call-arg]
    w1, b1, w2, b2, pos, ln_g, ln_b, eps, kv_w, kv_b, p1, p2, kv_p = weights  # (not nested
    #                                                                         in the loop)
    nq, d, n_mem = query.shape[0], w1.shape[0], pos.shape[0]
    hidden = _aligned(nq, d)
    prefix = _aligned(nq, n_mem * d)
    mem = _aligned(nq * n_mem, d)
    kv = _aligned(nq * n_mem, 2 * d)
    for c in prange(chunks):
        _memory_rows(query, (w1, b1, w2, b2, pos, ln_g, ln_b, eps, kv_w, kv_b, p1, p2, kv_p),
                     mem_k, mem_v, (hidden, prefix, mem, kv), c * nq // chunks,
                     (c + 1) * nq // chunks, chunks > 1)


class RowKernels(NamedTuple):
    """The compiled loops, serial or parallel, and the threads (chunks of rows) that the
    attention, GELU, level and memory functions split their rows into (the layer norm's
    `prange` is over rows: it keeps no scratch)."""
    add_ln: Callable[..., None]
    self_attn: Callable[..., None]
    cross_attn: Callable[..., None]
    bias_gelu: Callable[..., None]
    level: Callable[..., None]    # `_level`: a whole level in one call (needs MKL)
    memory: Callable[..., None]   # `_memory`: the query memory's keys/values (needs MKL)
    threads: int


def _compile(func: Callable[..., None], parallel: bool) -> Callable[..., None]:
    return compile_variant(func, parallel, error_model="numpy")


SERIAL, PARALLEL = (RowKernels(_compile(_add_ln, parallel), _compile(_self_attn, parallel),
                               _compile(_cross_attn, parallel), _compile(_bias_gelu, parallel),
                               _compile(_level, parallel), _compile(_memory, parallel),
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


def split(k: RowKernels, rows: int, units: int) -> tuple[RowKernels, int]:
    """The variants and chunk count for work over `rows` rows split by `units` (rows, or
    queries for the memory): `k` on min(threads, units) chunks, or SERIAL on one chunk
    when there are fewer than ROWS_PARALLEL_MIN rows or fewer than two chunks (one chunk
    runs serial: MKL's own threads, no parallel region around them)."""
    chunks = min(k.threads, max(units, 1))
    if rows < ROWS_PARALLEL_MIN or chunks < 2:
        return SERIAL, 1
    return k, chunks


def query_chunks(k: RowKernels, rows: int, queries: int) -> int:
    """The chunks of whole queries that a level of `rows` rows over `queries` queries runs
    in on `k` (`split`, then `_chunk`): 1 where it runs serial or splits rows within
    queries. `FusedSession.step_chunks`, which the beam search's step splits its queries by."""
    _, chunks = split(k, rows, rows)
    return chunks if queries >= chunks else 1


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
    views, no copies), numpy views of biases and layer-norm parameters for the kernels;
    for `_level` and `_memory` the weights as C-contiguous arrays (views unless a parameter
    is not contiguous) and the biases and layer-norm parameters stacked (copies). Made by
    `CodeDecoder.fused_weights`, which keeps it until a parameter changes, with `_level`'s
    and `_memory`'s weights unpacked (NOT_PACKED: `packed` False) until `with_packs`."""

    packed = False

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
            # `_level`'s: None where MKL is missing or the GELU is tanh-approximate
            self.level = _level_arrays(self.blocks) if MKL else None
            self.level_heads = [(_c(h.weight), _c(h.bias), NOT_PACKED) for h in heads]
            self.memory = _memory_arrays(model) if self.level is not None else None
            # level 0's token (BOS + position 0), then per level t >= 1: the table of level
            # t - 1's codes and position t
            self.start = (model.bos.detach() + model.pos.detach()[0]).numpy()
            self.tokens = [(cast(nn.Embedding, e).weight.detach().numpy(),
                            model.pos.detach()[t + 1].numpy())
                           for t, e in enumerate(model.code_emb)]
            # level 0's stand-in for them (`run_level` without a step): no rows, same types
            self.no_tokens = (np.zeros((0, self.start.shape[0]), dtype=F32), self.start)


    def with_packs(self) -> FusedWeights:
        """A copy (sharing every array) whose `_level` and `_memory` weights are also packed
        by MKL (`pack`), as new buffers: sessions on this one keep what they started with."""
        out = copy.copy(self)
        out.packed = True
        if self.level is not None:
            n = len(_LEVEL_WEIGHTS)
            out.level = (*self.level[:-n], *(tuple(pack(w) for w in ws)
                                             for ws in self.level[:n]))
            out.level_heads = [(w, b, pack(w)) for w, b, _ in self.level_heads]
        if self.memory is not None:
            base = self.memory[:-3]
            out.memory = (*base, *_memory_packs(base, pack))
        return out


_LEVEL_WEIGHTS = ("qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2")


def _level_arrays(blocks: list[dict]) -> tuple | None:
    """`_level`'s weight arguments (w_qkv .. ln_eps, then NOT_PACKED in place of each
    weight: `FusedWeights.with_packs` fills them) from `FusedWeights.blocks`; None if a
    block's GELU is the tanh approximation (`_level` has the exact one only)."""
    if any(b["gelu"] != "none" for b in blocks):
        return None
    weights = tuple(tuple(aligned_copy(b[name].t().numpy()) for b in blocks)
                    for name in _LEVEL_WEIGHTS)
    biases = tuple(np.stack([b[name] for b in blocks])
                   for name in ("qkv_b", "self_out_b", "cross_q_b", "cross_out_b", "fc1_b",
                                "fc2_b"))
    lns = [[b[name] for name in ("ln_self", "ln_cross", "ln_mlp", "ln_next")] for b in blocks]
    ln_g = np.array([[g for g, _, _ in ln] for ln in lns], dtype=F32)
    ln_b = np.array([[b for _, b, _ in ln] for ln in lns], dtype=F32)
    ln_eps = np.array([[e for _, _, e in ln] for ln in lns], dtype=F32)
    return (*weights, *biases, ln_g, ln_b, ln_eps,
            *(tuple(NOT_PACKED for _ in ws) for ws in weights))


def _memory_arrays(model: CodeDecoder) -> tuple | None:
    """`_memory`'s weight arguments (w1 .. kv_b, then NOT_PACKED in place of w1, w2 and
    each kv_w: `FusedWeights.with_packs` fills them); None unless the memory is the prefix
    MLP of a pooled query with the exact GELU."""
    prefix = model.prefix
    if model.config.query_tokens or not isinstance(prefix, nn.Sequential) or len(prefix) != 3:
        return None
    fc1, gelu, fc2 = prefix
    if not (isinstance(fc1, nn.Linear) and isinstance(gelu, nn.GELU) and gelu.approximate == "none"
            and isinstance(fc2, nn.Linear)):
        return None
    blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]
    kvs = [cast(nn.Linear, b.cross_attn.kv) for b in blocks]
    g, b, eps = _ln(model.prefix_ln)
    base = (_c(fc1.weight), _c(fc1.bias), _c(fc2.weight), _c(fc2.bias), _c(model.prefix_pos),
            g, b, eps, tuple(_c(kv.weight) for kv in kvs), tuple(_c(kv.bias) for kv in kvs))
    return (*base, *_memory_packs(base, lambda w: NOT_PACKED))


def _memory_packs(base: tuple, packer: Callable[[np.ndarray], np.ndarray]) -> tuple:
    """(p1, p2, kv_p), `_memory`'s last arguments: w1, w2 and each kv_w of its first ten
    (w1, b1, w2, b2, pos, ln_g, ln_b, eps, kv_w, kv_b) through `packer`."""
    w1, _, w2, *_, kv_w, _ = base
    return packer(w1), packer(w2), tuple(packer(w) for w in kv_w)


def _c(p: torch.Tensor) -> np.ndarray:
    """A parameter as a C-contiguous float32 array on an ALIGN-byte boundary (`_gemm_rows`
    reads plain row-major memory; a view unless the parameter is strided or placed
    otherwise)."""
    return aligned_copy(p.detach().numpy())


def _ln(m: nn.Module) -> tuple:
    ln = cast(nn.LayerNorm, m)
    return ln.weight.detach().numpy(), ln.bias.detach().numpy(), F32(ln.eps)


def fusable(model: CodeDecoder, query: torch.Tensor) -> bool:
    """Whether this query is asked for in a way `FusedSession` serves: inference (autograd
    off, eval mode), not compiled, a float32 query on the CPU. The model's own parameters
    are checked by `CodeDecoder.fused_weights` (None unless all are float32 on the CPU)."""
    return (model.options.fused and not model.options.compiled and not torch.is_grad_enabled()
            and not model.training and query.device.type == "cpu"
            and query.dtype == torch.float32)


def run_level(k: RowKernels, w: FusedWeights, kv: tuple[np.ndarray, ...], anc: np.ndarray,
              memory: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], mask: np.ndarray,
              x: np.ndarray, t: int, beams: int, one_call: bool = True,
              step: tuple[np.ndarray, np.ndarray, int] | None = None) -> np.ndarray:
    """x (rows, d) float32 C-contiguous tokens of position t (updated in place) ->
    log-probabilities of level t's code (rows, K_t) float32; writes position t's
    keys/values into kv[block][t]. memory: (keys, values), each per block (Q, H, N, hd).
    step: level t - 1's choice, (codes, parent) (Q, beams) int64 C-contiguous and the
    width (beams) it chose from; x is then written from it first (`next_level`: ancestry
    into anc, tokens into x), in the same call. In one compiled call (`_level`) when
    `one_call` and the weights allow it (`FusedWeights.level`), else torch's products with
    the row kernels between them."""
    rows, d = x.shape
    k, chunks = split(k, rows, rows)
    codes, parent, width = _NO_STEP if step is None else step
    table, pos = w.tokens[t - 1] if step is not None else w.no_tokens
    if one_call and w.level is not None:
        weight = w.level_heads[t][0]
        logp = aligned((rows, weight.shape[0]))
        status = k.level(x, t, beams, anc, mask, kv, memory, w.level, w.level_heads[t], logp,
                         chunks, codes, parent, width, table, pos)
        if status:
            _refuse(status, codes, parent, width, len(table), t - 1)
        return logp
    if step is not None:
        status = next_level(codes, parent, width, table, pos, anc, t, x)
        if status:
            _refuse(status, codes, parent, width, len(table), t - 1)
    with torch.inference_mode():
        return _torch_level(k, w, kv, anc, memory, mask, x, t, beams, chunks)


_NO_STEP = (np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.int64), 0)


def _refuse(status: int, codes: np.ndarray, parent: np.ndarray, width: int, size: int,
            level: int) -> None:
    """The error for `next_level`'s status (1: a parent, 2: a code out of range)."""
    if status == 1:
        raise ValueError(f"parent values must be in 0..{width - 1} (the live beams), got "
                         f"{int(parent.min())}..{int(parent.max())}")
    raise IndexError(f"codes of level {level} must be in 0..{size - 1}, got "
                     f"{int(codes.min())}..{int(codes.max())}")


def _torch_level(k: RowKernels, w: FusedWeights, kv: tuple[np.ndarray, ...], anc: np.ndarray,
                 memory: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], mask: np.ndarray,
                 xn: np.ndarray, t: int, beams: int, chunks: int) -> np.ndarray:
    """`run_level` with torch's products and the row kernels between them."""
    rows, d = xn.shape
    h = torch.empty(rows, d)
    y = torch.empty(rows, d)
    hn, yn = h.numpy(), y.numpy()
    add_ln = k.add_ln if rows * d >= LN_PARALLEL_MIN else SERIAL.add_ln
    add_ln(xn, xn, xn[0], False, w.blocks[0]["ln_self"], hn)
    for i, b in enumerate(w.blocks):
        k.self_attn(torch.mm(h, b["qkv"]).numpy(), b["qkv_b"], kv[i], anc, t, yn, chunks)
        add_ln(xn, torch.mm(y, b["self_out"]).numpy(), b["self_out_b"], True, b["ln_cross"], hn)
        mem_k, mem_v = memory[0][i], memory[1][i]
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
    return torch.mm(h, head_w).add_(head_b).log_softmax(-1).numpy()


# -- the fused session and its weights (the model's own torch session: genir.decoder.model) --

def fused_weights(model: CodeDecoder, *, pack: bool | None = None) -> FusedWeights | None:
    """The arrays `FusedSession` reads, made once and kept on the model (`_fused`) until a
    parameter changes (in place, as training and load_state_dict do, new data, as `.to`
    does, or a new parameter or module assigned; writes through `p.data` bump no version
    and are missed); None when a parameter is not float32 on CPU. `pack` (None: the model's
    `fuse_decoding` setting, on by default): the level's products read weights packed by
    MKL from the first request on, so every search on the same weights runs the same
    products and returns the same bits (packed and plain products may round apart on some
    CPUs). Packing costs ~20 ms with the default decoder against 0.65 ms for the rest; a
    caller that searches once per weight update (AVG's discriminative loss, every training
    step) asks for pack=False."""
    pack = model.options.pack if pack is None else pack
    key = (pack and model.options.one_call, *_parameter_state(model, []))
    if model._fused is None or model._fused[0] != key:
        ok = all(p.dtype == torch.float32 and p.device.type == "cpu"
                 for p in model.parameters())
        weights = FusedWeights(model) if ok else None
        model._fused = (key, weights.with_packs() if weights is not None and key[0]
                       else weights)
    return model._fused[1]


def open_session(model: CodeDecoder, query: torch.Tensor, *, pack: bool | None = None
                 ) -> DecoderSession:
    """The session `CodeDecoder.session` hands out: a `FusedSession` for float32 inference on
    the CPU (`fusable`), else the model's torch `DecoderSession`."""
    weights = fused_weights(model, pack=pack) if fusable(model, query) else None
    if weights is None:
        return DecoderSession(model, query)
    return FusedSession(model, query, weights)


class FusedSession(DecoderSession):
    """`DecoderSession` for CPU float32 inference with the level step fused
    (`genir.decoder.fused`): the same log-probabilities to ~2e-6. Made by
    `CodeDecoder.session` when `genir.decoder.fused.fusable` says so and the model has
    fused weights (`weights`: `model.fused_weights()`, which it looks up when not given)."""

    def __init__(self, model: CodeDecoder, query: torch.Tensor,
                 weights: FusedWeights | None = None) -> None:
        weights = fused_weights(model) if weights is None else weights
        if weights is None:
            raise ValueError("FusedSession needs a float32 model on the CPU (see "
                             "CodeDecoder.fused_weights)")
        self.weights_fused = weights
        self.kernels = row_kernels(model.options.parallel)
        self.one_call = model.options.one_call
        with torch.inference_mode():   # whatever the caller's mode: plain arrays, no graph
            self._start(model, query)

    def _start(self, model: CodeDecoder, query: torch.Tensor) -> None:
        cfg = model.config
        q = self.num_queries = query.shape[0]
        self.model, self.compiled, self.level = model, False, 0
        # the memory's cross-attention keys/values once per query, (Q, H, N, hd) each
        w = self.weights_fused
        if (self.one_call and w.memory is not None and query.ndim == 2
                and query.shape[1] == cfg.query_dim):
            n_mem, heads = cfg.num_prefix, cfg.num_heads
            shape = (q, heads, n_mem, cfg.d_model // heads)
            keys = tuple(np.empty(shape, dtype=np.float32) for _ in model.blocks)
            values = tuple(np.empty(shape, dtype=np.float32) for _ in model.blocks)
            kernels, chunks = split(self.kernels, q * n_mem, q)
            kernels.memory(aligned_copy(query.numpy()), w.memory, keys, values, chunks)
            self.mask = np.ones((q, n_mem), dtype=np.bool_)
        else:
            mem, mask = model.memory(query)
            self.mask = (np.ones((q, mem.shape[1]), dtype=np.bool_) if mask is None
                         else mask.numpy())
            pairs = [tuple(t.contiguous().numpy()
                           for t in blk.cross_attn.keys_values(mem))  # type: ignore[union-attr,operator]
                     for blk in model.blocks]
            keys, values = tuple(k for k, _ in pairs), tuple(v for _, v in pairs)
        self.memory = (keys, values)   # per block
        hd2 = 2 * (cfg.d_model // cfg.num_heads)
        # per block, each level's keys | values where they were written: (levels, rows, H, 2 hd);
        # anc[p, r]: the row of level p that row r's beam descends from
        self.kv = tuple(np.empty((cfg.num_levels, q, cfg.num_heads, hd2), dtype=np.float32)
                        for _ in model.blocks)
        self.anc = np.zeros((cfg.num_levels, q), dtype=np.int64)
        self.anc[0] = np.arange(q)
        # a level's tokens, rewritten every level: one aligned buffer, grown with the beams
        self._tokens = aligned((q, w.start.shape[0]))
        x = self._tokens
        x[:] = w.start                  # (torch's expand + add + copy: 80-100 us a batch)
        self.logp = run_level(self.kernels, w, self.kv, self.anc, self.memory, self.mask, x, 0,
                              1, self.one_call)
        # the whole-query chunks the last level ran in: the beam search's step splits its
        # queries the same way, so each thread reads the log-probabilities it wrote
        self.step_chunks = query_chunks(self.kernels, q, q)

    # the beam search may hand it numpy arrays and take them back (`log_prob_array`,
    # `advance_arrays`): each torch <-> numpy conversion or check is a Python call, which
    # between kernels, with cold caches, costs microseconds
    numpy_steps = True

    def log_probs(self, level: int) -> torch.Tensor:
        return torch.from_numpy(self.log_prob_array(level))

    def log_prob_array(self, level: int) -> np.ndarray:
        """`log_probs` as the float32 (Q * B, K_level) C-contiguous array it is."""
        return cast(np.ndarray, super().log_probs(level))   # (self.logp: an array here)

    def advance_arrays(self, level: int, codes: np.ndarray, parent: np.ndarray) -> None:
        """`advance` with numpy arrays (`_step` takes both)."""
        self.advance(level, codes, parent)  # type: ignore[arg-type]

    def _step(self, level: int, codes: torch.Tensor | np.ndarray,
              parent: torch.Tensor | np.ndarray) -> None:
        self._fused_step(level, *(a.numpy() if isinstance(a, torch.Tensor) else a
                                  for a in (codes, parent)))

    def _fused_step(self, level: int, codes: np.ndarray, parent: np.ndarray) -> None:
        # the kernels do not bounds-check: what the torch session would fail on is refused
        # before anything the session decodes from changes
        q, beams = codes.shape
        if q != self.num_queries:   # (the kernels would read other queries' memory)
            raise ValueError(f"codes must be (Q, beams) with Q = {self.num_queries} (the "
                             f"session's queries), got {tuple(codes.shape)}")
        width = self.logp.shape[0] // q
        if level + 1 >= self.model.config.num_levels:
            raise ValueError(f"level {level} is the last: there is no next code to score")
        if parent.shape != codes.shape:
            raise ValueError(f"parent must be (Q, beams) = {tuple(codes.shape)}, got "
                             f"{tuple(parent.shape)}")
        n, t = q * beams, level + 1
        if n > self.anc.shape[1]:   # more beams than rows so far: grow, keep levels < t
            anc = np.zeros((self.anc.shape[0], n), dtype=np.int64)
            anc[:t, :self.anc.shape[1]] = self.anc[:t]
            self.anc = anc
            grown = []
            for old in self.kv:
                kv = np.empty((old.shape[0], n, *old.shape[2:]), dtype=np.float32)
                kv[:t, :old.shape[1]] = old[:t]
                grown.append(kv)
            self.kv = tuple(grown)
        if n > len(self._tokens):
            self._tokens = aligned((n, self._tokens.shape[1]))
        x = self._tokens[:n]
        step = (np.ascontiguousarray(codes, dtype=np.int64),
                np.ascontiguousarray(parent, dtype=np.int64), width)
        self.logp = run_level(self.kernels, self.weights_fused, self.kv, self.anc, self.memory,
                              self.mask, x, t, beams, self.one_call, step)
        self.step_chunks = query_chunks(self.kernels, n, q)
