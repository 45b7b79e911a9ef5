"""Training the code decoder on (query, target item) pairs with next-code cross-entropy.

Pairs come from a sampler, so a pair set never has to be materialised (60k queries x
6k same-class targets is 360M pairs): `PairSampler` draws from explicit pairs,
`SameLabelSampler` draws a random target of the query's class (the IRGen training set-up).
The schedule is step-based (linear warm-up, cosine decay) and seeded, so a run is
reproducible from its `TrainConfig`.

Two optional objectives from the papers, both off by default:
- AVG's discriminative loss (eq. 8-10, `discriminative_loss`): trie-constrained beam search
  over the training items' IDs, then -log softmax of the positive's sequence score among the
  beam, added to the generative loss with weight `dis_weight`, every `dis_every` steps.
- GENIUS' query augmentation (eq. 11, `mix_queries`): a query is replaced by an interpolation
  between it and its target item's embedding (needs `item_emb`).
What this is not: an evaluation loop or a model factory (see `genir.index`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from genir.decoder.model import CodeDecoder
from genir.search.beam import constrained_beam_search
from genir.search.trie import CodeTrie

QUERY_AUG_MODES = ("none", "sample", "dimension")


@dataclass
class TrainConfig:
    steps: int = 2000          # optimiser steps
    batch_size: int = 256      # pairs per step
    lr: float = 2e-3           # peak AdamW learning rate
    warmup_steps: int = 100    # linear warm-up
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    grad_clip: float = 1.0     # max gradient norm
    seed: int = 0              # init, sampling, dropout
    dis_weight: float = 0.0    # AVG eq. (10) weight on L_dis; 0 = generative loss only
    dis_beam: int = 10         # AVG eq. (8) beam size b of the discriminative loss
    dis_every: int = 1         # add L_dis on every n-th step (a L_dis step costs ~13x a plain
    #                            one on CPU at beam 10: search + re-scoring beam x batch IDs)
    query_aug: str = "none"    # GENIUS eq. (11): "none", "sample" (paper) or "dimension" (code)
    query_aug_alpha: float = 2.0  # μ ~ Beta(α, α) (GENIUS sec. 5.2: α = 2)
    query_aug_prob: float = 1.0   # chance a query is augmented (the GENIUS code: every query)

    def __post_init__(self) -> None:
        if self.query_aug not in QUERY_AUG_MODES:
            raise ValueError(f"unknown query_aug {self.query_aug!r}; choose one of "
                             f"{', '.join(QUERY_AUG_MODES)}")
        if self.dis_weight < 0 or self.dis_beam < 2 or self.dis_every < 1:
            raise ValueError("need dis_weight >= 0, dis_beam >= 2 and dis_every >= 1, got "
                             f"{self.dis_weight}, {self.dis_beam}, {self.dis_every}")
        if self.query_aug_alpha <= 0 or not 0.0 <= self.query_aug_prob <= 1.0:
            raise ValueError("need query_aug_alpha > 0 and 0 <= query_aug_prob <= 1, got "
                             f"{self.query_aug_alpha}, {self.query_aug_prob}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


class Sampler(Protocol):
    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (query rows (B,), target item rows (B,))."""
        ...


class PairSampler:
    """Uniform draws from explicit (query row, target item) pairs."""

    def __init__(self, query_rows: np.ndarray, target_items: np.ndarray) -> None:
        self.query_rows = np.asarray(query_rows, dtype=np.int64)
        self.target_items = np.asarray(target_items, dtype=np.int64)
        if self.query_rows.shape != self.target_items.shape or self.query_rows.ndim != 1:
            raise ValueError("query_rows and target_items must be 1-D and of equal length")
        if len(self.query_rows) == 0:
            raise ValueError("no training pairs")

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(len(self.query_rows), size=batch_size)
        return self.query_rows[pick], self.target_items[pick]


