"""genir: generative retrieval over images and text.

Items become short semantic IDs (residual quantization of their embeddings); a small
Transformer decoder generates the IDs of the right items from a query, with beam search
constrained to the trie of valid IDs. `GenerativeIndex.search(queries, k)` returns
`(scores, item_rows)` like a FAISS index.
"""

from __future__ import annotations

from genir.decoder.model import CodeDecoder, DecoderConfig
from genir.decoder.train import PairSampler, SameLabelSampler, TrainConfig
from genir.eval.flat import FlatIndex
from genir.ids.rq import ResidualQuantizer, RQConfig
from genir.ids.table import IDTable
from genir.index import GenerativeIndex, IndexConfig, SearchConfig
from genir.numerics import flush_denormals
from genir.search.trie import CodeTrie

# before any torch work, so torch's worker threads inherit it (see genir.numerics)
flush_denormals()

__version__ = "0.1.0"

__all__ = [
    "CodeDecoder", "CodeTrie", "DecoderConfig", "FlatIndex", "GenerativeIndex", "IDTable",
    "IndexConfig", "PairSampler", "RQConfig", "ResidualQuantizer", "SameLabelSampler",
    "SearchConfig", "TrainConfig", "__version__", "flush_denormals",
]
