"""The speed benchmarks' measuring helpers (benchmarks/ is a folder of scripts, loaded by
path), checked against a fake clock: no timing in the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def split(monkeypatch):  # benchmarks/search_split.py as a module, with a fake clock
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import search_split

    clock = [0.0]
    monkeypatch.setattr(search_split.time, "perf_counter", lambda: clock[0])
    return search_split, clock


def _search(name: str, seconds, clock: list[float], calls: list):
    """A fake search of one batch that takes seconds(batch's first query) on the clock."""
    def search(batch: np.ndarray) -> None:
        first = int(batch[0, 0])
        calls.append((name, first))
        clock[0] += seconds(first)
    return search


def test_paired_ratio_searches_every_batch_on_both_sides_in_alternating_order(split):
    mod, clock = split
    calls: list = []
    queries = np.arange(8, dtype=np.float32)[:, None]   # batch 2: batches start at 0, 2, 4, 6
    r = mod.paired_ratio(_search("a", lambda q: 3.0, clock, calls),
                         _search("b", lambda q: 1.5, clock, calls),
                         queries, batch=2, rounds=2)
    assert r["pooled"] == pytest.approx(2.0) and r["median"] == pytest.approx(2.0)
    assert r["pairs"] == 8 and r["rounds"] == [pytest.approx(2.0)] * 2
    # two warm-ups each (`warm_up`: the second packs a decoder's weights), then per batch
    # both sides, the order swapped from batch to batch
    assert calls[:4] == [("a", 0), ("a", 0), ("b", 0), ("b", 0)]
    one_round = [("a", 0), ("b", 0), ("b", 2), ("a", 2), ("a", 4), ("b", 4), ("b", 6), ("a", 6)]
    assert calls[4:] == one_round * 2


def test_paired_ratio_pools_times_and_takes_the_median_of_per_batch_ratios(split):
    mod, clock = split
    calls: list = []
    queries = np.arange(8, dtype=np.float32)[:, None]
    # a: 2 s a batch; b: 1 s on batches 0 and 4, 3 s on batches 2 and 6
    r = mod.paired_ratio(_search("a", lambda q: 2.0, clock, calls),
                         _search("b", lambda q: 1.0 if q % 4 == 0 else 3.0, clock, calls),
                         queries, batch=2, rounds=1)
    assert r["pooled"] == pytest.approx(8 / 8)                # total a / total b
    assert r["median"] == pytest.approx((2.0 + 2 / 3) / 2)  # ratios 2, 2/3, 2, 2/3
    assert r["q25"] == pytest.approx(2 / 3) and r["q75"] == pytest.approx(2.0)


def test_paired_ratio_reports_each_round_on_its_own(split):
    mod, clock = split
    calls: list = []
    queries = np.arange(4, dtype=np.float32)[:, None]
    rounds = iter([None] * 2 + [1.0] * 4 + [3.0] * 4)   # b: 2 warm-ups, then 1 s, then 3 s
    r = mod.paired_ratio(_search("a", lambda q: 2.0, clock, calls),
                         _search("b", lambda q: next(rounds) or 1.0, clock, calls),
                         queries, batch=1, rounds=2)
    assert r["rounds"] == [pytest.approx(2.0), pytest.approx(2 / 3)]
    assert r["pooled"] == pytest.approx(16 / 16)


def test_paired_decoder_fraction_divides_each_batch_bare_time_by_its_decoder_time(
        split, monkeypatch):
    """Per batch: the decoder's time (its session, timed through the model's class), then
    its own products run bare 3x; "after" is the first bare run over the decoder's time,
    "warm" the fastest of the three; medians and quartiles over rounds x batches, after
    two warm-up searches."""
    mod, clock = split
    import torch

    from genir.decoder.model import DecoderConfig

    cfg = DecoderConfig(query_dim=2, codebook_sizes=(3, 3), d_model=8, num_heads=2,
                        num_prefix=2)
    products = len(mod.decoder_gemms(cfg, 4, 2))
    since_search = [0]          # products run since the last search
    real_mm = torch.mm

    def mm(a, b, out=None):     # 0.1 s a product in the first bare run after a search, then 0.05
        clock[0] += 0.1 if since_search[0] < products else 0.05
        since_search[0] += 1
        return real_mm(a, b, out=out)

    class Decoder:
        config = cfg

        def session(self, query):
            clock[0] += 2.0 * float(query[0, 0])   # 2 s x the batch's first value
            return "session"

    class Index:
        decoder = Decoder()
        searches = 0

        def search(self, queries, k, *, beam_size, rerank):
            assert (k, beam_size, rerank) == (5, 4, False)
            Index.searches += 1
            assert isinstance(self.decoder.session(torch.from_numpy(queries)), mod.TimedSession)
            since_search[0] = 0

    monkeypatch.setattr(mod.torch, "mm", mm)
    queries = np.array([[1, 0], [9, 9], [2, 0], [9, 9]], np.float32)   # decoder 2 s, then 4 s
    f = mod.paired_decoder_fraction(Index(), queries, k=5, beam=4, batch=2, rounds=3)
    assert Index.searches == 2 + 3 * 2 and f["pairs"] == 6
    assert Decoder.session.__qualname__.endswith("Decoder.session")   # its own again
    first, fastest = 0.1 * products, 0.05 * products
    assert f["after"]["median"] == pytest.approx((first / 2 + first / 4) / 2)
    assert f["warm"]["median"] == pytest.approx((fastest / 2 + fastest / 4) / 2)
    assert f["warm"]["q25"] == pytest.approx(fastest / 4)
    assert f["warm"]["q75"] == pytest.approx(fastest / 2)


def test_paired_ratio_needs_a_whole_batch(split):
    mod, _ = split
    with pytest.raises(ValueError, match="batch must be in 1..3"):
        mod.paired_ratio(print, print, np.zeros((3, 1)), batch=4, rounds=1)
