"""Search speed: genir's trie-constrained beam search against the slow reference and FAISS.

Not a test: prints a table, writes JSON (and a PNG plot with matplotlib). Synthetic codes
and embeddings (speed does not depend on what the codes mean), a randomly initialised
decoder of the default size, one process, so every figure is measured side by side.

    .venv/bin/python benchmarks/search_speed.py --sizes 10000 100000 1000000

Columns: queries/s over all measured queries, p50/p95 latency of one search call (a batch).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genir.decoder.model import T5_SMALL_SIZE, CodeDecoder, DecoderConfig
from genir.ids.rq import ResidualQuantizer, RQConfig
from genir.ids.table import IDTable
from genir.index import GenerativeIndex, IndexConfig
from genir.search.reference import reference_beam_search
from genir.search.trie import CodeTrie


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_up(search, queries: np.ndarray) -> None:
    """Two untimed searches: the first after new weights runs them unpacked, the second
    packs them for MKL (`CodeDecoder.fused_weights`), as every later search reads them."""
    for _ in range(2):
        search(queries)


def timed_batches(fn, queries: np.ndarray, batch: int) -> dict[str, float]:
    warm_up(fn, queries[:batch])
    lat = []
    for start in range(0, len(queries) - batch + 1, batch):
        t0 = time.perf_counter()
        fn(queries[start:start + batch])
        lat.append(time.perf_counter() - t0)
    total = sum(lat)
    return {"qps": len(lat) * batch / total, "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p95_ms": 1e3 * float(np.percentile(lat, 95))}


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def decoder_gemms(cfg: DecoderConfig, beam: int, batch: int = 1) -> list[tuple[int, int, int]]:
    """The (rows, in, out) matrix products of one batch's search, in the order the decoder
    runs them: the query memory and its cross-attention keys/values once, then per level
    each block's fused self-attention q/k/v, its output, cross-attention q and output, the
    MLP's two layers, and the level's output head (level 0 on the BOS row only)."""
    d, p, r = cfg.d_model, cfg.num_prefix, cfg.mlp_ratio
    out = [(batch, cfg.query_dim, d), (batch, d, p * d)]
    out += [(batch * p, d, 2 * d)] * cfg.num_layers
    for level, k in enumerate(cfg.codebook_sizes):
        rows = batch * (1 if level == 0 else beam)
        out += [(rows, d, 3 * d), (rows, d, d), (rows, d, d), (rows, d, d),
                (rows, d, r * d), (rows, r * d, d)] * cfg.num_layers
        out.append((rows, d, k))
    return out


def decoder_flops_per_query(cfg: DecoderConfig, beam: int) -> float:
    """Multiply-adds x 2 of one query's search: prefix memory once, then M levels x beams
    (attention scores over the few memory and cache positions are left out: < 1%)."""
    return float(sum(2 * m * k * n for m, k, n in decoder_gemms(cfg, beam)))


def bare_products(shapes: list[tuple[int, int, int]]) -> Callable[[], float]:
    """A function that runs the (rows, in, out) `shapes` as bare matrix products back to back
    (random inputs, outputs preallocated; no bias, activation or attention) and returns the
    seconds it took."""
    mats = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in shapes]

    def run() -> float:
        t0 = time.perf_counter()
        for a, b, out in mats:
            torch.mm(a, b, out=out)
        return time.perf_counter() - t0
    return run


def gemm_gflops(shapes: list[tuple[int, int, int]], reps: int = 20) -> float:
    """GFLOP/s of `shapes` run back to back as bare matrix products (`bare_products`): the
    machine's limit for the decoder's own matrices, the fastest of `reps`."""
    run = bare_products(shapes)
    flops = sum(2 * m * k * n for m, k, n in shapes)
    return flops / min(run() for _ in range(reps + 2)) / 1e9


def synthetic_index(n: int, *, dim: int, levels: int, codebook_size: int, decoder: CodeDecoder,
                    rng: np.random.Generator) -> GenerativeIndex:
    """N random unit embeddings and random codes (levels x codebook_size) behind `decoder`;
    draws the embeddings, then the codes, from `rng` (search_split.py uses it too)."""
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codes = rng.integers(codebook_size, size=(n, levels))
    tok = ResidualQuantizer(RQConfig(num_levels=levels, codebook_size=codebook_size))
    return GenerativeIndex(tokenizer=tok, decoder=decoder, item_emb=emb, codes=codes,
                           item_ids=[str(i) for i in range(n)], config=IndexConfig())


def faiss_indexes(emb: np.ndarray, hnsw_max: int):
    import faiss

    n, dim = emb.shape
    out = {}
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(emb)
    out["faiss flat"] = (flat, time.perf_counter() - t0)
    t0 = time.perf_counter()
    nlist = int(min(4096, 4 * np.sqrt(n)))
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, 32, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    ivf.train(emb[rng.choice(n, min(n, 40 * nlist), replace=False)])
    ivf.add(emb)
    ivf.nprobe = 16
    out["faiss ivf-pq"] = (ivf, time.perf_counter() - t0)
    if n <= hnsw_max:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 64
        hnsw.add(emb)
        out["faiss hnsw"] = (hnsw, time.perf_counter() - t0)
    return out


DECODER_SIZES: dict[str, dict[str, int]] = {"default": {}, "t5-small": T5_SMALL_SIZE}


def common_args(doc: str, *, sizes: list[int], batches: list[int], num_queries: int,
                out: str) -> argparse.ArgumentParser:
    """The options both speed benchmarks take (this one and search_split.py)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=sizes)
    ap.add_argument("--beams", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--batches", type=int, nargs="+", default=batches)
    ap.add_argument("--num-queries", type=int, default=num_queries)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--compile", action="store_true",
                    help="decode through torch.compile (CodeDecoder.compile_decoding); the "
                         "warm-up searches compile")
    ap.add_argument("--session", choices=["fused", "fused-kernels", "fused-serial", "torch"],
                    default="fused",
                    help="the decoding session when not compiled: the fused CPU one (the "
                         "default, genir.decoder.fused: a level in one compiled call where "
                         "torch ships MKL; fused-kernels: torch's products with the compiled "
                         "row loops between them; fused-serial: those loops on one thread) or "
                         "the torch one")
    ap.add_argument("--decoder", choices=sorted(DECODER_SIZES), default="default",
                    help="decoder shape: the default (d 128, 2 layers, 4 prefix vectors) or "
                         "T5-small's (d 512, 6 layers, 8 heads, 30 prefix vectors)")
    return ap