class SameLabelSampler:
    """A random query, and a random target item with the query's label (IRGen pairs)."""

    def __init__(self, query_labels: np.ndarray, item_labels: np.ndarray) -> None:
        self.query_labels = np.asarray(query_labels, dtype=np.int64)
        item_labels = np.asarray(item_labels, dtype=np.int64)
        self.order = np.argsort(item_labels, kind="stable")
        sorted_labels = item_labels[self.order]
        self.start = np.searchsorted(sorted_labels, self.query_labels, side="left")
        self.count = np.searchsorted(sorted_labels, self.query_labels, side="right") - self.start
        if (self.count == 0).any():
            bad = np.unique(self.query_labels[self.count == 0])[:5].tolist()
            raise ValueError(f"query labels with no item of that label: {bad}")

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        q = rng.integers(len(self.query_labels), size=batch_size)
        offset = (rng.random(batch_size) * self.count[q]).astype(np.int64)
        return q, self.order[self.start[q] + offset]


def mix_queries(queries: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, *,
                mode: str = "sample", alpha: float = 2.0, prob: float = 1.0) -> torch.Tensor:
    """GENIUS query augmentation: (B, D) queries and their targets' embeddings -> (B, D).

    "sample" (eq. 11, the paper's text): z'_q = μ·z_q + (1 - μ)·z_c, one μ ~ Beta(α, α) per
    query, so z'_q lies on the segment from z_q to z_c.
    "dimension" (the public GENIUS code, which the paper does not describe): z'_q =
    sqrt(μ)·z_q + sqrt(1 - μ)·z_c with a μ per query and dimension; that code L2-normalises
    the mix, here rescaled to the query's norm (the same for our unit-norm queries).
    Each query is augmented with probability `prob`, else kept. Draws come from `rng`.
    """
    if mode not in QUERY_AUG_MODES[1:]:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(QUERY_AUG_MODES[1:])}")
    if queries.shape != targets.shape or queries.ndim != 2:
        raise ValueError(f"queries and targets must both be (B, D), got {tuple(queries.shape)} "
                         f"and {tuple(targets.shape)}")
    b, d = queries.shape
    mu = torch.from_numpy(rng.beta(alpha, alpha, size=(b, 1) if mode == "sample" else (b, d)))
    mu = mu.to(queries.dtype)
    if mode == "sample":
        mixed = mu * queries + (1 - mu) * targets
    else:
        mixed = mu.sqrt() * queries + (1 - mu).sqrt() * targets
        mixed = F.normalize(mixed, dim=1) * queries.norm(dim=1, keepdim=True)
    keep = torch.from_numpy(rng.random(b) >= prob)[:, None]
    return torch.where(keep, queries, mixed)


