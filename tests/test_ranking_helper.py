"""`conftest.assert_same_ranking`, which the cross-path tests lean on, rejects what it
should: a score off by more than the tolerance, two results swapped where their scores are
apart, different padding; and lets near-ties swap."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_same_ranking

REF_SCORES = np.array([[-1.0, -2.0, -2.00001, -3.0, -4.0]])
REF_IDS = np.array([[7, 3, 5, 1, 9]])


def test_near_ties_may_swap_and_scores_may_differ_within_the_tolerance():
    assert_same_ranking(REF_SCORES + 5e-5, np.array([[7, 5, 3, 1, 9]]), REF_SCORES, REF_IDS)
    assert_same_ranking(REF_SCORES, np.array([[7, 3, 5, 1, 2]]), REF_SCORES, REF_IDS)  # last


@pytest.mark.parametrize("scores,ids", [
    (REF_SCORES + np.array([[0, 0, 0, 1e-3, 0]]), REF_IDS),           # a score off
    (REF_SCORES, np.array([[3, 7, 5, 1, 9]])),                         # apart, swapped
    (REF_SCORES, np.array([[7, 3, 5, 8, 9]])),                         # another item
])
def test_what_differs_beyond_ties_is_refused(scores, ids):
    with pytest.raises(AssertionError):
        assert_same_ranking(scores, ids, REF_SCORES, REF_IDS)


def test_padding_must_agree():
    padded = np.where(np.arange(5) < 4, REF_SCORES, -np.inf)
    with pytest.raises(AssertionError, match="padding"):
        assert_same_ranking(REF_SCORES, REF_IDS, padded, np.where(np.arange(5) < 4, REF_IDS, -1))
    assert_same_ranking(padded, np.array([[7, 5, 3, 1, -1]]), padded,
                        np.where(np.arange(5) < 4, REF_IDS, -1))
