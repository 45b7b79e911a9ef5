"""EMA codebooks: vector quantization whose codes follow the data by exponential moving
averages instead of gradients (VQ-VAE appendix A.1, VQ-VAE-2 [GENIUS ref. 41]).

`EMACodebook` is one codebook: `init_from(x)` (seeded k-means on the first batch),
`assign(x)` (nearest code), `update(x, codes)` (one EMA step, Laplace-smoothed cluster
sizes, dead codes re-seeded from the batch and counted). `EMAResidualQuantizer` stacks
them into residual quantization with a straight-through output, the quantizer GENIUS
trains (GENIUS eq. 4-7); its first level may have its own size (3 for GENIUS' modality).

What this is not: a gradient-trained codebook (see `genir.ids.avg`), or a device-placement
layer: the k-means and nearest-code search run on CPU tensors, like `genir.ids.kmeans`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from genir.ids.kmeans import assign, kmeans


class EMACodebook(nn.Module):
    """One (K, D) codebook updated by EMA. Buffers: centers e_k, cluster_size N_k (EMA of
    hits per batch), embed_sum m_k (EMA of the summed assigned vectors); e_k = m_k / N_k."""

    centers: torch.Tensor       # (K, D)
    cluster_size: torch.Tensor  # (K,)
    embed_sum: torch.Tensor     # (K, D)
    initialized: torch.Tensor   # () bool

    def __init__(self, codebook_size: int, dim: int, *, decay: float = 0.99, eps: float = 1e-5,
                 dead_threshold: float = 1e-3, kmeans_iters: int = 15, seed: int = 0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size} and {dim}")
        if not 0.0 <= decay < 1.0 or eps < 0 or dead_threshold < 0:
            raise ValueError(f"need 0 <= decay < 1, eps >= 0, dead_threshold >= 0; got {decay}, {eps}, "
                             f"{dead_threshold}")
        self.codebook_size = codebook_size
        self.decay = decay                    # γ: VQ-VAE-2 uses 0.99
        self.eps = eps                        # Laplace smoothing of N_k (VQ-VAE-2: 1e-5)
        self.dead_threshold = dead_threshold  # N_k below this -> re-seed from the batch (0: never)
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self.reseeds = 0                      # dead codes re-seeded (k-means init + EMA steps)
        self._generator = torch.Generator().manual_seed(seed)  # picks re-seed rows
        self.register_buffer("centers", torch.zeros(codebook_size, dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> None:
        """Seeded k-means on x (N, D), the first training batch (GENIUS sec. 5.2). With
        `codes` (N,) given, code k starts at the mean of the rows labelled k instead (codes
        no row carries keep their k-means center)."""
        x = x.detach().float()
        centers, reseeds = kmeans(x, self.codebook_size, iters=self.kmeans_iters, seed=self.seed)
        if codes is not None:
            counts = torch.bincount(codes, minlength=self.codebook_size)
            sums = torch.zeros_like(centers).index_add_(0, codes, x)
            given = counts > 0
            centers[given] = sums[given] / counts[given, None]
        # a center counts as at least one observation, so a code the batch left empty keeps
        # its position (m_k / N_k = e_k) until its count decays below the dead threshold
        labels = assign(x, centers) if codes is None else codes
        counts = torch.bincount(labels, minlength=self.codebook_size).float().clamp_min(1.0)
        self.centers.copy_(centers)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centers * counts[:, None])
        self.initialized.fill_(True)
        self.reseeds += reseeds

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B,) int64 nearest code (GENIUS eq. 5)."""
        return assign(x.detach().float(), self.centers)

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step on a batch x (B, D) with its codes (B,) (VQ-VAE eq. 6-8):
        N_k <- γ N_k + (1-γ) n_k,  m_k <- γ m_k + (1-γ) Σ_{i: code_i = k} x_i,
        e_k = m_k / Ñ_k with Laplace smoothing Ñ_k = (N_k + eps) / (n + K eps) · n, n = Σ_k N_k.
        Codes whose N_k fell below dead_threshold are re-seeded from random batch rows."""
        x = x.detach().float()
        k = self.codebook_size
        hits = torch.bincount(codes, minlength=k).float()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, x)
        self.cluster_size.mul_(self.decay).add_(hits, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        self.centers.copy_(self.embed_sum / smoothed.clamp_min(1e-12)[:, None])
        dead = (self.cluster_size < self.dead_threshold).nonzero().flatten()
        if len(dead) and x.shape[0]:
            if len(dead) <= x.shape[0]:
                rows = torch.randperm(x.shape[0], generator=self._generator)[:len(dead)]
            else:
                rows = torch.randint(x.shape[0], (len(dead),), generator=self._generator)
            self.centers[dead] = x[rows]
            self.embed_sum[dead] = x[rows]
            self.cluster_size[dead] = 1.0
            self.reseeds += len(dead)


class RQOutput(NamedTuple):
    quantized: torch.Tensor   # (B, D) straight-through: forward value z_hat, gradient copied to z
    codes: torch.Tensor       # (B, M) int64
    commit_loss: torch.Tensor  # () GENIUS eq. (7), see `commitment_loss`


def commitment_loss(residuals: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """GENIUS eq. (7): Σ_i ||r_{i-1} - sg(e_i^{t_i})||² over levels i. residuals and codewords
    are (B, M, D); ||.||² is taken as a mean over batch and width (an MSE, as in the GENIUS
    code, which is the scale at which its β = 100 was tuned); levels are summed as eq. (7) writes."""
    return (residuals - codewords.detach()).square().mean(dim=(0, 2)).sum()


class EMAResidualQuantizer(nn.Module):
    """quantized, codes, commit_loss = rq(z): residual quantization (GENIUS eq. 4-6) with one
    EMACodebook per level. In training mode (or `update=True`) the first call k-means-inits
    every level on that batch's residuals and each call takes one EMA step per level."""

    def __init__(self, dim: int, codebook_sizes: Sequence[int], *, decay: float = 0.99, eps: float = 1e-5,
                 dead_thresholds: float | Sequence[float] = 1e-3, kmeans_iters: int = 15,
                 seed: int = 0) -> None:
        super().__init__()
        if len(codebook_sizes) < 1:
            raise ValueError("need at least one level")
        thresholds = ([float(dead_thresholds)] * len(codebook_sizes)
                      if isinstance(dead_thresholds, int | float) else list(dead_thresholds))
        if len(thresholds) != len(codebook_sizes):
            raise ValueError(f"{len(thresholds)} dead thresholds for {len(codebook_sizes)} levels")
        self.levels = nn.ModuleList(
            EMACodebook(size, dim, decay=decay, eps=eps, dead_threshold=threshold,
                        kmeans_iters=kmeans_iters, seed=seed + level)
            for level, (size, threshold) in enumerate(zip(codebook_sizes, thresholds, strict=True)))

    @property
    def books(self) -> list[EMACodebook]:
        return [book for book in self.levels if isinstance(book, EMACodebook)]

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(book.codebook_size for book in self.books)

    @property
    def codebooks(self) -> list[torch.Tensor]:
        return [book.centers for book in self.books]

    @property
    def reseeds(self) -> list[int]:
        return [book.reseeds for book in self.books]

    def forward(self, z: torch.Tensor, *, first_codes: torch.Tensor | None = None,
                update: bool | None = None) -> RQOutput:
        """z (B, D) -> RQOutput. `first_codes` (B,) fixes level 1's codes instead of the
        nearest ones (GENIUS' known modality); later levels quantize what that leaves. When
        level 1 is initialized by this call, its codes start at the means of their rows."""
        update = self.training if update is None else update
        residual = z.detach()
        codes, codewords = [], []
        for level, codebook in enumerate(self.books):
            if not bool(codebook.initialized):
                if not update:
                    raise RuntimeError("the quantizer has no codebooks yet: run a training batch first")
                codebook.init_from(residual, first_codes if level == 0 else None)
            code = first_codes if level == 0 and first_codes is not None else codebook.assign(residual)
            codeword = codebook.centers[code]
            if update:
                codebook.update(residual, code)
            codes.append(code)
            codewords.append(codeword)
            residual = residual - codeword  # eq. (6)
        words = torch.stack(codewords, 1)  # (B, M, D)
        # eq. (7) needs r_{i-1} as a function of z: r_{i-1} = z - Σ_{j<i} e_j (codes are constants)
        live_residuals = z[:, None, :] - (words.cumsum(1) - words)
        commit = commitment_loss(live_residuals, words)
        quantized = z + (words.sum(1) - z).detach()  # straight-through estimator
        return RQOutput(quantized, torch.stack(codes, 1), commit)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, num_levels: int | None = None) -> torch.Tensor:
        """(B, M) -> (B, D) sum of the first `num_levels` levels' code vectors."""
        levels = len(self.books) if num_levels is None else num_levels
        out = torch.zeros(codes.shape[0], self.codebooks[0].shape[1])
        for level in range(levels):
            out += self.codebooks[level][codes[:, level]]
        return out
