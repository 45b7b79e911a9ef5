"""On-disk embedding cache keyed by the encoder and the exact content embedded.

A second run over the same items with the same encoder loads a .npy instead of running
the towers. Keys hash the encoder's `cache_key()` with the content itself (image bytes or
pixels, text strings), never just a file name, so an edited file is re-embedded.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genir.io import atomic_write_bytes


def default_cache_dir() -> Path:
    return Path(os.environ.get("GENIR_CACHE_DIR", Path.home() / ".cache" / "genir"))


def content_digest(items: Sequence[Any] | np.ndarray) -> str:
    """sha256 over the content of texts, image files, PIL images or uint8 arrays."""
    h = hashlib.sha256()
    if isinstance(items, np.ndarray):
        h.update(f"ndarray:{items.dtype}:{items.shape}".encode())
        h.update(np.ascontiguousarray(items).tobytes())
        return h.hexdigest()
    h.update(f"seq:{len(items)}".encode())
    for item in items:
        if isinstance(item, str) and not _looks_like_path(item):
            h.update(b"t")
            h.update(item.encode("utf-8"))
        elif isinstance(item, str | os.PathLike):
            h.update(b"f")
            h.update(Path(item).read_bytes())
        elif isinstance(item, np.ndarray):
            h.update(f"a{item.dtype}{item.shape}".encode())
            h.update(np.ascontiguousarray(item).tobytes())
        else:  # PIL image
            h.update(f"p{item.mode}{item.size}".encode())
            h.update(item.tobytes())
        h.update(b"\0")
    return h.hexdigest()


def _looks_like_path(s: str) -> bool:
    return os.sep in s and os.path.isfile(s)


class EmbeddingCache:
    def __init__(self, root: str | Path | None = None, *, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "embeddings"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path_for(self, encoder_key: str, what: str, digest: str) -> Path:
        key = hashlib.sha256(f"{encoder_key}|{what}|{digest}".encode()).hexdigest()[:32]
        return self.root / f"{what}-{key}.npy"

    def get_or_compute(self, encoder_key: str, what: str, items: Sequence[Any] | np.ndarray,
                       compute: Callable[[], np.ndarray], *, dtype: Any = np.float32
                       ) -> np.ndarray:
        """The cached array for (encoder, what, content), or compute() stored as `dtype`."""
        if not self.enabled:
            return np.asarray(compute(), dtype=dtype)
        path = self.path_for(encoder_key, what, content_digest(items))
        if path.exists():
            try:
                out = np.load(path)
                if len(out) == len(items) and out.dtype == dtype:
                    self.hits += 1
                    return out
            except (OSError, ValueError):
                pass  # unreadable entry: recompute and overwrite
        self.misses += 1
        out = np.asarray(compute(), dtype=dtype)
        buf = io.BytesIO()
        np.save(buf, out)
        atomic_write_bytes(path, buf.getvalue())
        return out
