"""`HierarchicalKMeansTokenizer`: the hierarchical k-means identifier of DSI / NCI, the
HKM baseline of IRGen Table 3 (random < hierarchical k-means < RQ < IRGen).

Level 1 clusters all items into K groups; level l clusters the items of each level-(l-1)
cluster again into K groups (fewer when the cluster is smaller), to a fixed depth M. Unlike
RQ, a code means nothing on its own: code 3 at level 2 names a different centroid under
every parent. A cluster with <= K distinct points is not clustered: each distinct point is
its own child (DSI's leaf rule), so most deep clusters cost nothing to fit.

The tree is stored per level as a flat (num_nodes_l, D) centroid table plus CSR offsets
over the parents, so it fits in safetensors. New items descend greedily through the stored
centroids, so `encode` works for items not seen in `fit`. It is unsupervised; the
class-supervised tokenizer is `genir.ids.irgen`.
"""

from __future__ import annotations

import numpy as np
import torch

from genir.ids.base import Side
from genir.ids.kmeans import assign, kmeans
from genir.ids.rq import RQConfig, _as_tensor


class HierarchicalKMeansTokenizer:
    """tok.fit(emb); ids = tok.encode(emb); rec = tok.decode(ids)."""

    fit_needs: tuple[str, ...] = ()
    encode_needs: tuple[str, ...] = ()

    def __init__(self, config: RQConfig | None = None) -> None:
        self.config = config or RQConfig()
        # level l: children of parent node p (a node of level l-1; level 0 has one root)
        # are centroids[l][offsets[l][p]:offsets[l][p + 1]]; a child's code is its rank there
        self.centroids: list[torch.Tensor] = []  # per level (num_nodes_l, D)
        self.offsets: list[torch.Tensor] = []    # per level (num_parents_l + 1,) int64
        self.reseeds: list[int] = []             # dead codes re-seeded per level, summed over clusters
        self.fit_codes: np.ndarray | None = None  # (N, M) codes of the items given to fit

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    @property
    def is_fitted(self) -> bool:
        return len(self.centroids) == self.config.num_levels

    def fit(self, emb: np.ndarray | torch.Tensor, *,
            side: Side | None = None) -> HierarchicalKMeansTokenizer:
        """(N, D) float -> self. The codes of `emb` are kept in `fit_codes`."""
        x = _as_tensor(emb)
        cfg = self.config
        self.centroids, self.offsets, self.reseeds = [], [], []
        node = torch.zeros(x.shape[0], dtype=torch.int64)  # each item's parent node (the root)
        parent_centroids = x.mean(0, keepdim=True)          # (num_parents, D)
        codes = torch.empty(x.shape[0], cfg.num_levels, dtype=torch.int64)
        for level in range(cfg.num_levels):
            centroids, offsets, reseeds = self._fit_level(x, node, parent_centroids, level)
            self.centroids.append(centroids)
            self.offsets.append(offsets)
            self.reseeds.append(reseeds)
            # the fit codes come from the same greedy descent as encode, so encode(emb)
            # reproduces them exactly
            codes[:, level] = _nearest_child(x, node, offsets, centroids)
            node = offsets[node] + codes[:, level]
            parent_centroids = centroids
        self.fit_codes = codes.numpy()
        return self

    def _fit_level(self, x: torch.Tensor, node: torch.Tensor, parent_centroids: torch.Tensor,
                   level: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Children of every parent node: ((num_children, D), (num_parents + 1,) offsets, reseeds)."""
        k = self.config.codebook_size
        num_parents = parent_centroids.shape[0]
        sizes = torch.bincount(node, minlength=num_parents)
        order = torch.argsort(node, stable=True)  # items grouped by parent, original order kept
        starts = torch.cumsum(sizes, 0) - sizes
        # a parent with no items (a centroid k-means left empty) keeps its own centroid as
        # its only child, and a parent with one item has that item: both vectorised
        blocks: dict[int, torch.Tensor] = {}
        reseeds = 0
        for p in (sizes > 1).nonzero().flatten().tolist():
            members = x[order[starts[p]:starts[p] + sizes[p]]]
            if len(members) <= k:  # every distinct point is its own child
                blocks[p] = _unique_rows(members)
            else:
                blocks[p], dead = kmeans(members, k, iters=self.config.kmeans_iters,
                                         seed=_cluster_seed(self.config.seed, level, p),
                                         max_points=self.config.max_fit_points)
                reseeds += dead
        counts = torch.ones(num_parents, dtype=torch.int64)
        for p, block in blocks.items():
            counts[p] = len(block)
        offsets = torch.zeros(num_parents + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        centroids = torch.empty(int(offsets[-1]), x.shape[1])
        empty = (sizes == 0).nonzero().flatten()
        centroids[offsets[empty]] = parent_centroids[empty]
        single = (sizes == 1).nonzero().flatten()
        centroids[offsets[single]] = x[order[starts[single]]]
        for p, block in blocks.items():
            centroids[offsets[p]:offsets[p + 1]] = block
        return centroids, offsets, reseeds

    def encode(self, emb: np.ndarray | torch.Tensor, *, side: Side | None = None) -> np.ndarray:
        """(N, D) -> (N, M) int64 codes: greedy descent, nearest child per level."""
        self._check_fitted()
        x = _as_tensor(emb)
        if x.shape[1] != self.centroids[0].shape[1]:
            raise ValueError(f"embedding width {x.shape[1]} does not match the "
                             f"tokenizer's {self.centroids[0].shape[1]}")
        node = torch.zeros(x.shape[0], dtype=torch.int64)
        codes = torch.empty(x.shape[0], self.config.num_levels, dtype=torch.int64)
        for level, (centroids, offsets) in enumerate(zip(self.centroids, self.offsets, strict=True)):
            codes[:, level] = _nearest_child(x, node, offsets, centroids)
            node = offsets[node] + codes[:, level]
        return codes.numpy()

    def decode(self, codes: np.ndarray | torch.Tensor, num_levels: int | None = None) -> np.ndarray:
        """(N, M) codes -> (N, D): the centroid of the deepest of the first `num_levels` levels."""
        self._check_fitted()
        codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        levels = self.config.num_levels if num_levels is None else num_levels
        if not 1 <= levels <= self.config.num_levels or codes_t.ndim != 2 or codes_t.shape[1] < levels:
            raise ValueError(f"cannot decode {levels} levels from codes of shape {tuple(codes_t.shape)}")
        node = torch.zeros(codes_t.shape[0], dtype=torch.int64)
        for level in range(levels):
            offsets, code = self.offsets[level], codes_t[:, level]
            bad = (code < 0) | (code >= offsets[node + 1] - offsets[node])
            if bad.any():
                row = int(bad.nonzero()[0, 0])
                raise ValueError(f"code {int(code[row])} at level {level} of row {row} is not a child "
                                 "in the fitted tree")
            node = offsets[node] + code
        return self.centroids[levels - 1][node].numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"centroids.{i}": c.contiguous() for i, c in enumerate(self.centroids)}
        state.update({f"offsets.{i}": o.contiguous() for i, o in enumerate(self.offsets)})
        return state

    @classmethod
    def from_state(cls, config: RQConfig, state: dict[str, torch.Tensor]) -> HierarchicalKMeansTokenizer:
        tok = cls(config)
        tok.centroids = [state[f"centroids.{i}"].float() for i in range(config.num_levels)]
        tok.offsets = [state[f"offsets.{i}"].long() for i in range(config.num_levels)]
        return tok

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer is not fitted: call fit(embeddings) first")


def _nearest_child(x: torch.Tensor, node: torch.Tensor, offsets: torch.Tensor,
                   centroids: torch.Tensor) -> torch.Tensor:
    """(N, D) items under parents `node` (N,) -> (N,) rank of the nearest child of each parent.

    Items under a one-child parent get code 0 without any distance; the others are handled
    one parent at a time (items grouped by a stable sort, so fit and encode see the same
    groups in the same order and agree bit for bit).
    """
    codes = torch.zeros(x.shape[0], dtype=torch.int64)
    num_children = offsets[node + 1] - offsets[node]  # (N,)
    multi = (num_children > 1).nonzero().flatten()
    if len(multi) == 0:
        return codes
    parents = node[multi]
    order = torch.argsort(parents, stable=True)
    items, parents = multi[order], parents[order]
    unique, sizes = torch.unique_consecutive(parents, return_counts=True)
    start = 0
    for p, size in zip(unique.tolist(), sizes.tolist(), strict=True):
        group = items[start:start + size]
        codes[group] = assign(x[group], centroids[offsets[p]:offsets[p + 1]])
        start += size
    return codes


def _cluster_seed(seed: int, level: int, parent: int) -> int:
    """k-means seed of one parent's children: distinct per (level, parent), fixed by `seed`."""
    return seed + 1_000_003 * level + parent


def _unique_rows(points: torch.Tensor) -> torch.Tensor:
    """(n, D) -> (u, D) distinct rows in first-seen order (identical items share one child)."""
    _, inverse = torch.unique(points, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), points.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(points.shape[0]), reduce="amin")
    return points[first.sort().values]
