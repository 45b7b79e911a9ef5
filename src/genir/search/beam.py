"""Trie-constrained beam search, batched over queries and beams.

Each beam carries its trie node; at every level only that node's children are scored
(a gather over the level's log-probs, no vocabulary-wide mask per beam, no per-beam
Python callback) and one top-k over (beams x children) per query picks the next beams.
The model side is any `DecodingSession`: it scores the next level and advances its caches
by the chosen beams. It returns leaf ids (= `IDTable` rows), never an invalid ID; slots
with no valid ID left are -1 with score -inf.
"""

from __future__ import annotations

from typing import Protocol

import torch

from genir.search.trie import CodeTrie


class DecodingSession(Protocol):
    def log_probs(self, level: int) -> torch.Tensor:
        """(Q * B, K_level) log-probabilities of the next code for every live beam."""
        ...

    def advance(self, level: int, codes: torch.Tensor, parent: torch.Tensor) -> None:
        """Feed `codes` (Q, B') at `level`; beam b' of query q continues beam parent[q, b']."""
        ...


@torch.inference_mode()
def constrained_beam_search(session: DecodingSession, trie: CodeTrie, *, num_queries: int,
                            beam_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (leaves (Q, beam) int64, scores (Q, beam) float32), best first, -1 / -inf padded."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    q = num_queries
    node = torch.zeros(q, 1, dtype=torch.int64)  # the root (ignored at level 0)
    score = torch.zeros(q, 1)
    for level in range(trie.num_levels):
        width = node.shape[1]
        logp = session.log_probs(level).float().view(q, width, -1)  # (Q, B, K)
        if trie.complete[level] and logp.shape[2] == trie.max_children[level]:
            # a dense level: every code is a valid child, child id = parent * K + code, so
            # no child table, gathers or mask (same result as the general path below)
            k = logp.shape[2]
            top = (score[..., None] + logp).view(q, -1).topk(min(beam_size, width * k), dim=1)
            parent = top.indices // k
            chosen = top.indices % k
            node = (node.gather(1, parent) * k if level else torch.zeros_like(parent)) + chosen
            score = top.values
            if level + 1 < trie.num_levels:
                session.advance(level, chosen, parent)
            continue
        child, valid = trie.children(level, node)                   # (Q, B, C)
        codes = trie.node_code[level][child]                        # (Q, B, C)
        cand = score[..., None] + logp.gather(2, codes)
        cand = torch.where(valid, cand, float("-inf")).view(q, -1)
        top = cand.topk(min(beam_size, cand.shape[1]), dim=1)
        parent = top.indices // child.shape[2]
        node = child.view(q, -1).gather(1, top.indices)
        score = top.values
        chosen = codes.view(q, -1).gather(1, top.indices)
        if level + 1 < trie.num_levels:
            session.advance(level, chosen, parent)
    dead = torch.isinf(score)
    node = node.masked_fill(dead, -1)
    if node.shape[1] < beam_size:  # fewer valid IDs than beams: pad
        pad = beam_size - node.shape[1]
        node = torch.cat([node, node.new_full((q, pad), -1)], 1)
        score = torch.cat([score, score.new_full((q, pad), float("-inf"))], 1)
    return node, score
