"""Tiny decoders and sessions shared by the decoder's and the beam search's tests."""

from __future__ import annotations

import numba
import torch

from genir.decoder.fused import FusedSession
from genir.decoder.model import CodeDecoder, DecoderConfig, DecoderSession


def tiny_decoder(sizes=(4, 3, 5), query_dim=6, seed=0, query_tokens=0) -> CodeDecoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(query_dim=query_dim, codebook_sizes=sizes, d_model=16, num_layers=2,
                        num_heads=2, num_prefix=3, dropout=0.0, query_tokens=query_tokens)
    model = CodeDecoder(cfg).eval()
    # sharpen the random model so scores are far from ties
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(8)
    return model


SESSIONS = ["torch", "fused", "fused-kernels", "fused-serial"]
# kind -> fuse_decoding's (parallel, one_call)
FUSED = {"fused": (True, True), "fused-kernels": (True, False), "fused-serial": (False, False)}


def make_session(model: CodeDecoder, queries: torch.Tensor, kind: str) -> DecoderSession:
    """A session of `kind` over `queries`: the torch one, as autograd-on code gets it, or
    the fused one, as inference-mode searches (the index's, AVG's discriminative loss) get it:
    a level in one compiled call on torch's threads ("fused", the default), torch's products
    with the row kernels between them ("fused-kernels"), those on one thread ("fused-serial")."""
    if kind == "torch":   # (under inference mode, asked for by name)
        session = model.session(queries) if torch.is_grad_enabled() else DecoderSession(
            model, queries)
        assert type(session) is DecoderSession
        return session
    previous = model.options.parallel, model.options.one_call
    parallel, one_call = FUSED[kind]
    model.fuse_decoding(parallel=parallel, one_call=one_call)
    try:
        with torch.inference_mode():
            session = model.session(queries)
    finally:
        model.fuse_decoding(parallel=previous[0], one_call=previous[1])
    assert type(session) is FusedSession
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    assert session.kernels.threads == (threads if parallel else 1)
    assert session.one_call == one_call
    return session


def token_queries(n: int, seed: int) -> torch.Tensor:
    """(n, 6) = 3 tokens of width 2; odd rows have their last token as padding (zeros)."""
    q = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    q[1::2, 4:] = 0
    return q


