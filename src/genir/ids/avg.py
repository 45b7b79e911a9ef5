"""`AVGTokenizer`: AVG's cross-modal aligned image tokenizer (Li et al., "Revolutionizing
Text-to-Image Retrieval as Autoregressive Token-to-Token Generation", sec. 3.1, eq. 2-6).

An image vector v_i is residual-quantized into M vokens (eq. 2); a shallow MLP decoder maps
the quantized vector ẑ^(M) back to v̂_i. Training minimises
L_recon = ||v_i - v̂_i||² (eq. 3) + L_commit = Σ_d ||v_i - sg(ẑ^(d))||² over all partial
sums (eq. 4) + L_align = ||v̂_i - v_t||², pulling the reconstruction toward the caption's
text vector (eq. 5); eq. (6) sums them. The codebook C is learned by gradient: ẑ^(M) is the
sum of the selected rows of C, so L_recon and L_align move those rows (no straight-through
is needed because v_i itself is fixed), and so the alignment changes which vokens an image
gets, which is what the paper's ablation credits it with.

`shared_codebook=True` is the paper's single visual codebook of N vokens used at every step;
False gives each level its own N codes. Either way each level has N choices.

What this is not: the paper also fine-tunes the visual and text encoders (eq. 1), so there
L_commit pulls v_i toward the codes; here the image and text vectors are frozen inputs and
L_commit is reported but carries no gradient. The paper initialises C at random; here it
starts from seeded k-means on the residuals. Codes, `encode` and `decode` are in the image
vector space. `avg_loss` is the pure objective, testable on tiny tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from genir.ids.base import Side
from genir.ids.kmeans import assign, kmeans
from genir.ids.rq import RQConfig, _as_tensor


@dataclass
class AVGConfig(RQConfig):
    # RQ fields: num_levels = voken length M (paper: 2-10); kmeans_iters, max_fit_points and
    # seed drive the k-means init; seed also drives batches and the decoder's weights
    codebook_size: int = 1024     # N vokens (paper's best: 1024)
    shared_codebook: bool = True  # one codebook C for all M steps (paper); False: one per level
    hidden_dim: int = 512         # decoder MLP width (paper: "shallow MLP", width not given)
    recon_weight: float = 1.0     # eq. (6) sums the three terms unweighted; 0 ablates a term
    commit_weight: float = 1.0
    align_weight: float = 1.0     # 0 = the paper's "w/o cross-modal alignment" ablation
    steps: int = 2000             # optimiser steps (paper: not given)
    batch_size: int = 2048        # paper: 2048 per GPU
    lr: float = 1e-4              # paper: 1e-4 (Adam)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0 or self.batch_size < 1 or self.hidden_dim < 1:
            raise ValueError("steps must be >= 0, batch_size and hidden_dim >= 1")
        if self.shared_codebook and self.codebook_size < self.num_levels:
            raise ValueError(f"a shared codebook needs at least one code per level: codebook_size "
                             f"{self.codebook_size} < num_levels {self.num_levels}")

    @classmethod
    def from_rq(cls, config: RQConfig) -> AVGConfig:
        """An AVGConfig with `config`'s RQ fields (and AVG defaults for the rest)."""
        if isinstance(config, AVGConfig):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(RQConfig)})


class AVGLoss(NamedTuple):
    loss: torch.Tensor    # () eq. (6), differentiable
    recon: torch.Tensor   # () eq. (3), detached
    commit: torch.Tensor  # () eq. (4), detached
    align: torch.Tensor   # () eq. (5), detached


def avg_loss(image_vec: torch.Tensor, text_vec: torch.Tensor, partial_sums: torch.Tensor,
             reconstruction: torch.Tensor, *, recon_weight: float = 1.0, commit_weight: float = 1.0,
             align_weight: float = 1.0) -> AVGLoss:
    """AVG eq. (3)-(6) on a batch, squared L2 norms averaged over the batch.
    image_vec v_i (B, D), text_vec v_t (B, D), partial_sums ẑ^(1..M) (B, M, D),
    reconstruction v̂_i = MLP(ẑ^(M)) (B, D)."""
    recon = (image_vec - reconstruction).square().sum(1).mean()                         # eq. (3)
    commit = (image_vec[:, None] - partial_sums.detach()).square().sum(2).sum(1).mean()  # eq. (4)
    align = (reconstruction - text_vec).square().sum(1).mean()                          # eq. (5)
    loss = recon_weight * recon + commit_weight * commit + align_weight * align         # eq. (6)
    return AVGLoss(loss, recon.detach(), commit.detach(), align.detach())