def setup(args: argparse.Namespace
          ) -> tuple[DecoderConfig, CodeDecoder, np.ndarray, float, np.random.Generator]:
    """Seeded random decoder (--decoder), unit queries and the machine's matmul rate.
    -> (config, decoder, queries, GFLOP/s, the rng the synthetic corpora draw from next)"""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = DecoderConfig(query_dim=args.dim, codebook_sizes=(args.codebook_size,) * args.levels,
                        **DECODER_SIZES[args.decoder])
    decoder = (CodeDecoder(cfg).eval().compile_decoding(args.compile)
               .fuse_decoding(args.session != "torch", parallel=args.session != "fused-serial",
                              one_call=args.session == "fused"))
    gflops = matmul_gflops()
    queries = rng.normal(size=(args.num_queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return cfg, decoder, queries, gflops, rng


def main() -> None:
    ap = common_args(__doc__, sizes=[10_000, 100_000, 1_000_000], batches=[1, 32],
                     num_queries=128, out="docs/benchmarks/search_speed.json")
    ap.add_argument("--reference-queries", type=int, default=4)
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this N")
    args = ap.parse_args()
    cfg, decoder, queries, gflops, rng = setup(args)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"matmul {gflops:.0f} GFLOP/s, decoder d={cfg.d_model} L={cfg.num_layers} "
          f"P={cfg.num_prefix}, ID {args.levels} x {args.codebook_size}")
    for n in args.sizes:
        index = synthetic_index(n, dim=args.dim, levels=args.levels,
                                codebook_size=args.codebook_size, decoder=decoder, rng=rng)
        emb = index.item_emb
        t0 = time.perf_counter()   # what the index built: its ID table and trie, timed alone
        table = IDTable.from_codes(index.codes)
        trie = CodeTrie.from_unique_ids(table.unique_ids)
        build_s = time.perf_counter() - t0
        trie_mb = trie.nbytes() / 2**20
        table_mb = (table.items.nbytes + table.offsets.nbytes + table.unique_ids.nbytes) / 2**20
        print(f"\nN={n:,}: table+trie built in {build_s:.2f} s; trie {trie_mb:.1f} MB, "
              f"ID table {table_mb:.1f} MB")
        base = {"N": n, "trie_build_s": build_s, "trie_mb": trie_mb, "table_mb": table_mb}
        for beam in args.beams:
            flops = decoder_flops_per_query(cfg, beam)
            for batch in args.batches:
                nq = args.num_queries if batch > 1 else max(8, args.num_queries // 8)
                for rerank in (False, True):
                    r = timed_batches(lambda q, b=beam, rr=rerank, ix=index: ix.search(
                        q, args.k, beam_size=b, rerank=rr), queries[:nq], batch)
                    name = "genir+rerank" if rerank else "genir"
                    frac = flops * r["qps"] / (gflops * 1e9)
                    rows.append({**base, "method": name, "beam": beam, "batch": batch, **r,
                                 "gflop_per_query": flops / 1e9, "fraction_of_matmul_peak": frac})
                    print(f"  {name:<13} beam {beam:>2} batch {batch:>2}: {r['qps']:8.1f} q/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  "
                          f"({flops / 1e6:.1f} MFLOP/query, {100 * frac:.1f}% of matmul peak)")
            if args.reference_queries and n <= 100_000:
                t0 = time.perf_counter()
                reference_beam_search(decoder, torch.from_numpy(queries[:args.reference_queries]),
                                      table.unique_ids, beam_size=beam)
                qps = args.reference_queries / (time.perf_counter() - t0)
                rows.append({**base, "method": "slow reference", "beam": beam, "batch": 1,
                             "qps": qps})
                print(f"  {'slow reference':<13} beam {beam:>2} batch  1: {qps:8.1f} q/s")
        for name, (idx, build) in faiss_indexes(emb, args.hnsw_max).items():
            for batch in args.batches:
                nq = args.num_queries if batch > 1 else max(8, args.num_queries // 8)
                r = timed_batches(lambda q, i=idx: i.search(q, args.k), queries[:nq], batch)
                rows.append({**base, "method": name, "batch": batch, "build_s": build, **r})
                print(f"  {name:<13}         batch {batch:>2}: {r['qps']:8.1f} q/s  "
                      f"p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  (built {build:.1f} s)")
    print(f"\npeak RSS {peak_rss_mb():.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(),
            "matmul_gflops": gflops, "peak_rss_mb": peak_rss_mb(), "args": vars(args)}
    args.out.write_text(json.dumps({"meta": {**meta, "args": {k: str(v) for k, v in
                                                               vars(args).items()}},
                                    "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    plot(rows, args.out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    batch = max(r["batch"] for r in rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["batch"] != batch or r["method"] == "slow reference":
            continue
        label = r["method"] + (f" beam {r['beam']}" if "beam" in r else "")
        series.setdefault(label, []).append((r["N"], r["qps"]))
    for label, pts in sorted(series.items()):
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="corpus size N", ylabel="queries/s",
           title=f"search speed, batch {batch}, 2-core CPU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
