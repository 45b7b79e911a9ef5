"""Training the code decoder on (query, target item) pairs with next-code cross-entropy.

Pairs come from a sampler, so a pair set never has to be materialised (60k queries x
6k same-class targets is 360M pairs): `PairSampler` draws from explicit pairs,
`SameLabelSampler` draws a random target of the query's class (the IRGen training set-up).
The schedule is step-based (linear warm-up, cosine decay) and seeded, so a run is
reproducible from its `TrainConfig`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch

from genir.decoder.model import CodeDecoder


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


def train_decoder(model: CodeDecoder, *, queries: np.ndarray, item_codes: np.ndarray,
                  sampler: Sampler, config: TrainConfig, progress: bool = False,
                  desc: str = "train decoder") -> list[float]:
    """Fit `model` in place; returns the loss of every step.

    queries: (Nq, Dq) float32 query embeddings; item_codes: (N, M) target IDs.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    q_all = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    codes_all = torch.as_tensor(np.asarray(item_codes, dtype=np.int64))
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
            loss = model.loss(q_all[q_rows], codes_all[targets])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            losses.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    return losses
