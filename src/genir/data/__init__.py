"""Data loaders: each turns a data set on disk into a `Corpus` (ids, images, texts, labels).

This package reads and validates data; it does not encode, index or download anything on
import.
"""

from __future__ import annotations

from genir.data.corpus import Corpus, MissingDataError
from genir.data.fashion_mnist import load_fashion_mnist
from genir.data.openclipart import load_openclipart
from genir.data.papers import (
    RetrievalSplit,
    load_cars196,
    load_cub200,
    load_inshop,
    load_karpathy,
    load_mbeir,
)
from genir.data.wordnet import load_wordnet

__all__ = ["Corpus", "MissingDataError", "RetrievalSplit",
           "load_cars196", "load_cub200", "load_fashion_mnist", "load_inshop", "load_karpathy",
           "load_mbeir", "load_openclipart", "load_wordnet"]
