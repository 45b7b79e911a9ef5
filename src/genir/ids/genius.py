"""`GeniusTokenizer`: GENIUS' modality-decoupled semantic quantization (Kim et al.,
"GENIUS: A Generative Framework for Universal Multimodal Search", sec. 4.2, eq. 3-8), and
its query augmentation (sec. 4.3.2, eq. 11).

A fusion module h(x, y) (sec. 4.2.1) turns each target's image part x and text part y into
one embedding z; a contrastive loss against instruction-bearing query embeddings (eq. 3)
shapes that space; residual quantization with EMA codebooks (eq. 4-7) turns z into M codes,
the first from a codebook of exactly 3 (image, text, image-text pair), the rest from K.
Total loss L_cl + β L_rq + γ L_mse (eq. 8).

How the first code comes to mean modality: as in the paper, nothing labels it during
training. The instructions in the queries say which modality the target has, so the
contrastive loss groups targets by modality, and the 3-code first level, k-means-initialized
on the first batch and EMA-updated, picks those groups up. After training the three codes are
renumbered (the best of the 3! permutations against the known modalities) so that code m
means modality m (0 image, 1 text, 2 image_text), and `modality_agreement` records how many
training targets' nearest first code equals their modality. `encode(emb, modality)` then
writes the known modality as the first code (column 0) and quantizes the residual it leaves,
so every ID starts with its modality even where the nearest first code would have disagreed.
That emergence
needs modality to be the dominant structure of the fused space at the first batch (as CLIP's
modality gap makes it); where it is not, `modality_codes="given"` (ours, not the paper's)
initializes and EMA-updates code m with the targets of modality m instead.

Inputs: an embedding array of shape (N, D) is placed into the fusion's image slot (image
items), text slot (text items) or both (image-text items, whose vector already sums the two
towers, GENIUS sec. 4.1), with zeros in the empty slot, as the GENIUS code masks missing
parts; an (N, 2, D) array gives the [image, text] parts explicitly. A query given as (N, D)
goes into both slots. z is L2-normalised before quantization, as in the GENIUS code (eq. 3
compares by cosine anyway); codes and `decode` live in that fused space.

What this is not: the paper's encoders (CLIP ViT-L/14, frozen) or its decoder; queries and
targets are given as embeddings. `genius_loss`, `contrastive_loss` and `augment_queries` are
pure functions, testable on tiny tensors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genir.ids.base import Side
from genir.ids.ema import EMAResidualQuantizer
from genir.ids.rq import RQConfig

MODALITIES = ("image", "text", "image_text")  # first-level code m means MODALITIES[m]
AUGMENT_MODES = ("sample", "dimension")
MODALITY_CODES = ("learned", "given")


@dataclass
class GeniusConfig(RQConfig):
    # RQ fields: num_levels = ID length M including the modality level (paper: a 3-code level
    # plus 9 levels of 4096); codebook_size = K of levels 2..M; kmeans_iters for the
    # first-batch k-means init; seed for init, batches and network weights
    hidden_dim: int = 512         # fusion MLP width (paper: not given)
    temperature: float = 0.01     # eq. (3) τ (paper sec. 5.2)
    beta: float = 100.0           # eq. (8) weight on L_rq (paper: 100)
    gamma: float = 100.0          # eq. (8) weight on L_mse (paper: 100)
    ema_decay: float = 0.99       # EMA codebooks, VQ-VAE-2 [41] (the GENIUS code uses 0.9)
    ema_eps: float = 1e-5         # Laplace smoothing of the EMA cluster sizes (VQ-VAE-2)
    dead_threshold: float = 0.5   # levels >= 2: re-seed a code whose EMA hits per batch fall below
    #                               (1e-3 left 149 distinct IDs for 19k universal items: codes that
    #                               died early never came back; 0.5 gave 13.5k, see docs/universal.md)
    steps: int = 2000             # optimiser steps (paper: 20 epochs)
    batch_size: int = 256         # paper: 256
    lr: float = 1e-4              # paper: AdamW, 1e-4
    weight_decay: float = 0.01    # AdamW default (paper: not given)
    modality_codes: str = "learned"  # "learned": level 1 picks the nearest of 3 codes and the
    #                                  modality grouping must emerge (paper); "given": level 1 is
    #                                  initialized and EMA-updated with each target's known modality

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.modality_codes not in MODALITY_CODES:
            raise ValueError(f"unknown modality_codes {self.modality_codes!r}; choose one of "
                             f"{', '.join(MODALITY_CODES)}")
        if self.steps < 0 or self.batch_size < 2:
            raise ValueError("steps must be >= 0 and batch_size >= 2 (in-batch negatives)")
        if self.temperature <= 0 or self.hidden_dim < 1:
            raise ValueError("temperature must be > 0 and hidden_dim >= 1")

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """(3, K, ..., K): the modality level, then num_levels - 1 semantic levels."""
        return (len(MODALITIES),) + (self.codebook_size,) * (self.num_levels - 1)

    @classmethod
    def from_rq(cls, config: RQConfig) -> GeniusConfig:
        """A GeniusConfig with `config`'s RQ fields (and GENIUS defaults for the rest)."""
        if isinstance(config, GeniusConfig):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(RQConfig)})


