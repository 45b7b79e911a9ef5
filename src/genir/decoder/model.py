"""`CodeDecoder`: a small Transformer decoder that generates semantic IDs level by level.

Pre-LN blocks of causal self-attention over the codes generated so far, cross-attention
over a query memory, and an MLP. The memory is either the GENIUS prefix (eq. 9: an MLP maps
the pooled query embedding to `num_prefix` vectors of width d_model; `query_tokens` = 0,
the default), or a sequence of query tokens (`query_tokens` = P > 0): the query vector is
then P tokens of width query_dim / P laid end to end, e.g. an image's 4x4 grid of patch
features (IRGen's image query) or a caption's word-piece states (AVG's text query), each
projected to d_model with a learned position; all-zero tokens are padding and are masked
out of the cross-attention. Either way queries stay (B, query_dim) arrays, so training,
beam search, the trie and the index do not change. Every level has its own
code embedding table and its own output head over that level's K codes, so logits are
only ever computed over the current level's vocabulary.

`DecoderSession` is the incremental form used by beam search: the memory's cross-attention
keys/values are computed once per query and shared by all its beams (broadcast, not
copied); the self-attention cache grows by one position per level and is re-ordered by
the beams that survive. `genir.decoder.fused.FusedSession` is the same for CPU float32
inference, with the work between the matrix products in numba kernels; `session` asks
`genir.decoder.fused.open_session`, which picks it where it applies (this module does not
import the fused one when it loads; the fused one imports this). How sessions decode is
`DecodingOptions` (`fuse_decoding`, `compile_decoding`). Training is in
`genir.decoder.train`.

`init_code_embeddings` is AVG's voken embedding (sec. 3.2, "copy the voken's embedding into
the vocabulary"): each level's code embedding table starts from the tokenizer's codebook
instead of at random (random stays the default; AVG Table 3 ablates the two).

Why ~550 lines: the module, its config, its training loss and the torch search session,
which is the reference the fused CPU session mirrors op for op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from genir.decoder.fused import FusedWeights


# T5-small's decoder shape (6 layers, d 512, 8 heads, MLP 2,048 = 4 d) fed GENIUS's 30
# prefix vectors: the size issue 6 compares the default against (DecoderConfig fields)
T5_SMALL_SIZE: dict[str, int] = {"d_model": 512, "num_layers": 6, "num_heads": 8, "num_prefix": 30}


@dataclass
class DecodingOptions:
    """How a `CodeDecoder`'s search sessions decode (`CodeDecoder.fuse_decoding` and
    `compile_decoding` set them; none is saved with the model)."""

    fused: bool = True       # CPU float32 inference may take the fused session
    parallel: bool = True    # the fused loops split rows over torch's threads
    one_call: bool = True    # a level in one compiled call with MKL's products inside
    pack: bool = True        # those products read weights MKL packed once
    compiled: bool = False   # the torch session's levels through torch.compile


@dataclass
class DecoderConfig:
    query_dim: int = 384                       # width of the query embedding
    codebook_sizes: tuple[int, ...] = (256,) * 4  # K per level; len = ID length M
    d_model: int = 128                         # hidden width
    num_layers: int = 2                        # decoder blocks
    num_heads: int = 4                         # attention heads (d_model % num_heads == 0)
    mlp_ratio: int = 4                         # MLP hidden = mlp_ratio * d_model
    num_prefix: int = 4                        # prefix embeddings from the query (GENIUS N=30)
    dropout: float = 0.1                       # dropout in training
    query_tokens: int = 0                      # 0: pooled query -> prefix (GENIUS); P > 0: the
    #                                            query is P tokens of query_dim / P (IRGen patch,
    #                                            AVG token-sequence conditioning)

    def __post_init__(self) -> None:
        self.codebook_sizes = tuple(int(k) for k in self.codebook_sizes)
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if self.query_tokens < 0 or (self.query_tokens and self.query_dim % self.query_tokens):
            raise ValueError(f"query_tokens ({self.query_tokens}) must be 0 or divide query_dim "
                             f"({self.query_dim})")
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes must be non-empty and positive: {self.codebook_sizes}")

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d/H)
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d) attends over k, v (B, H, S, d/H); mask (B, S) bool, True = attend."""
        b, t, d = x.shape
        drop = self.dropout if self.training else 0.0
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = F.scaled_dot_product_attention(self.heads(self.q(x)), k, v, is_causal=causal,
                                           dropout_p=drop, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg)
        self.ln_cross = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_self(x)
        x = x + self.self_attn.attend(h, *self.self_attn.keys_values(h), causal=True)
        x = x + self.cross_attn.attend(self.ln_cross(x), *memory_kv, mask=mask)
        return x + self.mlp(self.ln_mlp(x))


