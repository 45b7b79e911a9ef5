from __future__ import annotations

import numpy as np
import pytest

from conftest import clustered
from genir.ids.random_ids import RandomTokenizer
from genir.ids.rq import RQConfig
from genir.index import GenerativeIndex, IndexConfig


def test_random_ids_are_deterministic_in_range_and_ignore_geometry():
    x, labels, _ = clustered(400, num_classes=4, dim=8)
    tok = RandomTokenizer(RQConfig(num_levels=3, codebook_size=8, seed=1)).fit(x)
    codes = tok.encode(x)
    assert codes.shape == (400, 3) and codes.min() >= 0 and codes.max() < 8
    assert np.array_equal(codes, tok.encode(x.copy()))
    assert not np.array_equal(codes, RandomTokenizer(RQConfig(num_levels=3, codebook_size=8, seed=2))
                              .fit(x).encode(x))
    # every code of level 0 is used and the classes spread over all of them
    assert len(np.unique(codes[:, 0])) == 8
    for c in range(4):
        assert len(np.unique(codes[labels == c, 0])) >= 6
    with pytest.raises(NotImplementedError):
        tok.decode(codes)
    with pytest.raises(ValueError, match="width"):
        tok.encode(x[:, :3])


def test_index_with_random_ids_saves_and_loads(tmp_path):
    x, _, _ = clustered(60, dim=8)
    config = IndexConfig(tokenizer="random")
    config.rq.num_levels, config.rq.codebook_size = 2, 8
    config.decoder.d_model, config.decoder.num_layers, config.train.steps = 16, 1, 5
    index = GenerativeIndex.build(x, config=config)
    index.save(tmp_path / "idx")
    loaded = GenerativeIndex.load(tmp_path / "idx")
    assert isinstance(loaded.tokenizer, RandomTokenizer)
    assert np.array_equal(loaded.search(x[:4], 5)[1], index.search(x[:4], 5)[1])
    with pytest.raises(ValueError, match="rq, random|random, rq"):
        IndexConfig(tokenizer="kmeans")
