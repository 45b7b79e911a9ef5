"""genir's search against the common way: HF `generate` with a prefix_allowed_tokens_fn.

A T5-small-sized decoder (6 layers, d=512, 8 heads, random weights) reads 30 prefix
embeddings as its encoder output and generates 4 codes (4 x 256 vocabulary) with
`num_beams`, constrained by a dict trie through `prefix_allowed_tokens_fn`: the set-up
public generative-retrieval code uses. genir runs the same N, beam and batch with its own
decoder at two sizes: the default, and one shaped like T5-small. Not a test; prints a table.

    .venv/bin/python benchmarks/hf_generate.py --n 100000 --batch 8 --beam 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from search_speed import warm_up  # same folder

from genir.decoder.model import T5_SMALL_SIZE, CodeDecoder, DecoderConfig
from genir.ids.rq import ResidualQuantizer, RQConfig
from genir.index import GenerativeIndex, IndexConfig
from genir.search.reference import allowed_tokens_fn, dict_trie


def hf_qps(unique_ids: np.ndarray, *, levels: int, codebook: int, batch: int, beam: int,
           num_queries: int) -> float:
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutput

    offset = 2  # 0 = pad / decoder start, 1 = eos
    cfg = T5Config(vocab_size=offset + levels * codebook, d_model=512, d_kv=64, d_ff=2048,
                   num_layers=6, num_decoder_layers=6, num_heads=8, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).eval()
    allowed = allowed_tokens_fn(dict_trie(unique_ids))

    def prefix_allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        codes = [int(t) - offset - lv * codebook for lv, t in enumerate(input_ids[1:].tolist())]
        if len(codes) >= levels:
            return [1]
        return [offset + len(codes) * codebook + c for c in allowed(codes)]

    prefix = torch.randn(num_queries, 30, 512)
    def run(sl: slice) -> None:
        enc = BaseModelOutput(last_hidden_state=prefix[sl])
        model.generate(encoder_outputs=enc, attention_mask=torch.ones(prefix[sl].shape[:2]),
                       num_beams=beam, num_return_sequences=min(beam, 10),
                       max_new_tokens=levels + 1, prefix_allowed_tokens_fn=prefix_allowed,
                       do_sample=False, early_stopping=True)

    with torch.inference_mode():
        run(slice(0, batch))  # warm-up
        t0 = time.perf_counter()
        for start in range(0, num_queries, batch):
            run(slice(start, start + batch))
    return num_queries / (time.perf_counter() - t0)


def genir_qps(codes: np.ndarray, emb: np.ndarray, cfg: DecoderConfig, *, batch: int, beam: int,
              num_queries: int, k: int) -> float:
    torch.manual_seed(0)
    tok = ResidualQuantizer(RQConfig(num_levels=codes.shape[1]))
    index = GenerativeIndex(tokenizer=tok, decoder=CodeDecoder(cfg), item_emb=emb, codes=codes,
                            item_ids=[str(i) for i in range(len(codes))], config=IndexConfig())
    q = emb[:num_queries]
    warm_up(lambda qs: index.search(qs, k, beam_size=beam), q[:batch])
    t0 = time.perf_counter()
    for start in range(0, num_queries, batch):
        index.search(q[start:start + batch], k, beam_size=beam)
    return num_queries / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beam", type=int, default=30)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--num-queries", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    codes = rng.integers(args.codebook_size, size=(args.n, args.levels))
    emb = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    unique_ids = np.unique(codes, axis=0)
    sizes = (args.codebook_size,) * args.levels
    k = min(10, args.beam)
    print(f"N={args.n:,}, batch {args.batch}, beam {args.beam}, ID {args.levels} x "
          f"{args.codebook_size}, {torch.get_num_threads()} threads")
    rows = {
        "HF generate + prefix_allowed_tokens_fn (T5-small decoder)": hf_qps(
            unique_ids, levels=args.levels, codebook=args.codebook_size, batch=args.batch,
            beam=args.beam, num_queries=args.num_queries),
        "genir, T5-small-sized decoder (d=512, 6 layers, 30 prefix)": genir_qps(
            codes, emb, DecoderConfig(query_dim=args.dim, codebook_sizes=sizes, **T5_SMALL_SIZE),
            batch=args.batch, beam=args.beam, num_queries=args.num_queries, k=k),
        "genir, default decoder (d=128, 2 layers, 4 prefix)": genir_qps(
            codes, emb, DecoderConfig(query_dim=args.dim, codebook_sizes=sizes),
            batch=args.batch, beam=args.beam, num_queries=args.num_queries, k=k),
    }
    base = next(iter(rows.values()))
    for name, qps in rows.items():
        print(f"  {name:<62} {qps:8.1f} q/s  ({qps / base:5.1f}x)")


if __name__ == "__main__":
    main()
