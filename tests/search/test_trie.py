from __future__ import annotations

import numpy as np
import pytest
import torch

from genir.ids.table import IDTable
from genir.search.trie import CodeTrie


def dict_trie(ids: np.ndarray) -> dict:
    """The slow, obvious reference: nested dicts of codes."""
    root: dict = {}
    for row in ids.tolist():
        node = root
        for code in row:
            node = node.setdefault(code, {})
    return root


def array_children(trie: CodeTrie, prefix: tuple[int, ...]) -> list[int]:
    """Walk the array trie's CSR (what the beam search reads) along `prefix` and list the
    codes of its children."""
    node = 0                                   # the root: row 0 of level 0's starts
    for level, code in enumerate(prefix):
        starts, codes = trie.csr(level)
        slots = range(starts[node], starts[node + 1])
        node = next(s for s in slots if codes[s] == code)
    starts, codes = trie.csr(len(prefix))
    return sorted(codes[starts[node]:starts[node + 1]].tolist())


@pytest.mark.parametrize("seed,num_levels,k", [(0, 2, 3), (1, 3, 4), (2, 4, 5), (3, 3, 2)])
def test_array_trie_children_equal_dict_trie(seed, num_levels, k):
    rng = np.random.default_rng(seed)
    codes = rng.integers(k, size=(40, num_levels))
    table = IDTable.from_codes(codes)
    trie = CodeTrie.from_unique_ids(table.unique_ids)
    ref = dict_trie(table.unique_ids)

    def walk(node: dict, prefix: tuple[int, ...]) -> None:
        if len(prefix) == num_levels:
            return
        assert array_children(trie, prefix) == sorted(node)
        for code, child in node.items():
            walk(child, prefix + (code,))

    walk(ref, ())
    assert trie.num_leaves == table.num_ids


def test_leaves_are_table_rows():
    codes = np.array([[2, 1, 0], [0, 1, 1], [0, 1, 1], [0, 0, 3], [2, 0, 0]])
    table = IDTable.from_codes(codes)
    trie = CodeTrie.from_unique_ids(table.unique_ids)
    # reconstruct each leaf's full ID by walking parents through CSR offsets
    for leaf in range(trie.num_leaves):
        path = [int(trie.node_code[-1][leaf])]
        node = leaf
        for level in range(trie.num_levels - 1, 0, -1):
            starts = trie.child_start[level - 1]
            node = int(torch.searchsorted(starts, torch.tensor(node), right=True)) - 1
            path.append(int(trie.node_code[level - 1][node]))
        assert path[::-1] == table.unique_ids[leaf].tolist()


def test_id_table_keeps_collisions():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    table = IDTable.from_codes(codes)
    assert table.unique_ids.tolist() == [[0, 0], [0, 1], [1, 2]]
    assert table.items_of(2).tolist() == [0, 2, 3]
    assert table.item_to_id.tolist() == [2, 0, 2, 2, 1]
    stats = table.stats()
    assert stats["colliding_ids"] == 1 and stats["items_in_collisions"] == 3
    assert stats["max_items_per_id"] == 3 and stats["num_items"] == 5


def test_trie_rejects_unsorted():
    with pytest.raises(ValueError, match="sorted"):
        CodeTrie.from_unique_ids(np.array([[1, 0], [0, 1]]))
