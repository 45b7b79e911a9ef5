"""Compile the search's numba kernels ahead of the first search, into numba's on-disk cache.

A search runs compiled loops (`genir.decoder.fused`, `genir.search.beam`,
`genir.search.results`). From an empty cache, the first search of a process compiles them:
~25 s on 2 cores for the first batch-32 search, ~5 s more for the first batch-1 search
(serial and parallel variants are compiled apart). numba keeps the machine code on disk
(`__pycache__` beside the sources, or NUMBA_CACHE_DIR) keyed by the source files and the
CPU, so every later process loads it in well under a second.

`compile_kernels` searches a few tiny random indexes once, covering what a search of a
real index compiles: serial and parallel levels, pooled and token queries, rerank on and
off, for each decoder depth asked for (numba compiles a variant per number of blocks).
`make install` runs it (`genir compile`); a user who installed with pip can run it once.
It trains nothing and its results are thrown away. Falling back to the torch session until
the kernels are compiled is not offered: its products round differently, and a search's
results must not depend on when it ran.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from genir.decoder.fused import ROWS_PARALLEL_MIN
from genir.decoder.model import CodeDecoder, DecoderConfig
from genir.ids.rq import ResidualQuantizer, RQConfig
from genir.index import GenerativeIndex, IndexConfig

__all__ = ["compile_kernels"]


def compile_kernels(*, num_layers: Sequence[int] = (DecoderConfig.num_layers,)) -> float:
    """Run every compiled search path once on tiny random indexes (decoders of each depth in
    `num_layers`, pooled and token queries; batches of 1 and ROWS_PARALLEL_MIN queries;
    rerank off and on), so numba compiles them into its cache, or loads them from it.
    -> seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    dim, levels, size, num_items = 8, 3, 4, 40
    emb = rng.normal(size=(num_items, dim)).astype(np.float32)
    codes = rng.integers(size, size=(num_items, levels))
    queries = rng.normal(size=(ROWS_PARALLEL_MIN, dim)).astype(np.float32)
    for layers in num_layers:
        for tokens in (0, 2):
            torch.manual_seed(0)
            decoder = CodeDecoder(DecoderConfig(query_dim=dim, codebook_sizes=(size,) * levels,
                                                d_model=16, num_layers=layers, num_heads=2,
                                                query_tokens=tokens)).eval()
            index = GenerativeIndex(
                tokenizer=ResidualQuantizer(RQConfig(num_levels=levels, codebook_size=size)),
                decoder=decoder, item_emb=emb, codes=codes,
                item_ids=[str(i) for i in range(num_items)], config=IndexConfig())
            for batch in (1, ROWS_PARALLEL_MIN):
                for rerank in (False, True):
                    index.search(queries[:batch], 3, beam_size=2, rerank=rerank)
    return time.perf_counter() - start
