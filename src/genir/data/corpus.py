"""`Corpus`: the items genir indexes, with stable string ids, and their labels.

A corpus is plain data (ids, images, texts, labels); loaders in this package build one,
encoders turn it into embeddings. It is not an index and holds no embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITIES = ("image", "text", "image_text")


@dataclass
class Corpus:
    """Items in a fixed order; row i of every field describes item i.

    images: per item a path, PIL image or uint8 array, or one (N, H, W[, C]) uint8 array.
    texts: per item a caption or document (for image items: its caption, if any).
    labels: (N,) int64 class ids, -1 for none; `label_names[label]` names the class.
    """

    name: str
    item_ids: list[str]
    modality: str = "image"
    images: Sequence[Any] | np.ndarray | None = None
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if len(set(self.item_ids)) != n:
            raise ValueError(f"corpus {self.name!r}: item ids are not unique")
        for attr in ("images", "texts", "labels"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise ValueError(f"corpus {self.name!r}: {attr} has {len(value)} rows, "
                                 f"item_ids has {n}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.item_ids)

    def subset(self, index: Sequence[int] | np.ndarray, name: str | None = None) -> Corpus:
        """The items at `index`, in that order."""
        idx = np.asarray(index, dtype=np.int64)

        def take(seq: Any) -> Any:
            if seq is None:
                return None
            if isinstance(seq, np.ndarray):
                return seq[idx]
            return [seq[i] for i in idx]

        return Corpus(name=name or self.name, item_ids=take(self.item_ids),
                      modality=self.modality, images=take(self.images), texts=take(self.texts),
                      labels=take(self.labels), label_names=self.label_names,
                      metadata=dict(self.metadata))


class MissingDataError(FileNotFoundError):
    """A bundled data set is not on disk; the message gives the exact install command."""
