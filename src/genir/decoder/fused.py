"""Fused CPU decoding: `DecoderSession`'s per-level step as numba kernels around MKL GEMMs.

With the default decoder (d 128) on a CPU, the matrix products of a search level were only
about a third of its time in the torch session (addmm 36% in a profile): the rest is 20-odd
small torch operations a block (layer norms, bias copies, residual adds, the cache gather
and concatenation, the attention's batched products over 1-30 keys), each a pass over a
(rows, d) array plus 5-50 us of dispatch. `FusedSession` keeps the products in torch
(`torch.mm`, MKL) and does everything between them in four compiled loops over the rows:

  _add_ln           residual + bias + layer norm in one pass (x is updated in place)
  _self_attn        the new position's keys/values written once, attention over the cache
  _cross_attn       attention over the query's memory (shared by its beams, padding masked)
  reorder_ancestry  the surviving beams' ancestry (ints), instead of copying their caches

The self-attention cache is never gathered or concatenated: each level's keys/values stay
where they were written, (levels, rows, H, 2 hd) per block, and `anc[p, r]` says which row
of level p the beam in row r descends from. Re-ordering the beams only re-maps those ints.

Same function as `DecoderSession` (tests/search/test_beam.py checks both against teacher
forcing, and the searches against each other); float32 sums in another order, so log-
probabilities agree to ~2e-6, not bit for bit. Measured with the default decoder, in pairs:
1.1-1.3x the torch session's queries/s at batch 32, 1.5-1.6x at batch 1 (docs/
benchmarks.md). Used by `CodeDecoder.session` for inference on CPU in float32 (autograd
off, eval mode, not compiled); everything else takes the torch session. The kernels
compile once per install into numba's cache (2.5 s), then load in 0.36 s per process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from genir.decoder.model import Block, CodeDecoder

F32 = np.float32
# fastmath: reassociation (vectorised sums) without the no-NaN / no-inf assumptions: masked
# scores are -inf and a NaN must reach the beam search, which refuses it
_FAST = {"reassoc", "contract", "arcp", "nsz"}


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _add_ln(x, o, bias, add, ln, out):  # type: ignore[no-untyped-def]
    """out = LayerNorm(x) row by row, ln = (gamma, beta, eps); with `add`, first
    x += o + bias (in place)."""
    gamma, beta, eps = ln
    rows, d = x.shape
    inv_d = F32(1.0) / F32(d)
    for r in range(rows):
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


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _self_attn(qkv, bias, kv, anc, t, y):  # type: ignore[no-untyped-def]
    """qkv (rows, 3d) without bias, laid out as `CodeDecoder.decoding_weights` makes it
    (scaled queries, then per head keys | values); writes the keys/values to kv[t, r] and
    y[r] = attention of the query over positions 0..t, position p read from kv[p, anc[p, r]]."""
    rows = qkv.shape[0]
    heads, hd2 = kv.shape[2], kv.shape[3]
    hd = hd2 // 2
    d = heads * hd
    s = np.empty(t + 1, np.float32)
    qv = np.empty(d, np.float32)
    for r in range(rows):
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
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _cross_attn(hc, bias, mem_k, mem_v, mask, beams, y):  # type: ignore[no-untyped-def]
    """hc (Q * beams, d) scaled queries without bias; mem_k, mem_v (Q, H, N, hd) the memory's
    keys/values, shared by a query's beams; mask (Q, N), False = padding (never all False)."""
    rows, d = hc.shape
    heads, n_mem, hd = mem_k.shape[1], mem_k.shape[2], mem_k.shape[3]
    s = np.empty(n_mem, np.float32)
    qv = np.empty(d, np.float32)
    for r in range(rows):
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


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def reorder_ancestry(anc, rows, t):  # type: ignore[no-untyped-def]
    """Row r continues the beam in row rows[r] of level t - 1: its ancestors at levels < t
    are that beam's; at level t it is itself."""
    n = rows.shape[0]
    old = anc[:t, :].copy()
    for p in range(t):
        for r in range(n):
            anc[p, r] = old[p, rows[r]]
    for r in range(n):
        anc[t, r] = r


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
                    "fc1": fc1.weight.detach().t(), "fc1_b": fc1.bias.detach(),
                    "gelu": gelu.approximate,
                    "fc2": fc2.weight.detach().t(), "fc2_b": fc2.bias.detach().numpy(),
                })
            heads = [cast(nn.Linear, h) for h in model.heads]
            self.heads = [(h.weight.detach().t(), h.bias.detach()) for h in heads]


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


def run_level(w: FusedWeights, kv: list[np.ndarray], anc: np.ndarray,
              memory: list[tuple[np.ndarray, np.ndarray]], mask: np.ndarray,
              x: torch.Tensor, t: int, beams: int) -> torch.Tensor:
    """x (rows, d) contiguous tokens of position t (updated in place) -> log-probabilities of
    level t's code (rows, K_t); writes position t's keys/values into kv[block][t]."""
    rows, d = x.shape
    xn = x.numpy()
    h = torch.empty(rows, d)
    y = torch.empty(rows, d)
    hn, yn = h.numpy(), y.numpy()
    _add_ln(xn, xn, xn[0], False, w.blocks[0]["ln_self"], hn)
    for i, b in enumerate(w.blocks):
        _self_attn(torch.mm(h, b["qkv"]).numpy(), b["qkv_b"], kv[i], anc, t, yn)
        _add_ln(xn, torch.mm(y, b["self_out"]).numpy(), b["self_out_b"], True, b["ln_cross"], hn)
        mem_k, mem_v = memory[i]
        _cross_attn(torch.mm(h, b["cross_q"]).numpy(), b["cross_q_b"], mem_k, mem_v, mask,
                    beams, yn)
        _add_ln(xn, torch.mm(y, b["cross_out"]).numpy(), b["cross_out_b"], True, b["ln_mlp"], hn)
        f = F.gelu(torch.mm(h, b["fc1"]).add_(b["fc1_b"]), approximate=b["gelu"])
        _add_ln(xn, torch.mm(f, b["fc2"]).numpy(), b["fc2_b"], True, b["ln_next"], hn)
    head_w, head_b = w.heads[t]
    return torch.mm(h, head_w).add_(head_b).log_softmax(-1)