class _AVGNet(nn.Module):
    """Codebook(s) and the MLP decoder v̂ = ẑ + MLP(ẑ); the identity path (ours) and the
    zero-initialised last layer make the decoder start as the identity, so the k-means codes
    are not scrambled by a random decoder at step 0."""

    def __init__(self, codebooks: list[torch.Tensor], hidden_dim: int) -> None:
        super().__init__()
        dim = codebooks[0].shape[1]
        self.codebooks = nn.ParameterList(nn.Parameter(c.clone()) for c in codebooks)
        out = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.decoder = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), out)

    def codebook(self, level: int) -> torch.Tensor:
        return self.codebooks[0 if len(self.codebooks) == 1 else level]

    def quantize(self, v: torch.Tensor, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """v (B, D) -> codes (B, M) by greedy RQ (eq. 2), partial sums ẑ^(1..M) (B, M, D)
        that carry gradient to the selected codebook rows."""
        residual = v.detach()
        codes, vokens = [], []
        for level in range(num_levels):
            book = self.codebook(level)
            code = assign(residual, book.detach())
            voken = book[code]
            residual = residual - voken.detach()
            codes.append(code)
            vokens.append(voken)
        return torch.stack(codes, 1), torch.stack(vokens, 1).cumsum(1)

    def decode(self, z_hat: torch.Tensor) -> torch.Tensor:
        return z_hat + self.decoder(z_hat)


class AVGTokenizer:
    """tok.fit(image_emb, text_emb); ids = tok.encode(image_emb); rec = tok.decode(ids)."""

    fit_needs: tuple[str, ...] = ("text_emb",)
    encode_needs: tuple[str, ...] = ()

    def __init__(self, config: RQConfig | None = None) -> None:
        self.config = AVGConfig.from_rq(config or AVGConfig())
        self.net: _AVGNet | None = None
        self.reseeds: list[int] = []                  # k-means dead-code re-seeds per level at init
        self.history: list[dict[str, float]] = []     # loss terms every 50 steps

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    @property
    def codebooks(self) -> list[torch.Tensor]:
        """One (N, D) tensor if shared, else M of them."""
        self._check_fitted()
        assert self.net is not None
        return [c.detach() for c in self.net.codebooks]

    @property
    def is_fitted(self) -> bool:
        return self.net is not None

    def fit(self, image_emb: np.ndarray | torch.Tensor,
            text_emb: np.ndarray | torch.Tensor | None = None, *,
            side: Side | None = None) -> AVGTokenizer:
        """image_emb (N, D), text_emb (N, D) (or side.text_emb) with row i a caption of
        image i -> self."""
        if text_emb is None and side is not None:
            text_emb = side.text_emb
        if text_emb is None:
            raise ValueError("AVGTokenizer.fit needs caption vectors: fit(image_emb, text_emb), row i "
                             "a caption of image i (AVG aligns each image's codes with its caption)")
        v, t = _as_tensor(image_emb), _as_tensor(text_emb)
        if v.shape != t.shape:
            raise ValueError(f"image {tuple(v.shape)} and text {tuple(t.shape)} vectors must pair row by row")
        cfg = self.config
        codebooks, self.reseeds = self._init_codebooks(v)
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left as it was
            torch.manual_seed(cfg.seed)
            self.net = _AVGNet(codebooks, cfg.hidden_dim)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        batch_size = min(cfg.batch_size, v.shape[0])
        order, cursor = torch.randperm(v.shape[0], generator=generator), 0
        self.history = []
        for step in range(cfg.steps):
            if cursor + batch_size > v.shape[0]:
                order, cursor = torch.randperm(v.shape[0], generator=generator), 0
            batch = order[cursor:cursor + batch_size]
            cursor += batch_size
            _, partial_sums = self.net.quantize(v[batch], cfg.num_levels)
            reconstruction = self.net.decode(partial_sums[:, -1])
            out = avg_loss(v[batch], t[batch], partial_sums, reconstruction, recon_weight=cfg.recon_weight,
                           commit_weight=cfg.commit_weight, align_weight=cfg.align_weight)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == cfg.steps - 1:
                self.history.append({"step": step, "loss": float(out.loss.detach()),
                                     "recon": float(out.recon), "commit": float(out.commit),
                                     "align": float(out.align)})
        return self

    def encode(self, image_emb: np.ndarray | torch.Tensor, *, side: Side | None = None) -> np.ndarray:
        """(N, D) -> (N, M) int64 greedy RQ codes (eq. 2), each in [0, N)."""
        self._check_fitted()
        assert self.net is not None
        v = self._check_width(_as_tensor(image_emb))
        with torch.no_grad():
            return self.net.quantize(v, self.config.num_levels)[0].numpy()

    def decode(self, codes: np.ndarray | torch.Tensor, num_levels: int | None = None) -> np.ndarray:
        """(N, M) codes -> (N, D) v̂ = MLP(ẑ^(d)) with d = num_levels (default M), eq. (3)."""
        self._check_fitted()
        assert self.net is not None
        codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        levels = self.config.num_levels if num_levels is None else num_levels
        with torch.no_grad():
            z_hat = torch.zeros(codes_t.shape[0], self.net.codebook(0).shape[1])
            for level in range(levels):
                z_hat += self.net.codebook(level)[codes_t[:, level]]
            return self.net.decode(z_hat).numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        assert self.net is not None
        books = self.codebooks
        state = ({"codebook": books[0].contiguous()} if self.config.shared_codebook
                 else {f"codebook.{i}": c.contiguous() for i, c in enumerate(books)})
        state.update({f"decoder.{k}": v.detach().contiguous()
                      for k, v in self.net.decoder.state_dict().items()})
        return state

    @classmethod
    def from_state(cls, config: RQConfig, state: dict[str, torch.Tensor]) -> AVGTokenizer:
        """Rebuild from `state_dict()`; sharing and widths are read from the tensors."""
        shared = "codebook" in state
        base = AVGConfig.from_rq(config)
        books = ([state["codebook"].float()] if shared
                 else [state[f"codebook.{i}"].float() for i in range(base.num_levels)])
        hidden_dim = int(state["decoder.0.weight"].shape[0])
        tok = cls(replace(base, shared_codebook=shared, codebook_size=int(books[0].shape[0]),
                          hidden_dim=hidden_dim))
        tok.net = _AVGNet(books, hidden_dim)
        tok.net.decoder.load_state_dict({k[len("decoder."):]: v.float() for k, v in state.items()
                                         if k.startswith("decoder.")})
        return tok

    def _init_codebooks(self, v: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
        """Seeded k-means, level by level on the residuals. Shared: level l contributes its
        share of the N rows (N // M, the remainder to the first levels) and every level then
        searches all N; per level: N rows each."""
        cfg = self.config
        m, n = cfg.num_levels, cfg.codebook_size
        sizes = ([n // m + (1 if level < n % m else 0) for level in range(m)] if cfg.shared_codebook
                 else [n] * m)
        residual, books, reseeds = v, [], []
        for level, size in enumerate(sizes):
            centers, dead = kmeans(residual, size, iters=cfg.kmeans_iters, seed=cfg.seed + level,
                                   max_points=cfg.max_fit_points)
            books.append(centers)
            reseeds.append(dead)
            residual = residual - centers[assign(residual, centers)]
        return ([torch.cat(books)] if cfg.shared_codebook else books), reseeds

    def _check_width(self, v: torch.Tensor) -> torch.Tensor:
        assert self.net is not None
        width = self.net.codebook(0).shape[1]
        if v.shape[1] != width:
            raise ValueError(f"embedding width {v.shape[1]} does not match the tokenizer's {width}")
        return v

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer is not fitted: call fit(image_emb, text_emb) first")
