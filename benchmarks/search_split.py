"""Where a query's time goes: the decoder's work versus the search loop around it.

    .venv/bin/python benchmarks/search_split.py --sizes 10000 1000000

For each corpus size, beam and batch, `GenerativeIndex.search` runs with its decoder session
wrapped in a timer, so each batch's wall time splits into
  model   the decoder: the query memory and its cross-attention keys/values, then per level
          the next-code log-probabilities and the cache update for the chosen beams
  loop    everything else in constrained_beam_search: the compiled trie step (children,
          scores, best candidates) and its bookkeeping
  expand  after the beam search: leaves -> items (collisions), the final sort (and rerank)
Synthetic codes and a random decoder (--decoder: the default or T5-small-sized), as in
search_speed.py (same seeds). Issue 6's
targets: loop + expand <= 10% of the query time; the decoder's FLOPs per query (its config,
beam and ID length) at the measured rate >= 70% of the 1024^3 matmul peak measured right
after each pass ("peak" column; "gemm": against the decoder's own matrix products run
bare, the limit for matrices this small; "dec": the same over the decoder's own time, the
model share; medians over the passes); the same batch by batch
(`paired_decoder_fraction`: each batch's decoder time against its own products run bare
right after it, so that both sides see the same machine state); queries/s at the largest
N >= 0.9x the smallest, timed in pairs: each batch searched at both N one right after the
other (`paired_ratio`). The decoder decodes with the fused CPU session (the default;
--session torch: the torch session, fused-serial: the fused one with its kernels on one
thread); at the smallest N the fused / torch, fused / fused-kernels, fused / fused-unpacked
and fused / fused-serial queries/s ratios are timed the same way. With
--compile the decoder runs through torch.compile (the warm-up search of each setting
compiles) and the ratio timed is compiled / fused.
Prints a table and writes JSON.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager

import numpy as np
import torch
from search_speed import (  # same folder
    bare_products,
    common_args,
    decoder_flops_per_query,
    decoder_gemms,
    gemm_gflops,
    matmul_gflops,
    setup,
    synthetic_index,
    warm_up,
)

from genir.index import GenerativeIndex
from genir.search import beam as beam_mod


class TimedSession:
    """Wraps a DecoderSession; adds the seconds spent inside it to `clock['model']`. Passes
    the array calls of a session with `numpy_steps` through, and its `step_chunks`, so the
    search keeps its path."""

    def __init__(self, inner, clock: dict[str, float]) -> None:
        self.inner, self.clock = inner, clock
        self.numpy_steps = getattr(inner, "numpy_steps", False)

    @property
    def step_chunks(self) -> int:   # (changes with each level)
        return getattr(self.inner, "step_chunks", 1)

    def _timed(self, method: str, *args):
        t0 = time.perf_counter()
        out = getattr(self.inner, method)(*args)
        self.clock["model"] += time.perf_counter() - t0
        return out

    def log_probs(self, level: int) -> torch.Tensor:
        return self._timed("log_probs", level)

    def advance(self, level: int, codes: torch.Tensor, parent: torch.Tensor) -> None:
        self._timed("advance", level, codes, parent)

    def log_prob_array(self, level: int) -> np.ndarray:
        return self._timed("log_prob_array", level)

    def advance_arrays(self, level: int, codes: np.ndarray, parent: np.ndarray) -> None:
        self._timed("advance_arrays", level, codes, parent)


@contextmanager
def timed_sessions(decoder, clock: dict[str, float], start: str):
    """While inside, the sessions `decoder` makes are `TimedSession`s (their calls add to
    clock["model"]); making one (the query memory and its keys/values) adds to clock[start]."""
    real_session = type(decoder).session

    def session(self, query):
        t0 = time.perf_counter()
        s = real_session(self, query)
        clock[start] += time.perf_counter() - t0
        return TimedSession(s, clock)

    type(decoder).session = session            # type: ignore[method-assign]
    try:
        yield
    finally:
        type(decoder).session = real_session   # type: ignore[method-assign]


def split_search(index: GenerativeIndex, queries: np.ndarray, *, k: int, beam: int, batch: int,
                 rerank: bool, repeats: int = 5) -> dict[str, float]:
    """The fastest of `repeats` passes over the queries (this VM's timings vary by up to 2x
    between passes; the shares vary far less), and the decoder's rate against the machine's
    limits: after every pass the 1024^3 matmul rate and the rate of the decoder's own matrix
    products run bare are measured, each pass's fractions computed against the limits
    measured right after it, and the median over passes kept (a limit measured minutes apart
    from the search put one setting at 75% of the 1024^3 rate and the rest at 19-36%)."""
    cfg = index.decoder.config
    flops = decoder_flops_per_query(cfg, beam)
    runs = []
    for _ in range(repeats):
        r = _split_once(index, queries, k=k, beam=beam, batch=batch, rerank=rerank)
        rate = flops * r["qps"] / 1e9
        peak, own = matmul_gflops(reps=5), gemm_gflops(decoder_gemms(cfg, beam, batch), reps=5)
        runs.append({**r, "decoder_gflops": rate, "matmul_gflops": peak, "own_gemm_gflops": own,
                     "fraction_of_matmul_peak": rate / peak, "fraction_of_own_gemm": rate / own,
                     # the same over the decoder's own time only (its share of the query)
                     "decoder_fraction_of_own_gemm": rate / r["model_share"] / own})
    best = dict(max(runs, key=lambda r: r["qps"]))
    for key in ("matmul_gflops", "own_gemm_gflops", "fraction_of_matmul_peak",
                "fraction_of_own_gemm", "decoder_fraction_of_own_gemm"):
        best[key] = float(np.median([r[key] for r in runs]))
        best[key + "_range"] = (min(r[key] for r in runs), max(r[key] for r in runs))
    return best


def paired_decoder_fraction(index: GenerativeIndex, queries: np.ndarray, *, k: int, beam: int,
                            batch: int, rounds: int) -> dict:
    """The decoder's time against its own matrix products, batch by batch: every batch is
    searched (no rerank) with the decoder session timed, then the decoder's matrix products
    (`decoder_gemms`, same shapes and order, outputs preallocated) run bare three times back
    to back. Per batch, "after": the first bare run over the decoder's time (the products
    in the machine state the search leaves: caches and clocks as the decoder's own products
    meet them); "warm": the fastest of the three (the limit as a tight loop measures it).
    Each batch is its own pair, so the fractions do not follow this VM's drift, where a limit
    measured after a whole pass (`split_search`) pairs a best case with the pass's average.
    -> medians and quartiles of both over rounds x batches."""
    bare = bare_products(decoder_gemms(index.decoder.config, beam, batch))
    clock = {"model": 0.0}
    after, warm = [], []
    with timed_sessions(index.decoder, clock, "model"):
        warm_up(lambda q: index.search(q, k, beam_size=beam, rerank=False), queries[:batch])
        bare()
        for _ in range(rounds):
            for start in range(0, len(queries) - batch + 1, batch):
                clock["model"] = 0.0
                index.search(queries[start:start + batch], k, beam_size=beam, rerank=False)
                times = [bare() for _ in range(3)]
                after.append(times[0] / clock["model"])
                warm.append(min(times) / clock["model"])
    return {name: {"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                   "q75": float(np.percentile(v, 75))}
            for name, v in (("after", after), ("warm", warm))} | {"pairs": len(after)}


def _split_once(index: GenerativeIndex, queries: np.ndarray, *, k: int, beam: int, batch: int,
                rerank: bool) -> dict[str, float]:
    clock = {"memory": 0.0, "model": 0.0, "beam": 0.0}
    real_search = beam_mod.constrained_beam_search

    def timed_search(*args, **kwargs):
        t0 = time.perf_counter()
        out = real_search(*args, **kwargs)
        clock["beam"] += time.perf_counter() - t0
        return out

    import genir.index as index_mod

    index_mod.constrained_beam_search = timed_search
    try:
        with timed_sessions(index.decoder, clock, "memory"):   # memory + K/V: model work
            warm_up(lambda q: index.search(q, k, beam_size=beam, rerank=rerank),
                    queries[:batch])
            clock.update(memory=0.0, model=0.0, beam=0.0)
            t0 = time.perf_counter()
            n = 0
            for start in range(0, len(queries) - batch + 1, batch):
                index.search(queries[start:start + batch], k, beam_size=beam, rerank=rerank)
                n += batch
            total = time.perf_counter() - t0
    finally:
        index_mod.constrained_beam_search = real_search
    # search() builds the session (memory, K/V) before it enters the beam search; the
    # session's per-level calls happen inside it
    model = clock["memory"] + clock["model"]
    loop = clock["beam"] - clock["model"]
    expand = total - clock["beam"] - clock["memory"]
    return {"qps": n / total, "total_ms_per_query": 1e3 * total / n,
            "model_share": model / total, "loop_share": loop / total,
            "expand_share": expand / total}


def main() -> None:
    ap = common_args(__doc__, sizes=[10_000, 1_000_000], batches=[32], num_queries=256,
                     out="docs/benchmarks/search_split.json")
    ap.add_argument("--repeats", type=int, default=5,
                    help="passes per setting: the fastest gives q/s and shares, the median "
                         "the fractions of the machine limits")
    ap.add_argument("--rounds", type=int, default=7,
                    help="passes over the queries for the paired ratios (N, fused/torch or compiled/fused)")
    args = ap.parse_args()
    cfg, decoder, queries, gflops, rng = setup(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, decoder d={cfg.d_model} "
          f"L={cfg.num_layers} P={cfg.num_prefix}, ID {args.levels} x {args.codebook_size}, "
          f"{args.num_queries} queries; matmul {gflops:.0f} GFLOP/s (1024^3, this run)")
    print(f"{'N':>9} {'beam':>4} {'batch':>5} {'rerank':>6} {'q/s':>8} {'ms/q':>7} "
          f"{'model':>6} {'loop':>6} {'expand':>6} {'peak':>6} {'gemm':>6} {'dec':>6}")
    rows = []
    indexes = {}
    for n in args.sizes:
        index = synthetic_index(n, dim=args.dim, levels=args.levels,
                                codebook_size=args.codebook_size, decoder=decoder, rng=rng)
        indexes[n] = index
        for beam in args.beams:
            for batch in args.batches:
                for rerank in (False, True):
                    r = split_search(index, queries, k=args.k, beam=beam, batch=batch,
                                     rerank=rerank, repeats=args.repeats)
                    rows.append({"N": n, "beam": beam, "batch": batch, "rerank": rerank, **r})
                    print(f"{n:>9,} {beam:>4} {batch:>5} {str(rerank):>6} {r['qps']:8.1f} "
                          f"{r['total_ms_per_query']:7.3f} {100 * r['model_share']:5.1f}% "
                          f"{100 * r['loop_share']:5.1f}% {100 * r['expand_share']:5.1f}% "
                          f"{100 * r['fraction_of_matmul_peak']:5.1f}% "
                          f"{100 * r['fraction_of_own_gemm']:5.1f}% "
                          f"{100 * r['decoder_fraction_of_own_gemm']:5.1f}%")
    batch = args.batches[-1]
    print(f"\ndecoder time against its own matrix products, batch {batch}, each batch's decoder "
          f"time then its products run bare 3x, {args.rounds} rounds (median, quartiles):")
    fractions = []
    for n, index in indexes.items():
        for beam in args.beams:
            f = paired_decoder_fraction(index, queries, k=args.k, beam=beam, batch=batch,
                                        rounds=args.rounds)
            fractions.append({"N": n, "beam": beam, "batch": batch, **f})
            a, w = f["after"], f["warm"]
            print(f"  N={n:>9,} beam {beam:>2}: first bare run {100 * a['median']:.1f}% "
                  f"({100 * a['q25']:.1f}-{100 * a['q75']:.1f}), fastest of 3 "
                  f"{100 * w['median']:.1f}% ({100 * w['q25']:.1f}-{100 * w['q75']:.1f}), "
                  f"{f['pairs']} batches")
    # qps(largest N) / qps(smallest N): both indexes search the same batch one right after
    # the other, so both sides of every pair see the same machine state
    ratios = []
    small, large = min(indexes), max(indexes)
    if small != large:
        print(f"\nqps(N={large:,}) / qps(N={small:,}), batch {args.batches[-1]}, each batch "
              f"searched by both, {args.rounds} rounds:")
        for beam in args.beams:
            r = paired_ratio(_searcher(indexes[small], args.k, beam),
                             _searcher(indexes[large], args.k, beam),
                             queries, batch=args.batches[-1], rounds=args.rounds)
            ratios.append({"beam": beam, **r})
            print(f"  beam {beam:>2}: {_ratio_line(r)}")
    others = []           # (title, the same index decoding another way)
    if args.compile:      # compiled over the default (fused) session
        others.append(("compiled / fused session",
                       _variant(indexes[small], compile_decoding=False, fuse_decoding=True)))
    elif args.session == "fused":
        others.append(("fused / torch session",
                       _variant(indexes[small], compile_decoding=False, fuse_decoding=False)))
        others.append(("fused / fused-kernels session (torch's products, row kernels "
                       "between them)",
                       _variant(indexes[small], compile_decoding=False,
                                fuse_decoding={"one_call": False})))
        others.append(("fused / fused-unpacked session (MKL reads the weights unpacked)",
                       _variant(indexes[small], compile_decoding=False,
                                fuse_decoding={"pack": False})))
        others.append(("fused / fused-serial session (kernels on one thread)",
                       _variant(indexes[small], compile_decoding=False,
                                fuse_decoding={"parallel": False, "one_call": False})))
    decoders = [{"title": title, "rows": decoder_ratios(other, indexes[small], queries, args,
                                                        title)}
                for title, other in others]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "matmul_gflops": gflops, "rows": rows,
                                    "decoder_fractions": fractions, "ratios": ratios,
                                    "decoder_ratios": decoders},
                                   indent=1))
    print(f"wrote {args.out}")


def _variant(index: GenerativeIndex, **settings: bool | dict) -> GenerativeIndex:
    """A copy of `index` whose decoder (a copy, same weights) has these settings, e.g.
    compile_decoding=False or fuse_decoding={"parallel": False}: each name is a CodeDecoder
    method, called with the bool or the keyword arguments."""
    other = copy.copy(index)
    other.decoder = copy.deepcopy(index.decoder)
    for name, value in settings.items():
        method = getattr(other.decoder, name)
        method(**value) if isinstance(value, dict) else method(value)
    return other


def decoder_ratios(base: GenerativeIndex, index: GenerativeIndex, queries: np.ndarray, args,
                   title: str) -> list[dict]:
    """queries/s of `index` over `base` (the same index with another decoding path), per beam
    and batch, batch by batch in pairs."""
    out = []
    print(f"\n{title} queries/s, N={len(index):,}, each batch searched by both, "
          f"{args.rounds} rounds:")
    for beam in args.beams:
        for batch in args.batches:
            r = paired_ratio(_searcher(base, args.k, beam), _searcher(index, args.k, beam),
                             queries, batch=batch, rounds=args.rounds)
            out.append({"beam": beam, "batch": batch, **r})
            print(f"  beam {beam:>2} batch {batch:>2}: {_ratio_line(r)}")
    return out


def _searcher(index: GenerativeIndex, k: int, beam: int):
    """One batch of queries -> index's search without rerank: a side of `paired_ratio`."""
    return lambda queries: index.search(queries, k, beam_size=beam, rerank=False)


