"""`AlignedEncoder`: frozen image and text towers joined by trained projection heads.

The towers (EfficientNet-Lite0, MiniLM by default) stay frozen and their features are
cached on disk; two linear heads map them into one shared space, trained with the
symmetric InfoNCE loss on the corpus' own image-text pairs (locked-tower alignment, as in
CLIP's loss with a learned temperature). Queries and items of either modality then share
one space. Training the towers themselves is out of scope here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genir.encoders.base import ImageLike, l2_normalize
from genir.encoders.cache import EmbeddingCache
from genir.io import atomic_write_bytes, atomic_write_json


@dataclass
class AlignConfig:
    dim: int = 256                  # shared embedding width
    steps: int = 600                # optimiser steps
    batch_size: int = 512           # pairs per step (the InfoNCE negatives)
    lr: float = 2e-3                # AdamW learning rate (cosine-decayed)
    weight_decay: float = 0.1       # keeps the heads from memorising a small corpus
    init_temperature: float = 0.07  # CLIP's initial softmax temperature
    seed: int = 0


class ProjectionHeads(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, cfg: AlignConfig) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, cfg.dim)
        self.text = nn.Linear(text_dim, cfg.dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / cfg.init_temperature))))

    def loss(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over a batch of matching (image, text) rows."""
        zi = F.normalize(self.image(image_feats), dim=-1)
        zt = F.normalize(self.text(text_feats), dim=-1)
        logits = self.logit_scale.clamp(max=np.log(100)).exp() * zi @ zt.T
        target = torch.arange(len(zi))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class AlignedEncoder:
    """encode_images / encode_texts into one shared, L2-normalised space of width `dim`."""

    def __init__(self, *, image_tower: Any = None, text_tower: Any = None,
                 config: AlignConfig | None = None, cache: EmbeddingCache | None = None) -> None:
        from genir.encoders.towers import EfficientNetLiteTower, MiniLMTower

        self.config = config or AlignConfig()
        self.image_tower = image_tower or EfficientNetLiteTower()
        self.text_tower = text_tower or MiniLMTower()
        self.cache = cache or EmbeddingCache()
        self.heads = ProjectionHeads(self.image_tower.dim, self.text_tower.dim, self.config)
        self.fitted = False
        self.dim = self.config.dim

    # tower features (cached)
    def image_features(self, images: Sequence[ImageLike] | np.ndarray, *,
                       progress: bool = False) -> np.ndarray:
        return self.cache.get_or_compute(
            self.image_tower.cache_key(), "image", images,
            lambda: self.image_tower.encode_images(images, progress=progress))

    def text_features(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        return self.cache.get_or_compute(
            self.text_tower.cache_key(), "text", texts,
            lambda: self.text_tower.encode_texts(texts, progress=progress))

    # heads
    def fit_features(self, image_feats: np.ndarray, text_feats: np.ndarray, *,
                     progress: bool = False) -> list[float]:
        """Train the heads on (N, Di) image and (N, Dt) text features of matching pairs."""
        from tqdm.auto import tqdm

        if len(image_feats) != len(text_feats) or len(image_feats) < 2:
            raise ValueError("need at least 2 matching (image, text) pairs, got "
                             f"{len(image_feats)} images and {len(text_feats)} texts")
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.heads = ProjectionHeads(image_feats.shape[1], text_feats.shape[1], cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        xi = torch.as_tensor(image_feats, dtype=torch.float32)
        xt = torch.as_tensor(text_feats, dtype=torch.float32)
        opt = torch.optim.AdamW(self.heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
        bs = min(cfg.batch_size, len(xi))
        losses = []
        for _ in tqdm(range(cfg.steps), desc="align heads", disable=not progress):
            idx = torch.randperm(len(xi), generator=gen)[:bs]
            loss = self.heads.loss(xi[idx], xt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        self.heads.eval()
        self.fitted = True
        return losses

    def fit(self, images: Sequence[ImageLike] | np.ndarray, texts: Sequence[str], *,
            progress: bool = False) -> AlignedEncoder:
        self.fit_features(self.image_features(images, progress=progress),
                          self.text_features(texts, progress=progress), progress=progress)
        return self

    @torch.inference_mode()
    def project_images(self, feats: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return l2_normalize(self.heads.image(torch.as_tensor(feats, dtype=torch.float32)).numpy())

    @torch.inference_mode()
    def project_texts(self, feats: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return l2_normalize(self.heads.text(torch.as_tensor(feats, dtype=torch.float32)).numpy())

    # the Encoder contract
    def encode_images(self, images: Sequence[ImageLike] | np.ndarray, *, batch_size: int = 128,
                      progress: bool = False) -> np.ndarray:
        return self.project_images(self.image_features(images, progress=progress))

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 128,
                     progress: bool = False) -> np.ndarray:
        return self.project_texts(self.text_features(texts, progress=progress))

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        for t in self.heads.state_dict().values():
            digest.update(t.numpy().tobytes())
        return (f"aligned:{self.image_tower.cache_key()}+{self.text_tower.cache_key()}:"
                f"{digest.hexdigest()[:16]}")

    # persistence: heads + config; the towers are named by their cache keys
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save as save_bytes

        self._check_fitted()
        path = Path(path)
        atomic_write_bytes(path / "heads.safetensors",
                           save_bytes({k: v.contiguous() for k, v in self.heads.state_dict().items()}))
        atomic_write_json(path / "encoder.json", {
            "type": "aligned", "config": asdict(self.config),
            "image_tower": {"type": "efficientnet-lite0",
                            "image_size": getattr(self.image_tower, "image_size", None)},
            "text_tower": {"type": "sentence-transformers"}})

    @classmethod
    def load(cls, path: str | Path, *, image_tower: Any = None, text_tower: Any = None,
             cache: EmbeddingCache | None = None) -> AlignedEncoder:
        from safetensors.torch import load_file

        from genir.encoders.towers import EfficientNetLiteTower

        path = Path(path)
        spec = json.loads((path / "encoder.json").read_text())
        if spec.get("type") != "aligned":
            raise ValueError(f"{path}/encoder.json is not an aligned encoder")
        if image_tower is None and spec["image_tower"].get("image_size"):
            image_tower = EfficientNetLiteTower(image_size=spec["image_tower"]["image_size"])
        enc = cls(image_tower=image_tower, text_tower=text_tower,
                  config=AlignConfig(**spec["config"]), cache=cache)
        enc.heads.load_state_dict(load_file(str(path / "heads.safetensors")))
        enc.heads.eval()
        enc.fitted = True
        return enc

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("the projection heads are not trained: call fit(images, texts)")
