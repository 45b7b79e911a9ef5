"""Seeded k-means (k-means++ init, Lloyd iterations) in torch, the building block of RQ.

Plain, deterministic for a given seed, and chunked so 60k x 1280 fits in memory; it is
not a general clustering library (no mini-batch, no GPU placement logic).
"""

from __future__ import annotations

import torch


def _sq_dists(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances."""
    return (x.square().sum(1, keepdim=True) - 2 * x @ centers.T
            + centers.square().sum(1)[None]).clamp_min_(0)


def assign(x: torch.Tensor, centers: torch.Tensor, chunk_size: int = 16384) -> torch.Tensor:
    """(N, D), (K, D) -> (N,) index of the nearest center (ties: lowest index)."""
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for start in range(0, x.shape[0], chunk_size):
        out[start:start + chunk_size] = _sq_dists(x[start:start + chunk_size], centers).argmin(1)
    return out


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: (N, D) -> (k, D). Needs N >= 1; repeats points when N < k."""
    n = x.shape[0]
    x_sq = x.square().sum(1)  # once: each new center then costs one (N, D) mat-vec
    picks = [int(torch.randint(n, (1,), generator=generator))]
    closest = (x_sq - 2 * x @ x[picks[0]] + x_sq[picks[0]]).clamp_min_(0)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point already is a center: fall back to uniform picks
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=generator))
        picks.append(idx)
        torch.minimum(closest, (x_sq - 2 * x @ x[idx] + x_sq[idx]).clamp_min_(0), out=closest)
    return x[picks].clone()


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0,
           max_points: int | None = None) -> tuple[torch.Tensor, int]:
    """Lloyd's k-means. (N, D) float -> ((k, D) centers, number of dead-code re-seeds).

    Fits on a seeded sample of `max_points` rows when N is larger. A center left with no
    points is re-seeded from the point farthest from its own center (counted, returned).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    generator = torch.Generator().manual_seed(seed)
    x = x.float()
    if max_points is not None and x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_points]]
    # k-means++ is sequential (k passes over the data): seed it from a sample
    seed_pool = x[torch.randperm(x.shape[0], generator=generator)[:max(16 * k, 4096)]]
    centers = kmeans_plusplus(seed_pool, k, generator)
    reseeds = 0
    for _ in range(iters):
        labels = assign(x, centers)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        alive = counts > 0
        centers[alive] = sums[alive] / counts[alive, None]
        dead = (~alive).nonzero().flatten()
        if len(dead) and x.shape[0] >= k:
            err = (x - centers[labels]).square().sum(1)
            far = err.topk(len(dead)).indices
            centers[dead] = x[far]
            reseeds += len(dead)
    return centers, reseeds
