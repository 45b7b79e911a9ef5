"""The common, slow way to constrain generation: kept as the reference that genir's fast
search must equal, and as the baseline the speed benchmark measures.

A nested-dict trie, a per-beam `prefix_allowed_tokens_fn` callback, a dense mask over the
whole vocabulary built row by row, and a full decoder forward over every beam's prefix at
every step (no key/value cache, the query memory recomputed per beam), as in public
generative-retrieval code built on `generate(prefix_allowed_tokens_fn=...)`. Not for use in
production paths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from genir.decoder.model import CodeDecoder


def dict_trie(unique_ids: np.ndarray) -> dict:
    root: dict = {}
    for row in np.asarray(unique_ids).tolist():
        node = root
        for code in row:
            node = node.setdefault(code, {})
    return root


def allowed_tokens_fn(trie: dict) -> Callable[[list[int]], list[int]]:
    def allowed(prefix: list[int]) -> list[int]:
        node = trie
        for code in prefix:
            node = node.get(code, {})
        return list(node)
    return allowed


@torch.inference_mode()
def reference_beam_search(model: CodeDecoder, queries: torch.Tensor, unique_ids: np.ndarray, *,
                          beam_size: int) -> tuple[list[list[tuple[int, ...]]], list[list[float]]]:
    """-> per query, the best `beam_size` IDs (as code tuples) and their log-probabilities."""
    allowed = allowed_tokens_fn(dict_trie(unique_ids))
    num_levels = len(model.config.codebook_sizes)
    out_ids, out_scores = [], []
    for q in queries:
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        for level in range(num_levels):
            vocab = model.config.codebook_sizes[level]
            candidates = []
            for prefix, score in beams:  # one forward per beam: no cache, no sharing
                codes = torch.tensor([prefix + [0] * (num_levels - level)], dtype=torch.int64)
                logp = model(q[None], codes)[level][0].log_softmax(-1)
                mask = torch.full((vocab,), float("-inf"))  # dense mask, built per beam
                for code in allowed(prefix):
                    mask[code] = 0.0
                scored = logp + mask
                for code in torch.nonzero(torch.isfinite(scored)).flatten().tolist():
                    candidates.append((prefix + [code], score + float(scored[code])))
            candidates.sort(key=lambda c: -c[1])
            beams = candidates[:beam_size]
        out_ids.append([tuple(p) for p, _ in beams])
        out_scores.append([s for _, s in beams])
    return out_ids, out_scores