def insert_positive(candidates: torch.Tensor, valid: torch.Tensor,
                    target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Make sure each beam holds its positive ID exactly once.

    candidates (B, b, M) codes of the beam, best first; valid (B, b) (False for -1 padding);
    target (B, M). Where the target is missing it replaces the last (lowest or padding) slot.
    -> (candidates, valid, positive slot (B,)).
    """
    found = (candidates == target[:, None]).all(-1) & valid  # (B, b)
    present = found.any(1)
    last = candidates.shape[1] - 1
    pos = torch.where(present, found.int().argmax(1), torch.full_like(present, last, dtype=torch.int64))
    candidates, valid = candidates.clone(), valid.clone()
    candidates[~present, last] = target[~present]
    valid[~present, last] = True
    return candidates, valid, pos


def discriminative_loss(model: CodeDecoder, query: torch.Tensor, target: torch.Tensor,
                        trie: CodeTrie, unique_ids: torch.Tensor, *, beam_size: int) -> torch.Tensor:
    """AVG eq. (8)-(9): L_dis = -log exp(s_p) / sum_j exp(s_j) over the beam, batch mean.

    query (B, Dq); target (B, M) codes; trie built from `unique_ids` (U, M) (its leaf j is
    row j). The beam (eq. 8) is searched without gradients and in eval mode (no dropout);
    each returned ID is then re-scored with gradients in the model's own mode. s_j is the
    sum of the ID's per-level log-probabilities, the score beam search ranks by (AVG says
    "sum of the vokens' generation probabilities"; we read it as log-probabilities). The
    positive is inserted if the beam missed it (`insert_positive`).
    """
    b = query.shape[0]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        leaves, _ = constrained_beam_search(model.session(query, pack=False), trie, num_queries=b,
                                            beam_size=beam_size)
    model.train(was_training)
    leaves = leaves.clone()                                   # (B, beam), -1 padded
    valid = leaves >= 0
    candidates = unique_ids[leaves.clamp_min(0)]              # (B, beam, M)
    candidates, valid, pos = insert_positive(candidates, valid, target)
    width = candidates.shape[1]
    scores = model.sequence_log_prob(query.repeat_interleave(width, 0),
                                     candidates.reshape(b * width, -1)).view(b, width)
    scores = scores.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(scores, pos)


def train_decoder(model: CodeDecoder, *, queries: np.ndarray, item_codes: np.ndarray,
                  sampler: Sampler, config: TrainConfig, item_emb: np.ndarray | None = None,
                  progress: bool = False, desc: str = "train decoder") -> list[float]:
    """Fit `model` in place; returns the loss of every step (L_gen + dis_weight * L_dis).

    queries: (Nq, Dq) float32 query embeddings; item_codes: (N, M) target IDs; item_emb:
    (N, D) item embeddings in the query space, needed only for `config.query_aug`; with
    D < Dq (a universal query: content then instruction) only the first D columns of a
    query are mixed and the rest, the instruction, is kept.
    """
    from tqdm.auto import tqdm

    if config.query_aug != "none":
        if item_emb is None:
            raise ValueError(f"query_aug={config.query_aug!r} mixes queries with their targets' "
                             "embeddings: pass item_emb (N, Dq)")
        item_emb = np.asarray(item_emb, dtype=np.float32)
        if item_emb.ndim != 2 or len(item_emb) != len(item_codes) or \
                not 1 <= item_emb.shape[1] <= np.shape(queries)[1]:
            raise ValueError(f"item_emb must be (N, D) with N = {len(item_codes)} and D <= the "
                             f"query width {np.shape(queries)[1]}, got {item_emb.shape}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    aug_rng = np.random.default_rng([config.seed, 1])  # own stream: pairs match the plain run
    q_all = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    codes_all = torch.as_tensor(np.asarray(item_codes, dtype=np.int64))
    emb_all = torch.as_tensor(item_emb) if config.query_aug != "none" else None
    dis_index: tuple[CodeTrie, torch.Tensor] | None = None  # trie of the training IDs
    if config.dis_weight > 0:
        unique_ids = np.unique(np.asarray(item_codes, dtype=np.int64), axis=0)  # sorted rows
        dis_index = CodeTrie.from_unique_ids(unique_ids), torch.from_numpy(unique_ids)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    model.train()
    losses = []
    with tqdm(range(config.steps), desc=desc, disable=not progress, unit="step") as bar:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            q_rows, targets = sampler.sample(rng, config.batch_size)
            query, target = q_all[q_rows], codes_all[targets]
            if emb_all is not None:
                width = emb_all.shape[1]
                mixed = mix_queries(query[:, :width], emb_all[targets], aug_rng,
                                    mode=config.query_aug, alpha=config.query_aug_alpha,
                                    prob=config.query_aug_prob)
                query = torch.cat([mixed, query[:, width:]], 1)
            loss = model.loss(query, target)
            if dis_index is not None and step % config.dis_every == 0:
                # AVG eq. (10): L_AM = L_gen + L_dis (here weighted)
                loss = loss + config.dis_weight * discriminative_loss(
                    model, query, target, *dis_index, beam_size=config.dis_beam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            losses.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    return losses
