"""Data loaders: each turns a data set on disk into a `Corpus` (ids, images, texts, labels).

This package reads and validates data; it does not encode, index or download anything on
import.
"""

from __future__ import annotations

from genir.data.corpus import Corpus, MissingDataError
from genir.data.fashion_mnist import load_fashion_mnist
from genir.data.openclipart import load_openclipart

__all__ = ["Corpus", "MissingDataError", "load_fashion_mnist", "load_openclipart"]
