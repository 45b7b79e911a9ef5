"""`IRGenTokenizer`: IRGen's classification-supervised residual-quantization tokenizer
(Zhang et al., "IRGen: Generative Modeling for Image Retrieval", sec. 3.1, eq. 1-4).

A learned projection maps each (frozen) item embedding to f (the paper's f_cls); RQ maps f
to M codes (eq. 1-2); a linear classifier is trained on f and on every partial
reconstruction f_hat^{<=m}, so that each code prefix carries class semantics (eq. 3), with
a commitment term on the stop-gradient residuals (eq. 4). Codebooks and network are
optimised alternately: k-means re-fits of the RQ codebooks on the current projection, then
`codebook_refit_every` network steps with the codebooks frozen.

What this is not: the paper fine-tunes the ViT encoder as well (at 1% of the FC learning
rate); here the embeddings are frozen and only the projection and classifier learn. The
codes and `decode` live in the projected space, not the input space. `irgen_loss` is the
pure objective, testable on tiny tensors; `IRGenTokenizer` is the training loop around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genir.ids.base import Side
from genir.ids.kmeans import assign
from genir.ids.rq import ResidualQuantizer, RQConfig, _as_tensor


@dataclass
class IRGenConfig(RQConfig):
    # RQ fields (num_levels, codebook_size, kmeans_iters, max_fit_points, seed) are inherited
    projection_dim: int | None = None  # width of f; None = the input width
    hidden_dim: int = 0                # 0 = linear projection; > 0 = MLP D -> hidden -> projection_dim
    steps: int = 2000                  # network optimiser steps in total
    batch_size: int = 128              # paper: 128
    lr: float = 5e-4                   # paper: 5e-4 for the FC layers, AdamW betas (0.9, 0.96)
    weight_decay: float = 0.05         # paper: 0.05
    warmup_steps: int = 200            # linear warm-up, then cosine decay (paper: 20 of 200 epochs)
    codebook_refit_every: int = 500    # network steps between k-means re-fits (each is a full RQ fit)
    # the paper gives no values for λ1, λ2
    lambda_partial: float = 1.0        # IRGen eq. (3) λ1 on the partial-reconstruction losses
    lambda_commit: float = 0.1         # IRGen eq. (3) λ2 on the residual norms ||r_m||^2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0 or self.batch_size < 1 or self.codebook_refit_every < 1:
            raise ValueError("steps must be >= 0, batch_size and codebook_refit_every >= 1")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")

    @classmethod
    def from_rq(cls, config: RQConfig) -> IRGenConfig:
        """An IRGenConfig with `config`'s RQ fields (and IRGen defaults for the rest)."""
        if isinstance(config, IRGenConfig):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(RQConfig)})


class IRGenLoss(NamedTuple):
    loss: torch.Tensor           # () the eq. (3) objective, differentiable
    cls: torch.Tensor            # () L_cls(f), detached
    partial_cls: torch.Tensor    # () sum_m L_cls(f_hat^{<=m}), detached
    commit: torch.Tensor         # () sum_m ||r_m||^2 (batch mean), detached
    codes: torch.Tensor          # (B, M) int64, eq. (1)


def irgen_loss(f: torch.Tensor, codebooks: Sequence[torch.Tensor], labels: torch.Tensor,
               classifier: Callable[[torch.Tensor], torch.Tensor], *,
               lambda_partial: float = 1.0, lambda_commit: float = 0.1) -> IRGenLoss:
    """IRGen eq. (1)-(4) on a batch. f (B, d) projected embeddings, codebooks M x (K_m, d),
    labels (B,) int64 class ids, classifier (B, d) -> (B, C) logits.

    The codebooks get no gradient from this loss (they enter only through sg[.] and the
    straight-through estimator); they are fitted by k-means in the alternating step.
    """
    with torch.no_grad():  # eq. (1)-(2): greedy RQ codes and partial reconstructions
        residual = f.detach()
        partials, codes = [], []
        recon = torch.zeros_like(residual)
        for codebook in codebooks:
            code = assign(residual, codebook.detach())
            recon = recon + codebook.detach()[code]
            residual = residual - codebook.detach()[code]
            partials.append(recon)                      # f_hat^{<=m} = sum_{i<=m} c_{i l_i}
            codes.append(code)
    cls = F.cross_entropy(classifier(f), labels)        # eq. (3) L_cls(f_cls)
    partial_cls = f.new_zeros(())
    commit = f.new_zeros(())
    for recon in partials:
        # straight-through (eq. 3, after [82]): forward value f_hat^{<=m}, gradient copied to f
        straight_through = f + (recon - f).detach()
        partial_cls = partial_cls + F.cross_entropy(classifier(straight_through), labels)
        # eq. (4): r_m = f - sg[f_hat^{<=m}]  (recon is already outside the graph)
        commit = commit + (f - recon).square().sum(1).mean()
    loss = cls + lambda_partial * partial_cls + lambda_commit * commit  # eq. (3)
    return IRGenLoss(loss, cls.detach(), partial_cls.detach(), commit.detach(),
                     torch.stack(codes, 1) if codes else torch.empty(f.shape[0], 0, dtype=torch.int64))