class CodeDecoder(nn.Module):
    """query embedding (B, query_dim) -> per-level code logits; see module docstring."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.prefix: nn.Module
        if cfg.query_tokens:   # a token sequence: one projection per token, learned positions
            self.prefix = nn.Linear(cfg.query_dim // cfg.query_tokens, d)
            self.prefix_pos = nn.Parameter(torch.zeros(cfg.query_tokens, d))
        else:                  # GENIUS eq. (9): P(z_q) = Reshape(MLP(z_q)) in R^{N x d}
            self.prefix = nn.Sequential(nn.Linear(cfg.query_dim, d), nn.GELU(),
                                        nn.Linear(d, cfg.num_prefix * d))
            self.prefix_pos = nn.Parameter(torch.zeros(cfg.num_prefix, d))
        self.prefix_ln = nn.LayerNorm(d)
        self.bos = nn.Parameter(torch.zeros(d))
        self.code_emb = nn.ModuleList(nn.Embedding(k, d) for k in cfg.codebook_sizes[:-1])
        self.pos = nn.Parameter(torch.zeros(cfg.num_levels, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in cfg.codebook_sizes)
        self.drop = nn.Dropout(cfg.dropout)
        for p in (self.prefix_pos, self.bos, self.pos):
            nn.init.normal_(p, std=0.02)
        # decoding_weights' cache: (parameter versions, weights)
        self._decoding: tuple[tuple, list[tuple[torch.Tensor, ...]]] | None = None
        # genir.decoder.fused.fused_weights' cache: (key, weights)
        self._fused: tuple[tuple, FusedWeights | None] | None = None
        self.options = DecodingOptions()   # how sessions decode (not saved with the model)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the derived weights behind (`_decoding`, `_fused`): they
        are remade from the copy's own parameters on first use, and MKL's packed matrices
        must not be moved (their cache key, parameter ids and addresses, could match again
        once the original is freed)."""
        state = super().__getstate__()
        return {**state, "_decoding": None, "_fused": None}

    def memory(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, query_dim) -> memory (B, N, d_model) and its mask (B, N) (None: no padding);
        N = num_prefix for a pooled query, query_tokens for a token sequence."""
        cfg = self.config
        if query.ndim != 2 or query.shape[1] != cfg.query_dim:
            raise ValueError(f"queries must be (B, {cfg.query_dim}), got {tuple(query.shape)}")
        b = query.shape[0]
        if not cfg.query_tokens:
            mem = self.prefix(query).view(b, cfg.num_prefix, cfg.d_model)
            return self.prefix_ln(mem + self.prefix_pos), None
        tokens = query.view(b, cfg.query_tokens, -1)
        mask = (tokens != 0).any(-1)
        mask[:, 0] = True        # never an empty memory (softmax over nothing is NaN)
        return self.prefix_ln(self.prefix(tokens) + self.prefix_pos), mask

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes of levels 0..T-1 -> (B, T + 1, d): BOS then one token per code."""
        b, t = codes.shape
        tokens = [self.bos.expand(b, 1, -1)]
        tokens += [self.code_emb[lv](codes[:, lv:lv + 1]) for lv in range(t)]
        return torch.cat(tokens, 1) + self.pos[: t + 1]

    def forward(self, query: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing. query (B, Dq), codes (B, M) -> [ (B, K_l) logits for each level ]."""
        mem, mask = self.memory(query)
        x = self.drop(self.embed_codes(codes[:, :-1]))
        for block in self.blocks:
            x = block(x, block.cross_attn.keys_values(mem), mask)  # type: ignore[union-attr,operator]
        x = self.ln_f(x)
        return [head(x[:, lv]) for lv, head in enumerate(self.heads)]

    def loss(self, query: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next-code cross-entropy averaged over levels (GENIUS eq. 10)."""
        logits = self(query, codes)
        return torch.stack([F.cross_entropy(lg, codes[:, lv])
                            for lv, lg in enumerate(logits)]).mean()

    def sequence_log_prob(self, query: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, Dq), (B, M) -> (B,) sum over levels of log p(code_l | query, codes_<l)."""
        logits = self(query, codes)
        return torch.stack([lg.log_softmax(-1).gather(1, codes[:, lv:lv + 1]).squeeze(1)
                            for lv, lg in enumerate(logits)], 1).sum(1)

    def session(self, query: torch.Tensor, *, pack: bool | None = None) -> DecoderSession:
        """Incremental decoding state for beam search over `query` (B, query_dim): the fused
        CPU session (`genir.decoder.fused.open_session`) for float32 inference on CPU, else
        the torch one (autograd on, training mode, another device or dtype, or
        `compile_decoding`). `pack`: see `genir.decoder.fused.fused_weights`."""
        from genir.decoder.fused import open_session

        return open_session(self, query, pack=pack)

    def fuse_decoding(self, enabled: bool = True, *, parallel: bool | None = None,
                      one_call: bool | None = None, pack: bool | None = None) -> CodeDecoder:
        """Whether inference sessions on CPU may take the fused path (`genir.decoder.fused`;
        on by default): with the default decoder 1.66-2.21x the queries/s of the torch
        session at batch 32 (timed in pairs, docs/benchmarks.md). Off: always the torch
        session. `parallel`: its compiled loops split the rows over torch's threads
        (`genir.decoder.fused.row_kernels`, the default); False keeps them on the calling
        thread, for a server that already runs one search per core. `one_call`: a level
        in one compiled call with MKL's products inside, where torch ships MKL (the default;
        1.06-1.45x the queries/s of torch's products with the row kernels between them, which
        False asks for). `pack`: that level's products read weights packed once by MKL
        (`genir.decoder.fused.pack`; the default): with the default decoder 1.05x the
        decoder's speed at beam 10, 1.01x at beam 30 (batch 32, in pairs; at batch 1 0.97x
        and 1.06x the search's), for ~45 MB more resident memory (MKL places each packed
        matrix up to 1.8 MB into a buffer of ~8 MB); T5-small-sized 1.01x for ~235 MB.
        None leaves a setting as it is. None of these is saved with the model. Returns the
        model."""
        self.options.fused = bool(enabled)
        if parallel is not None:
            self.options.parallel = bool(parallel)
        if one_call is not None:
            self.options.one_call = bool(one_call)
        if pack is not None:
            self.options.pack = bool(pack)
        return self

    def fused_weights(self, *, pack: bool | None = None) -> FusedWeights | None:
        """The arrays the fused CPU session reads (`genir.decoder.fused.fused_weights`)."""
        from genir.decoder.fused import fused_weights

        return fused_weights(self, pack=pack)

    def compile_decoding(self, enabled: bool = True) -> CodeDecoder:
        """Run search sessions (those made with autograd off) through `torch.compile`.
        The first searches compile (on 2 CPU cores: ~1 min for the first, 35-50 s for each
        new beam or batch size until shapes turn dynamic; seconds per graph once inductor's
        on-disk cache holds them); later batched searches ran 1.07-1.39x as fast as the
        torch session at batch 32, not faster at batch 1, and 0.97x (beam 10) / 1.07x (beam
        30) the fused CPU session with its kernels on one thread (docs/benchmarks.md). Off by default; needs
        a C++ compiler on CPU. Not saved with the model. Returns the model."""
        self.options.compiled = bool(enabled)
        return self

    def decoding_weights(self) -> list[tuple[torch.Tensor, ...]]:
        """Per block, the projections `DecoderSession` uses: (fused self-attention weight,
        bias, cross-attention query weight, bias). The fused (3d, d) projection holds the
        query rows, then per head its key rows and its value rows, so its last 2d outputs
        are already the cache's (H, 2 hd) layout; query rows of both attentions carry the
        1/sqrt(hd) scale. Made once and kept until a parameter changes (training and
        load_state_dict update in place, which bumps the tensor's version): rebuilding
        them per search call cost 134 µs, 4% of a batch-1 search pass, with the default
        decoder (3.8 ms, 9%, T5-small-sized). Plain
        tensors without grad, even when first asked for under inference mode, so a session
        may also run where autograd is on (AVG's discriminative loss)."""
        d, h = self.config.d_model, self.config.num_heads
        hd, scale = d // h, (d // h) ** -0.5
        blocks: list[Block] = list(self.blocks)  # type: ignore[arg-type]
        attns = [(b.self_attn, b.cross_attn) for b in blocks]
        key = tuple((p.data_ptr(), p._version) for sa, ca in attns
                    for p in (sa.q.weight, sa.q.bias, sa.kv.weight, sa.kv.bias, ca.q.weight,
                              ca.q.bias))
        if self._decoding is None or self._decoding[0] != key:
            weights: list[tuple[torch.Tensor, ...]] = []
            with torch.inference_mode(False), torch.no_grad():
                for sa, ca in attns:
                    k_w, v_w = sa.kv.weight.view(2, h, hd, d)
                    k_b, v_b = sa.kv.bias.view(2, h, hd)
                    weights.append((
                        torch.cat([sa.q.weight * scale,
                                   torch.stack([k_w, v_w], 1).reshape(2 * d, d)]),
                        torch.cat([sa.q.bias * scale, torch.stack([k_b, v_b], 1).reshape(2 * d)]),
                        ca.q.weight * scale, ca.q.bias * scale))
            self._decoding = (key, weights)
        return self._decoding[1]


def _parameter_state(module: nn.Module, out: list) -> list:
    """(parameter, version, data pointer) of every parameter under `module`, appended to
    `out`: `fused_weights`' cache key. A plain walk of the module dicts: `parameters()`'s
    generators took 215 us a call, 2% of a batch-32 search with the default decoder. (Tried:
    keeping the list and walking again only after torch's global registration hooks fired:
    `fused_weights` 59 -> 20 us warm, in separate runs, but blind to the module dicts
    written directly, as `.to` does with torch's overwrite-on-conversion setting or
    `ModuleList.insert`; checking every dict entry instead left the key 1.25-1.34x faster
    than this walk, in one process: not worth its 40 lines.)"""
    for p in module._parameters.values():
        if p is not None:
            out += (id(p), p._version, p.data_ptr())
    for child in module._modules.values():
        if child is not None:
            _parameter_state(child, out)
    return out


class DecoderSession:
    """Incremental decoding state for beam search (see `genir.search.beam`).

    The same function as `CodeDecoder.forward`, laid out for decoding speed (the teacher-
    forced forward pass is its reference in tests/decoder/test_sessions.py): rows stay 2-D
    (Q * beams, d); each block's self-attention query, key and value come from one fused
    projection with the attention scale folded in (`CodeDecoder.decoding_weights`); the
    cache holds a block's keys and values side by side, (rows, H, t, 2 hd), so one gather
    re-orders it and one concatenation grows it; attention is two batched matmuls and a
    softmax, which for a handful of keys per row costs a fraction of
    `scaled_dot_product_attention`'s CPU kernel. Each level's work (cache gather, code
    embedding, the blocks, the level's head and log-softmax) is one function call, run
    through `torch.compile` when the model asked for it (`CodeDecoder.compile_decoding`)
    and autograd is off.
    """

    numpy_steps = False   # log-probs and codes as torch tensors (`genir.search.beam`)
    step_chunks = 1       # the search's step runs on the calling thread

    def __init__(self, model: CodeDecoder, query: torch.Tensor) -> None:
        self.model = model
        self.num_queries = query.shape[0]
        mem, mask = model.memory(query)
        # (Q, 1, N, 1): broadcast over heads and beams
        self.memory_mask = None if mask is None else mask[:, None, :, None]
        # cross-attention K/V once per query: (Q, H, N, hd), shared by the query's beams
        self.memory_kv = [blk.cross_attn.keys_values(mem)  # type: ignore[union-attr,operator]
                          for blk in model.blocks]
        self.weights = model.decoding_weights()
        self.compiled = model.options.compiled and not torch.is_grad_enabled()
        start, self._advance = (_compiled_steps() if self.compiled else (_start, _advance))
        self.level = 0
        # per block (rows, H, t, 2 hd): keys | values of the codes fed so far
        self.cache, self.logp = start(model, self.weights, self.memory_kv, self.memory_mask,
                                      self.num_queries)

    def log_probs(self, level: int) -> torch.Tensor:
        if level != self.level:
            raise ValueError(f"the session is at level {self.level}, asked for {level}")
        return self.logp

    def advance(self, level: int, codes: torch.Tensor, parent: torch.Tensor) -> None:
        """Feed `codes` (Q, B') at `level`; beam b' of query q continues beam parent[q, b']."""
        if level != self.level:
            raise ValueError(f"the session is at level {self.level}, asked to feed {level}")
        self._step(level, codes, parent)
        self.level = level + 1

    def _step(self, level: int, codes: torch.Tensor, parent: torch.Tensor) -> None:
        q, beams = codes.shape
        width = self.logp.shape[0] // q
        rows = (parent + torch.arange(q)[:, None] * width).view(-1)  # (Q * beams,)
        self.cache, self.logp = self._advance(self.model, self.weights, self.memory_kv,
                                              self.memory_mask, self.cache, codes.reshape(-1),
                                              rows, q, beams, level)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (..., T, hd), already scaled, over k, v (..., S, hd) -> (..., T, hd); mask
    broadcast to (..., S, T), True = keep. The scores are laid out (S, T), keys first:
    a softmax over a short last axis (S is 1-30) is ~3x slower on CPU than over the
    second-to-last one, and the second product reads the transpose for free."""
    s = torch.matmul(k, q.transpose(-1, -2))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(s.softmax(-2).transpose(-1, -2), v)


def _level(model: CodeDecoder, weights: list[tuple[torch.Tensor, ...]],
           memory_kv: list[tuple[torch.Tensor, torch.Tensor]], memory_mask: torch.Tensor | None,
           cache: list[torch.Tensor] | None, x: torch.Tensor, q: int, beams: int, level: int,
           ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """x (Q * beams, d) tokens of position `level` -> (the cache grown by them,
    log-probabilities of the level's next code (Q * beams, K_level))."""
    h = model.config.num_heads
    rows, d = x.shape
    hd = d // h
    new_cache = []
    blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]
    for i, blk in enumerate(blocks):
        qkv_w, qkv_b, cross_w, cross_b = weights[i]
        qkv = F.linear(blk.ln_self(x), qkv_w, qkv_b)                         # (rows, 3d)
        kv = qkv[:, d:].view(rows, h, 1, 2 * hd)
        if cache is not None:
            kv = torch.cat([cache[i], kv], 2)
        new_cache.append(kv)
        y = _attend(qkv[:, :d].view(rows, h, 1, hd), kv[..., :hd], kv[..., hd:])
        x = x + blk.self_attn.out(y.view(rows, d))
        # cross-attention: the beams are extra query positions of the same query
        hc = F.linear(blk.ln_cross(x), cross_w, cross_b).view(q, beams, h, hd).transpose(1, 2)
        y = _attend(hc, *memory_kv[i], memory_mask)                           # (Q, H, beams, hd)
        x = x + blk.cross_attn.out(y.transpose(1, 2).reshape(rows, d))
        x = x + blk.mlp(blk.ln_mlp(x))
    return new_cache, model.heads[level](model.ln_f(x)).float().log_softmax(-1)


def _start(model: CodeDecoder, weights: list[tuple[torch.Tensor, ...]],
           memory_kv: list[tuple[torch.Tensor, torch.Tensor]], memory_mask: torch.Tensor | None,
           q: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """BOS for every query -> the first cache and level 0's log-probabilities."""
    x = model.bos.expand(q, -1) + model.pos[0]
    return _level(model, weights, memory_kv, memory_mask, None, x, q, 1, 0)


def _advance(model: CodeDecoder, weights: list[tuple[torch.Tensor, ...]],
             memory_kv: list[tuple[torch.Tensor, torch.Tensor]], memory_mask: torch.Tensor | None,
             cache: list[torch.Tensor], codes: torch.Tensor, rows: torch.Tensor, q: int,
             beams: int, level: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Keep the cache rows of the surviving beams, feed their `level` codes (Q * beams,)
    -> the grown cache and level + 1's log-probabilities."""
    cache = [c.index_select(0, rows) for c in cache]
    x = model.code_emb[level](codes) + model.pos[level + 1]
    return _level(model, weights, memory_kv, memory_mask, cache, x, q, beams, level + 1)


_COMPILED: tuple | None = None
# graphs one compiled function may keep: a search specialises `_advance` per level (its
# cache length), then per batch shape (static, then dynamic, size-1 cases); dynamo's
# default of 8 was passed by 3 levels x 2 beams x 2 batch sizes and, without fullgraph,
# would drop later calls back to eager without a word
RECOMPILE_LIMIT = 64


def _compiled_steps() -> tuple:
    """`_start` and `_advance` through torch.compile (inductor), made once per process.
    Shapes start static and turn dynamic when they change (a new batch size or beam), so a
    search compiles a handful of graphs, then reuses them. fullgraph: each level is one
    graph, and passing the limit raises instead of falling back to eager."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = tuple(_explain_failures(torch.compile(  # type: ignore[call-overload]
            fn, fullgraph=True, recompile_limit=RECOMPILE_LIMIT)) for fn in (_start, _advance))
    return _COMPILED


def _explain_failures(compiled):  # type: ignore[no-untyped-def]
    """A compile failure surfaces at the first call: say what failed and the way back."""
    def call(*args):  # type: ignore[no-untyped-def]
        try:
            return compiled(*args)
        except Exception as exc:
            raise RuntimeError(f"compiled decoding failed ({type(exc).__name__}: {exc}); "
                               "torch.compile needs a working C++ compiler on CPU. Call "
                               "compile_decoding(False) to decode without it") from exc
    return call


def voken_projection(in_dim: int, out_dim: int, *, seed: int = 0) -> torch.Tensor:
    """(in_dim, out_dim) fixed map from codebook width to d_model for `init_code_embeddings`.

    The identity when the widths match (a plain copy, as AVG does); otherwise a seeded
    Gaussian with entries N(0, 1/out_dim), which keeps squared norms and inner products in
    expectation (Johnson-Lindenstrauss), so the codebook's geometry survives the change of
    width. AVG says only that the voken embeddings are "transformed" into the vocabulary.
    """
    if in_dim == out_dim:
        return torch.eye(in_dim)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=gen) / math.sqrt(out_dim)


@torch.no_grad()
def init_code_embeddings(model: CodeDecoder, codebooks: Sequence[torch.Tensor | np.ndarray], *,
                         seed: int = 0, rms: float | None = None) -> CodeDecoder:
    """AVG voken embeddings: code_emb[l] <- codebooks[l] @ voken_projection(D, d_model).

    codebooks: per level (K_l, D), e.g. `RQTokenizer.codebooks`; M tables (the last level's
    code is never fed back, so its table is unused) or M - 1. The projection is fixed, only
    an initialisation: the embeddings stay trainable, as in AVG (its ablation notes they
    "can still be well learned"). rms: if given, each level's table is rescaled to that
    root-mean-square entry (1.0 matches nn.Embedding's N(0, 1) init; residual codebooks of
    deep levels are small); None copies the projected codebook unscaled. Returns `model`.
    """
    tables = model.code_emb
    if len(codebooks) not in (len(tables), len(tables) + 1):
        raise ValueError(f"need {len(tables) + 1} codebooks (one per level), got {len(codebooks)}")
    books = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in codebooks]
    dims = {tuple(b.shape[1:]) for b in books}
    if len(dims) != 1 or any(b.ndim != 2 for b in books):
        raise ValueError(f"codebooks must all be (K_l, D) with one D, got "
                         f"{[tuple(b.shape) for b in books]}")
    proj = voken_projection(books[0].shape[1], model.config.d_model, seed=seed)
    for level, emb in enumerate(tables):
        if books[level].shape[0] != emb.num_embeddings:  # type: ignore[union-attr]
            raise ValueError(f"level {level}: codebook has {books[level].shape[0]} codes, the "
                             f"decoder {emb.num_embeddings}")  # type: ignore[union-attr]
        table = books[level] @ proj
        if rms is not None:
            table = table * (rms / table.pow(2).mean().sqrt().clamp_min(1e-12))
        emb.weight.copy_(table)  # type: ignore[union-attr,operator]
    return model