class Fusion(nn.Module):
    """GENIUS sec. 4.2.1: h(x, y) = λ·x + (1 - λ)·y + MLP([x; y]), λ = sigmoid(MLP_λ([x; y])).

    The MLP's last layer starts at zero (ours; the paper gives no init), so h starts as the
    gated mix of the encoder's vectors and the first-batch k-means sees the encoder's geometry
    rather than a random network's."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        out = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.ReLU(), out)
        self.gate = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1),
                                  nn.Sigmoid())
        self.dim = dim

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y (B, D) image and text parts -> (B, D)."""
        xy = torch.cat([x, y], 1)
        lam = self.gate(xy)  # (B, 1)
        return lam * x + (1 - lam) * y + self.mlp(xy)


def contrastive_loss(zq: torch.Tensor, zc: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """GENIUS eq. (3): -log softmax over in-batch candidates of <z_q, z_c> / τ, cosine
    similarity, query i's positive is candidate i. (B, D), (B, D) -> ()."""
    logits = F.normalize(zq, dim=1) @ F.normalize(zc, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(zq.shape[0], device=zq.device))


class GeniusLoss(NamedTuple):
    loss: torch.Tensor  # () eq. (8), differentiable
    cl: torch.Tensor    # () L_cl, detached
    rq: torch.Tensor    # () L_rq, detached
    mse: torch.Tensor   # () L_mse, detached


def genius_loss(zq: torch.Tensor, zc: torch.Tensor, zq_hat: torch.Tensor, zc_hat: torch.Tensor,
                rq_loss: torch.Tensor, *, temperature: float = 0.01, beta: float = 100.0,
                gamma: float = 100.0) -> GeniusLoss:
    """GENIUS eq. (8): L_cl(z_q, z_c) + β L_rq + γ ||ẑ_q - ẑ_c||². zq, zc, zq_hat, zc_hat
    (B, D); rq_loss () is eq. (7) from the quantizer. ||.||² is the per-element mean (the
    paper calls it an MSE loss; the GENIUS code uses that reduction with γ = 100)."""
    cl = contrastive_loss(zq, zc, temperature)
    mse = (zq_hat - zc_hat).square().mean()
    loss = cl + beta * rq_loss + gamma * mse
    return GeniusLoss(loss, cl.detach(), rq_loss.detach(), mse.detach())


def augment_queries(zq: torch.Tensor, zc: torch.Tensor, alpha: float = 2.0, mode: str = "sample",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """GENIUS query augmentation: (B, D) query and target embeddings -> (B, D) mixtures.

    "sample" (eq. 11, the paper): z'_q = μ·z_q + (1 - μ)·z_c, one μ ~ Beta(α, α) per row.
    "dimension" (the public GENIUS code): z'_q = sqrt(μ)·z_q + sqrt(1 - μ)·z_c with an
    independent μ ~ Beta(α, α) per row and dimension; that code L2-normalises the result
    before the prefix MLP, which is left to the caller here.
    Draws come from `generator` (the global torch generator when None).
    """
    if zq.shape != zc.shape or zq.ndim != 2:
        raise ValueError(f"zq and zc must both be (B, D), got {tuple(zq.shape)} and {tuple(zc.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; choose one of {', '.join(AUGMENT_MODES)}")
    shape = (zq.shape[0], 1) if mode == "sample" else tuple(zq.shape)
    # torch's Beta sampler takes no generator: draw a seed from it and sample with numpy
    seed = int(torch.randint(2**62, (1,), generator=generator))
    mu = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=shape))
    mu = mu.to(device=zq.device, dtype=zq.dtype)
    if mode == "sample":
        return mu * zq + (1 - mu) * zc
    return mu.sqrt() * zq + (1 - mu).sqrt() * zc