class IRGenTokenizer:
    """tok.fit(emb, labels); ids = tok.encode(emb); rec = tok.decode(ids) (projected space)."""

    fit_needs: tuple[str, ...] = ("labels",)
    encode_needs: tuple[str, ...] = ()

    def __init__(self, config: RQConfig | None = None) -> None:
        self.config = IRGenConfig.from_rq(config or IRGenConfig())
        self.projection: nn.Module | None = None
        self.classifier: nn.Linear | None = None
        self.rq = ResidualQuantizer(self._rq_config())
        self.history: list[dict[str, float]] = []  # loss terms at each codebook re-fit

    @property
    def reseeds(self) -> list[int]:
        return self.rq.reseeds

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    @property
    def is_fitted(self) -> bool:
        return self.projection is not None and self.rq.is_fitted

    def fit(self, emb: np.ndarray | torch.Tensor,
            labels: np.ndarray | Sequence | None = None, *,
            side: Side | None = None) -> IRGenTokenizer:
        """(N, D) float, (N,) class labels (any hashable values; or side.labels) -> self."""
        x = _as_tensor(emb)
        if labels is None and side is not None:
            labels = side.labels
        if labels is None:
            raise ValueError("IRGenTokenizer.fit needs class labels: fit(emb, labels) with one label "
                             "per item (IRGen trains its codes with a classification loss)")
        label_array = np.asarray(labels)
        if label_array.ndim != 1 or len(label_array) != x.shape[0]:
            raise ValueError(f"IRGenTokenizer.fit needs one label per item: got labels of shape "
                             f"{label_array.shape} for {x.shape[0]} embeddings")
        classes, y_np = np.unique(label_array, return_inverse=True)
        y = torch.as_tensor(y_np.astype(np.int64))
        cfg = self.config
        torch.manual_seed(cfg.seed)  # network init; batches use their own generator
        dim = cfg.projection_dim or x.shape[1]
        self.projection = _projection(x.shape[1], cfg.hidden_dim, dim)
        self.classifier = nn.Linear(dim, len(classes))
        params = [*self.projection.parameters(), *self.classifier.parameters()]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.96), weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)
        batch_size = min(cfg.batch_size, x.shape[0])
        order, cursor = torch.randperm(x.shape[0], generator=generator), 0
        self.history = []
        for step in range(cfg.steps):
            if step % cfg.codebook_refit_every == 0:  # alternating optimisation: codebook step
                self._refit_codebooks(x)
            if cursor + batch_size > x.shape[0]:
                order, cursor = torch.randperm(x.shape[0], generator=generator), 0
            batch = order[cursor:cursor + batch_size]
            cursor += batch_size
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg)
            out = irgen_loss(self.projection(x[batch]), self.rq.codebooks, y[batch], self.classifier,
                             lambda_partial=cfg.lambda_partial, lambda_commit=cfg.lambda_commit)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if step % cfg.codebook_refit_every == 0:
                self.history.append({"step": step, "loss": float(out.loss.detach()), "cls": float(out.cls),
                                     "partial_cls": float(out.partial_cls), "commit": float(out.commit)})
        self._refit_codebooks(x)  # final codebook step: codes match the trained projection
        return self

    def project(self, emb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, d) projected embeddings f."""
        if self.projection is None:
            raise RuntimeError("the tokenizer is not fitted: call fit(embeddings, labels) first")
        x = _as_tensor(emb)
        width = _input_width(self.projection)
        if x.shape[1] != width:
            raise ValueError(f"embedding width {x.shape[1]} does not match the tokenizer's {width}")
        with torch.no_grad():
            return self.projection(x)

    def encode(self, emb: np.ndarray | torch.Tensor, *, side: Side | None = None) -> np.ndarray:
        """(N, D) -> (N, M) int64: project, then greedy RQ (eq. 1-2)."""
        self._check_fitted()
        return self.rq.encode(self.project(emb))

    def decode(self, codes: np.ndarray | torch.Tensor, num_levels: int | None = None) -> np.ndarray:
        """(N, M) codes -> (N, d) reconstruction f_hat^{<=num_levels}, in the projected space."""
        self._check_fitted()
        return self.rq.decode(codes, num_levels)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        assert self.projection is not None and self.classifier is not None
        state = {f"projection.{k}": v.detach().contiguous() for k, v in self.projection.state_dict().items()}
        state.update({f"classifier.{k}": v.detach().contiguous()
                      for k, v in self.classifier.state_dict().items()})
        state.update(self.rq.state_dict())
        return state

    @classmethod
    def from_state(cls, config: RQConfig, state: dict[str, torch.Tensor]) -> IRGenTokenizer:
        """Rebuild from `state_dict()`. The network's shape is read from the tensors, so a
        plain RQConfig (the RQ fields only) is enough."""
        tok = cls(config)
        net = {k[len("projection."):]: v.float() for k, v in state.items() if k.startswith("projection.")}
        if "weight" in net:
            tok.projection = _projection(net["weight"].shape[1], 0, net["weight"].shape[0])
        else:
            tok.projection = _projection(net["0.weight"].shape[1], net["0.weight"].shape[0],
                                         net["2.weight"].shape[0])
        tok.projection.load_state_dict(net)
        weight = state["classifier.weight"].float()
        tok.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        tok.classifier.load_state_dict({"weight": weight, "bias": state["classifier.bias"].float()})
        tok.rq = ResidualQuantizer.from_state(tok._rq_config(), state)
        return tok

    def _refit_codebooks(self, x: torch.Tensor) -> None:
        self.rq = ResidualQuantizer(self._rq_config()).fit(self.project(x))

    def _rq_config(self) -> RQConfig:
        return RQConfig(**{f.name: getattr(self.config, f.name) for f in fields(RQConfig)})

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer is not fitted: call fit(embeddings, labels) first")


def _projection(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Module:
    if hidden_dim <= 0:
        return nn.Linear(input_dim, output_dim)
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))


def _input_width(projection: nn.Module) -> int:
    first = projection if isinstance(projection, nn.Linear) else projection[0]  # type: ignore[index]
    return int(first.in_features)


def _lr_at(step: int, cfg: IRGenConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 0 over the remaining steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))