def paired_ratio(search_a, search_b, queries: np.ndarray, *, batch: int,
                 rounds: int) -> dict:
    """queries/s of `search_b` over `search_a` (each a function of one batch of queries).

    Every batch is searched by both, one right after the other, the order swapped from one
    batch to the next; `rounds` passes over the queries. This VM's speed moves within a
    second or two, so ratios of whole passes timed in turn (the previous design) spread over
    0.78-1.05 for one setting; a pair shares the machine's state. Returns "pooled": a's
    total time over b's (the queries/s ratio over all pairs), "median" and "q25"/"q75" of
    the per-batch ratios, and "rounds": each round's pooled ratio."""
    if not 1 <= batch <= len(queries):
        raise ValueError(f"batch must be in 1..{len(queries)} (the queries), got {batch}")
    for search in (search_a, search_b):
        warm_up(search, queries[:batch])
    pairs, per_round = [], []
    total = np.zeros(2)
    for _ in range(rounds):
        round_total = np.zeros(2)
        for j, start in enumerate(range(0, len(queries) - batch + 1, batch)):
            seconds = np.zeros(2)
            for side in ((0, 1) if j % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                (search_a, search_b)[side](queries[start:start + batch])
                seconds[side] = time.perf_counter() - t0
            pairs.append(seconds[0] / seconds[1])
            round_total += seconds
        per_round.append(round_total[0] / round_total[1])
        total += round_total
    return {"pooled": float(total[0] / total[1]), "median": float(np.median(pairs)),
            "q25": float(np.percentile(pairs, 25)), "q75": float(np.percentile(pairs, 75)),
            "pairs": len(pairs), "rounds": per_round}


def _ratio_line(r: dict) -> str:
    return (f"pooled {r['pooled']:.2f}x, per batch median {r['median']:.2f}x (quartiles "
            f"{r['q25']:.2f}-{r['q75']:.2f}, {r['pairs']} pairs), rounds "
            f"{min(r['rounds']):.2f}-{max(r['rounds']):.2f}")


if __name__ == "__main__":
    main()
