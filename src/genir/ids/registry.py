"""Semantic-ID tokenizers by name (what `IndexConfig.tokenizer` and `--tokenizer` select).

Each keeps the `genir.ids.base.Tokenizer` contract; each reads its config class (a subclass
of `RQConfig`: the RQ fields plus its own).
"""

from __future__ import annotations

from typing import Any

from genir.ids.avg import AVGConfig, AVGTokenizer
from genir.ids.genius import GeniusConfig, GeniusTokenizer
from genir.ids.hkmeans import HierarchicalKMeansTokenizer
from genir.ids.irgen import IRGenConfig, IRGenTokenizer
from genir.ids.random_ids import RandomTokenizer
from genir.ids.rq import ResidualQuantizer, RQConfig

TOKENIZERS: dict[str, Any] = {
    "rq": ResidualQuantizer,                  # plain residual quantization (default)
    "random": RandomTokenizer,                # random IDs, same length and range (baseline)
    "hkmeans": HierarchicalKMeansTokenizer,   # hierarchical k-means (DSI / NCI baseline)
    "irgen": IRGenTokenizer,                  # RQ supervised by class labels (IRGen eq. 3-4)
    "avg": AVGTokenizer,                      # RQ aligned with captions (AVG eq. 3-6)
    "genius": GeniusTokenizer,                # modality code first, contrastive (GENIUS eq. 3-8)
}
TOKENIZER_CONFIGS: dict[str, type[RQConfig]] = {"irgen": IRGenConfig, "avg": AVGConfig,
                                                 "genius": GeniusConfig}


def tokenizer_class(name: str) -> Any:
    """The tokenizer class called `name`; a ValueError lists the valid names."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name]


def config_class(name: str) -> type[RQConfig]:
    """The config class tokenizer `name` reads."""
    tokenizer_class(name)
    return TOKENIZER_CONFIGS.get(name, RQConfig)