class GeniusTokenizer:
    """tok.fit(target_emb, modality, query_emb); ids = tok.encode(emb, modality);
    rec = tok.decode(ids) (fused space). modality: (N,) ints, 0 image, 1 text, 2 image_text."""

    fit_needs: tuple[str, ...] = ("modality",)
    encode_needs: tuple[str, ...] = ("modality",)

    def __init__(self, config: RQConfig | None = None) -> None:
        self.config = GeniusConfig.from_rq(config or GeniusConfig())
        self.fusion: Fusion | None = None
        self.rq: EMAResidualQuantizer | None = None
        self.modality_agreement: float | None = None  # fit set: nearest first code == modality
        self.history: list[dict[str, float]] = []     # loss terms every 50 steps

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    @property
    def reseeds(self) -> list[int]:
        return self.rq.reseeds if self.rq is not None else []

    @property
    def is_fitted(self) -> bool:
        return self.fusion is not None and self.rq is not None

    def fit(self, target_emb: np.ndarray | torch.Tensor, modality: np.ndarray | torch.Tensor | None = None,
            query_emb: np.ndarray | torch.Tensor | None = None, *,
            side: Side | None = None) -> GeniusTokenizer:
        """target_emb (N, D) or (N, 2, D), modality (N,), query_emb (N, D) or (N, 2, D) with
        row i an instruction-bearing query whose target is row i -> self.

        side: side.modality per item, and side.pairs = (queries (P, D), target rows (P,)):
        the targets are then `target_emb[rows]` with their modalities.

        Without queries each target is its own query: L_cl becomes in-batch instance
        discrimination and L_mse vanishes (not the paper's setting, which always has queries).
        """
        if side is not None and modality is None:
            modality = side.modality
            if side.pairs is not None and modality is not None:
                query_emb, rows = side.pairs
                rows = np.asarray(rows, dtype=np.int64)
                target_emb = np.asarray(target_emb)[rows]
                modality = np.asarray(modality)[rows]
        if modality is None:
            raise ValueError("GeniusTokenizer.fit needs each target's modality: fit(emb, modality) with "
                             "0 image, 1 text, 2 image_text (the first code of every ID)")
        target_x, target_y = _slots(target_emb, modality)
        modality_t = _modalities(modality, target_x.shape[0])
        if query_emb is None:
            query_x, query_y = target_x, target_y
        else:
            query_x, query_y = _slots(query_emb, None)
            if query_x.shape != target_x.shape:
                raise ValueError(f"queries {tuple(query_x.shape)} and targets {tuple(target_x.shape)} "
                                 "must pair row by row")
        cfg = self.config
        num_items, dim = target_x.shape
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left as it was
            torch.manual_seed(cfg.seed)
            self.fusion = Fusion(dim, cfg.hidden_dim)
        self.rq = EMAResidualQuantizer(
            dim, cfg.codebook_sizes, decay=cfg.ema_decay, eps=cfg.ema_eps,
            # never re-seed a modality code: its meaning is fixed once training has grouped them
            dead_thresholds=[0.0] + [cfg.dead_threshold] * (cfg.num_levels - 1),
            kmeans_iters=cfg.kmeans_iters, seed=cfg.seed)
        optimizer = torch.optim.AdamW(self.fusion.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)
        batch_size = min(cfg.batch_size, num_items)
        order, cursor = torch.randperm(num_items, generator=generator), 0
        self.history = []
        self.fusion.train()
        for step in range(cfg.steps):
            if cursor + batch_size > num_items:
                order, cursor = torch.randperm(num_items, generator=generator), 0
            batch = order[cursor:cursor + batch_size]
            cursor += batch_size
            zc = F.normalize(self.fusion(target_x[batch], target_y[batch]), dim=1)
            zq = F.normalize(self.fusion(query_x[batch], query_y[batch]), dim=1)
            # the first batch k-means-initializes every level; EMA steps come from targets only
            # (the codebooks index targets); queries are quantized for L_mse and eq. (7)
            given = modality_t[batch] if cfg.modality_codes == "given" else None
            zc_hat, _, rq_c = self.rq(zc, first_codes=given, update=True)
            zq_hat, _, rq_q = self.rq(zq, update=False)
            out = genius_loss(zq, zc, zq_hat, zc_hat, rq_c + rq_q, temperature=cfg.temperature,
                              beta=cfg.beta, gamma=cfg.gamma)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == cfg.steps - 1:
                self.history.append({"step": step, "loss": float(out.loss.detach()), "cl": float(out.cl),
                                     "rq": float(out.rq), "mse": float(out.mse)})
        self.fusion.eval()
        self.rq.eval()
        if cfg.steps == 0:  # no training batch: initialize the codebooks on the fused targets
            with torch.no_grad():
                given = modality_t if cfg.modality_codes == "given" else None
                self.rq(self._fuse(target_x, target_y), first_codes=given, update=True)
        self._number_modality_codes(self._fuse(target_x, target_y), modality_t,
                                    renumber=cfg.modality_codes == "learned")
        return self

    def embed(self, emb: np.ndarray | torch.Tensor,
              modality: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        """(N, D) or (N, 2, D) -> (N, D) fused, L2-normalised z (what gets quantized)."""
        self._check_fitted()
        return self._fuse(*_slots(emb, modality))

    def assign_modality(self, emb: np.ndarray | torch.Tensor,
                        modality: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """(N,) int64: the nearest first-level code, i.e. the modality the quantizer itself
        reads off z (modality is needed only to place (N, D) rows into the fusion's slots)."""
        assert self.rq is not None
        return self.rq.books[0].assign(self.embed(emb, modality)).numpy()

    def encode(self, emb: np.ndarray | torch.Tensor, modality: np.ndarray | torch.Tensor | None = None,
               *, side: Side | None = None) -> np.ndarray:
        """(N, D) or (N, 2, D), (N,) modality (or side.modality) -> (N, M) int64; column 0 is
        the modality."""
        if modality is None and side is not None:
            modality = side.modality
        if modality is None:
            raise ValueError("GeniusTokenizer.encode needs each item's modality")
        z = self.embed(emb, modality)
        assert self.rq is not None
        with torch.no_grad():
            codes = self.rq(z, first_codes=_modalities(modality, z.shape[0]), update=False).codes
        return codes.numpy()

    def decode(self, codes: np.ndarray | torch.Tensor, num_levels: int | None = None) -> np.ndarray:
        """(N, M) codes -> (N, D) ẑ from the first `num_levels` levels, in the fused space."""
        self._check_fitted()
        assert self.rq is not None
        return self.rq.decode(torch.as_tensor(np.asarray(codes), dtype=torch.int64), num_levels).numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        assert self.fusion is not None and self.rq is not None
        state = {f"fusion.{k}": v.detach().contiguous() for k, v in self.fusion.state_dict().items()}
        state.update({f"rq.{k}": v.detach().contiguous() for k, v in self.rq.state_dict().items()})
        return state

    @classmethod
    def from_state(cls, config: RQConfig, state: dict[str, torch.Tensor]) -> GeniusTokenizer:
        """Rebuild from `state_dict()`; widths are read from the tensors."""
        hidden_dim, double_dim = state["fusion.mlp.0.weight"].shape
        tok = cls(replace(GeniusConfig.from_rq(config), hidden_dim=int(hidden_dim)))
        cfg = tok.config
        tok.fusion = Fusion(int(double_dim) // 2, cfg.hidden_dim)
        tok.fusion.load_state_dict({k[len("fusion."):]: v for k, v in state.items()
                                    if k.startswith("fusion.")})
        tok.rq = EMAResidualQuantizer(int(double_dim) // 2, cfg.codebook_sizes, decay=cfg.ema_decay,
                                      eps=cfg.ema_eps, kmeans_iters=cfg.kmeans_iters, seed=cfg.seed)
        tok.rq.load_state_dict({k[len("rq."):]: v for k, v in state.items() if k.startswith("rq.")})
        tok.fusion.eval()
        tok.rq.eval()
        return tok

    def _fuse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.fusion is not None
        width = self.fusion.dim
        if x.shape[1] != width:
            raise ValueError(f"embedding width {x.shape[1]} does not match the tokenizer's {width}")
        with torch.no_grad():
            return F.normalize(self.fusion(x, y), dim=1)

    @torch.no_grad()
    def _number_modality_codes(self, z: torch.Tensor, modality: torch.Tensor, *, renumber: bool) -> None:
        """Renumber the 3 first-level codes so that code m is the one most targets of modality m
        reach (best of the 3! permutations; skipped when codes were trained as the given
        modality), and record how many targets' nearest first code is their modality."""
        assert self.rq is not None
        first = self.rq.books[0]
        nearest = first.assign(z)
        num = len(MODALITIES)
        confusion = torch.zeros(num, num, dtype=torch.int64)  # [modality, code]
        confusion.index_put_((modality, nearest), torch.ones_like(nearest), accumulate=True)
        perm = tuple(range(num))
        if renumber:
            perm = max(itertools.permutations(range(num)),
                       key=lambda p: int(sum(confusion[m, p[m]] for m in range(num))))
            index = torch.tensor(perm)  # new code m <- old code perm[m]
            for name in ("centers", "cluster_size", "embed_sum"):
                buffer = getattr(first, name)
                buffer.copy_(buffer[index])
        self.modality_agreement = float(sum(confusion[m, perm[m]] for m in range(num))) / max(1, len(z))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer is not fitted: call fit(target_emb, modality, query_emb) first")


def _modalities(modality: np.ndarray | torch.Tensor, num_items: int) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(modality), dtype=torch.int64).flatten()
    if m.shape[0] != num_items:
        raise ValueError(f"{m.shape[0]} modalities for {num_items} embeddings")
    if len(m) and (m.min() < 0 or m.max() >= len(MODALITIES)):
        raise ValueError(f"modality values must be 0 ({MODALITIES[0]}), 1 ({MODALITIES[1]}) or "
                         f"2 ({MODALITIES[2]}), got {sorted(set(m.tolist()))}")
    return m


def _slots(emb: np.ndarray | torch.Tensor,
           modality: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) routed by modality (None: both slots), or (N, 2, D) -> image part, text part."""
    x = torch.as_tensor(np.asarray(emb, dtype=np.float32))
    if x.ndim not in (2, 3) or x.shape[0] == 0 or (x.ndim == 3 and x.shape[1] != 2):
        raise ValueError(f"expected a non-empty (N, D) or (N, 2, D) embedding array, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    if x.ndim == 3:
        return x[:, 0], x[:, 1]
    if modality is None:
        return x, x
    m = _modalities(modality, x.shape[0])
    has_image = (m != 1).float()[:, None]  # image (0) and image_text (2) fill the image slot
    has_text = (m != 0).float()[:, None]   # text (1) and image_text (2) fill the text slot
    return x * has_image, x * has_text
