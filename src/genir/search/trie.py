"""`CodeTrie`: the prefix tree of valid semantic IDs, stored as flat arrays (CSR per level).

Built vectorised from the lexicographically sorted unique IDs of an `IDTable`. Node j of
level l stands for one distinct prefix of length l + 1; its children are the level-(l+1)
nodes child_start[l][j] : child_start[l][j + 1]. Leaves (level M - 1) are exactly the
unique IDs, in the same order, so a leaf index is an `IDTable` row. Not a dict of dicts:
1M IDs take a few arrays of int64, not a GB of Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class CodeTrie:
    node_code: list[torch.Tensor]    # per level l: (num_nodes_l,) last code of each prefix
    child_start: list[torch.Tensor]  # per level l < M-1: (num_nodes_l + 1,) CSR offsets
    max_children: list[int]          # per level l: most children of one level-(l-1) node
    # per level l: every level-(l-1) node has all codes 0..max_children[l]-1 as children, so
    # node j's children are j * K + code (a dense level: 1M random IDs fill levels 0 and 1)
    # (derived from the arrays when not given)
    complete: list[bool] = field(default_factory=list)
    max_code: list[int] = field(init=False)    # per level: the largest code it holds

    def __post_init__(self) -> None:
        self.max_code = [int(codes.max()) for codes in self.node_code]
        if not self.complete:
            for level, codes in enumerate(self.node_code):
                k = self.max_children[level]
                parents = 1 if level == 0 else len(self.child_start[level - 1]) - 1
                self.complete.append(len(codes) == parents * k and self.max_code[level] < k)
        # the same arrays as numpy (shared memory) for the beam search's compiled step; the
        # root's children are level 0's nodes 0 .. n - 1
        root = np.array([0, len(self.node_code[0])], dtype=np.int64)
        self._csr = [(root if level == 0 else self.child_start[level - 1].numpy(),
                      self.node_code[level].numpy()) for level in range(self.num_levels)]

    @classmethod
    def from_unique_ids(cls, unique_ids: np.ndarray) -> CodeTrie:
        """(U, M) int64 sorted unique IDs -> trie."""
        ids = np.asarray(unique_ids, dtype=np.int64)
        if ids.ndim != 2 or len(ids) == 0:
            raise ValueError(f"need a non-empty (U, M) array of IDs, got shape {ids.shape}")
        if len(ids) > 1 and not _is_sorted_unique(ids):
            raise ValueError("unique_ids must be sorted lexicographically and unique")
        num_levels = ids.shape[1]
        # new[l][r]: row r starts a new prefix of length l + 1
        change = np.ones((len(ids), num_levels), dtype=bool)
        change[1:] = ids[1:] != ids[:-1]
        new = np.logical_or.accumulate(change, axis=1)
        node_code, child_start, max_children = [], [], []
        prev_node_of_row = None
        for level in range(num_levels):
            first_rows = np.flatnonzero(new[:, level])
            node_code.append(torch.from_numpy(ids[first_rows, level].copy()))
            if prev_node_of_row is None:
                max_children.append(len(first_rows))
            else:
                parents = prev_node_of_row[first_rows]  # non-decreasing
                num_parents = int(prev_node_of_row[-1]) + 1
                counts = np.bincount(parents, minlength=num_parents)
                child_start.append(torch.from_numpy(
                    np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)))
                max_children.append(int(counts.max()))
            prev_node_of_row = np.cumsum(new[:, level]) - 1
        return cls(node_code=node_code, child_start=child_start, max_children=max_children)

    @property
    def num_levels(self) -> int:
        return len(self.node_code)

    @property
    def num_leaves(self) -> int:
        return len(self.node_code[-1])

    def csr(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, codes) of `level` as numpy: the children of node p of level - 1 (the root
        at level 0) are the level's nodes starts[p] : starts[p + 1]; node s has code
        codes[s]."""
        return self._csr[level]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.node_code, *self.child_start])


def _is_sorted_unique(ids: np.ndarray) -> bool:
    diff = ids[1:] != ids[:-1]
    first = diff.argmax(axis=1)
    any_diff = diff.any(axis=1)
    rows = np.arange(len(first))
    return bool(any_diff.all() and (ids[1:][rows, first] > ids[:-1][rows, first]).all())
