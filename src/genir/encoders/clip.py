"""`CLIPEncoder`: a genir `Encoder` over a Hugging Face `CLIPModel` (the `clip` extra).

For users with real CLIP weights: a hub name such as "openai/clip-vit-base-patch32" on a
machine with internet, or a local directory written by `save_pretrained` that holds the
model, its tokenizer and its image processor. This file holds only inference; it trains
nothing and downloads nothing by itself beyond what `from_pretrained` does.

transformers is imported inside the constructor, so `import genir.encoders.clip` works
without the `clip` extra installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genir.encoders.base import ImageLike, encode_batched, l2_normalize, load_image

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _features(out: Any) -> torch.Tensor:
    """The projected embeddings from `get_{image,text}_features`, whatever it returns.

    transformers 4.x returns the (B, dim) tensor; 5.x returns a `BaseModelOutputWithPooling`
    whose `pooler_output` holds the projection (its `[0]` is the unprojected last hidden
    state, so indexing the output would silently give the wrong vectors).
    """
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected CLIP feature output of type {type(out).__name__}")


class CLIPEncoder:
    """Images and texts -> L2-normalised float32 CLIP embeddings of width `dim`.

    enc = CLIPEncoder("openai/clip-vit-base-patch32")
    img = enc.encode_images(["cat.jpg"])   # (N, dim) float32, unit rows
    txt = enc.encode_texts(["a cat"])      # (N, dim) float32, unit rows
    """

    def __init__(self, path_or_name: str, *, device: str | None = None,
                 dtype: str = "float32", max_text_length: int | None = None):
        try:
            from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        except ImportError as exc:
            raise ImportError("CLIPEncoder needs transformers: pip install 'genir[clip]'") from exc
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")

        path_or_name = os.fspath(path_or_name)
        try:
            model: Any = CLIPModel.from_pretrained(path_or_name)  # untyped: config unions
            self.tokenizer = AutoTokenizer.from_pretrained(path_or_name)
            self.image_processor = AutoImageProcessor.from_pretrained(path_or_name)
        except OSError as exc:
            if os.path.isdir(path_or_name):
                hint = ("the directory exists but does not hold a complete CLIP model "
                        "(config, weights, tokenizer and image processor from save_pretrained)")
            else:
                hint = ("it is not a local directory and the Hugging Face Hub could not serve "
                        "it; pass a local directory, or connect to the internet")
            raise OSError(f"cannot load CLIP model {path_or_name!r}: {hint}. ({exc})") from exc

        self.path_or_name = path_or_name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        # Cast after loading: `from_pretrained(dtype=...)` is ignored before transformers 4.56.
        self.model = model.to(device=self.device, dtype=DTYPES[dtype]).eval()
        self.dim: int = int(model.config.projection_dim)
        # CLIP's position table bounds the text length (77 for OpenAI's checkpoints).
        self.max_text_length = int(max_text_length
                                   or model.config.text_config.max_position_embeddings)

    def encode_images(self, images: Sequence[ImageLike], *, batch_size: int = 64,
                      progress: bool = False) -> np.ndarray:
        """(N,) paths / PIL images / uint8 arrays -> (N, dim) float32, unit rows."""
        return encode_batched(images, self._encode_image_batch, batch_size=batch_size,
                              progress=progress, desc="clip images")

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256,
                     progress: bool = False) -> np.ndarray:
        """(N,) strings -> (N, dim) float32, unit rows; longer texts are truncated."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single str")
        if len(texts) == 0:
            raise ValueError("encode_texts: nothing to encode (empty input)")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        return encode_batched(texts, self._encode_text_batch, batch_size=batch_size,
                              progress=progress, desc="clip texts")

    def cache_key(self) -> str:
        """"clip:<name>:<dim>:<hash>", the hash over everything that shapes the outputs.

        Covers the model config, image processor config, dtype and text length, not the
        weights: two different checkpoints saved under one name with one config collide.
        """
        config = json.loads(self.model.config.to_json_string(use_diff=False))
        for volatile in ("transformers_version", "_name_or_path", "_commit_hash"):
            config.pop(volatile, None)
        processor = json.loads(self.image_processor.to_json_string())
        blob = json.dumps({"config": config, "image_processor": processor, "dtype": self.dtype,
                           "max_text_length": self.max_text_length}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"clip:{self.path_or_name}:{self.dim}:{digest}"

    def _encode_image_batch(self, images: Sequence[ImageLike]) -> np.ndarray:
        pil = [load_image(image) for image in images]
        pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.model.dtype)  # (B, 3, H, W)
        with torch.inference_mode():
            emb = _features(self.model.get_image_features(pixel_values=pixels))  # (B, dim)
        return l2_normalize(emb.float().cpu().numpy())

    def _encode_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.max_text_length, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),  # (B, L)
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        return l2_normalize(_features(out).float().cpu().numpy())  # (B, dim)
