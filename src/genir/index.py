"""`GenerativeIndex`: semantic IDs + a trained code decoder behind a FAISS-like search.

    index = GenerativeIndex.build(item_emb, queries=q_emb, sampler=pairs)
    scores, rows = index.search(query_emb, k)     # (Q, k) each, -1 / -inf padded
    index.save(path); GenerativeIndex.load(path)     # genir.persist

`build` fits the RQ tokenizer on the item embeddings, encodes every item, and trains the
decoder on (query, target item) pairs; without pairs it trains on self-pairs (each item's
own embedding as the query of its own ID, the DSI "indexing" task). `search` runs the
trie-constrained beam search, expands each returned ID into all items that share it
(collisions) and, with rerank, orders the beam's candidate items by embedding
similarity (GENIUS' re-ranking). Encoders live outside: the index takes vectors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genir.decoder.model import CodeDecoder, DecoderConfig, init_code_embeddings
from genir.decoder.train import PairSampler, Sampler, TrainConfig, train_decoder
from genir.ids.base import Side
from genir.ids.genius import MODALITIES
from genir.ids.registry import TOKENIZERS, config_class, tokenizer_class
from genir.ids.rq import RQConfig
from genir.ids.table import IDTable, codebook_utilisation
from genir.search.beam import constrained_beam_search
from genir.search.results import top_items
from genir.search.trie import CodeTrie
from genir.store import ItemStore

MAX_K = 1000  # the most results one query may ask for
# the build() argument that gives each side input a tokenizer may need (genir.ids.base.Side)
BUILD_ARGS = {"labels": "item_labels", "text_emb": "item_text_emb", "modality": "item_modality",
              "pairs": "tokenizer_pairs"}
# tokenizers whose encode needs each item's modality (item_meta["modality"]: MODALITIES name)
MODALITY_TOKENIZERS = tuple(name for name, cls in TOKENIZERS.items() if "modality" in cls.encode_needs)


@dataclass
class SearchConfig:
    beam_size: int = 30          # beams kept per level; raised to k when k is larger
    rerank: bool = False         # order the beam's candidate items by embedding similarity
    batch_size: int = 256        # queries decoded together


@dataclass
class IndexConfig:
    tokenizer: str = "rq"        # a TOKENIZERS name: "rq" (default) or "random" (baseline)
    rq: RQConfig = field(default_factory=RQConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    # AVG voken embeddings: start each level's code embeddings from the tokenizer's codebook
    # (projected to d_model, rescaled to unit RMS) instead of random
    voken_init: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> IndexConfig:
        """Validate the tokenizer name and give `rq` the config class that tokenizer reads
        (its RQ fields kept, the tokenizer's own defaults for the rest). -> self"""
        wanted = config_class(self.tokenizer)
        if type(self.rq) is not wanted:   # e.g. RQConfig -> IRGenConfig with IRGen defaults
            base = {f: getattr(self.rq, f) for f in RQConfig.__dataclass_fields__}
            self.rq = wanted(**base)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "rq": self.rq.to_dict(), "decoder": self.decoder.to_dict(),
                "train": self.train.to_dict(), "search": asdict(self.search),
                "voken_init": self.voken_init}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        tokenizer = d.get("tokenizer", "rq")
        return cls(tokenizer=tokenizer, rq=config_class(tokenizer)(**d["rq"]),
                   decoder=DecoderConfig(**d["decoder"]),
                   train=TrainConfig(**d["train"]), search=SearchConfig(**d["search"]),
                   voken_init=d.get("voken_init", False))


class GenerativeIndex:
    def __init__(self, *, tokenizer: Any, decoder: CodeDecoder,
                 item_emb: np.ndarray, codes: np.ndarray, item_ids: list[str],
                 config: IndexConfig, extra: dict[str, Any] | None = None,
                 item_meta: list[dict[str, Any]] | None = None) -> None:
        if len(item_ids) != len(item_emb) or len(codes) != len(item_emb):
            raise ValueError("item_ids, item_emb and codes must have one row per item")
        if item_meta is not None and len(item_meta) != len(item_ids):
            raise ValueError("item_meta must have one entry per item")
        self.tokenizer = tokenizer
        self.decoder = decoder.eval()
        self.item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.item_ids = list(item_ids)
        self._emb_buf, self._codes_buf = self.item_emb, self.codes   # grown by add()
        self.config = config
        self.extra = dict(extra or {})   # free-form JSON saved in the manifest (encoder spec...)
        # per-item metadata (caption, label, source path...), saved in the item store
        self.item_meta = list(item_meta) if item_meta is not None else [{} for _ in item_ids]
        self.store: ItemStore | None = None   # set by open(writable=True): adds are durable
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ValueError("item_ids must be unique")
        self._rebuild()

    def _rebuild(self) -> None:
        """ID table, trie and lookup tensors from the current items (1M items: about 3 s)."""
        self.table = IDTable.from_codes(self.codes)
        self.trie = CodeTrie.from_unique_ids(self.table.unique_ids)
        self._row_of = {item_id: row for row, item_id in enumerate(self.item_ids)}

    # ------------------------------------------------------------ add / remove
    def add(self, item_emb: np.ndarray, item_ids: list[str], *,
            item_meta: list[dict[str, Any]] | None = None,
            thumbnails: dict[str, bytes] | None = None) -> np.ndarray:
        """Tokenize new items with the fitted tokenizer and make them searchable, without
        retraining the decoder (IRGen's "fresh data" setting). -> their rows (M,) int64.

        On an index opened with `open(path, writable=True)` the items are committed to its
        store before they become searchable: when add returns, they survive a crash."""
        emb = np.asarray(item_emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.item_emb.shape[1] or len(emb) != len(item_ids):
            raise ValueError(f"add needs (M, {self.item_emb.shape[1]}) embeddings and M ids, got "
                             f"shape {emb.shape} and {len(item_ids)} ids")
        clash = [i for i in item_ids if i in self]
        if clash or len(set(item_ids)) != len(item_ids):
            raise ValueError(f"item ids already in the index or repeated: {clash[:5] or item_ids[:5]}")
        if item_meta is not None and len(item_meta) != len(item_ids):
            raise ValueError("item_meta must have one entry per item")
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or inf")
        metas = list(item_meta) if item_meta is not None else [{} for _ in item_ids]
        codes = self._encode(emb, metas)
        if self.store is not None:
            self.store.add(item_ids, codes, emb, metas, thumbnails)
        first = len(self.item_ids)
        self._append_rows(emb, codes)
        self.item_ids = self.item_ids + list(item_ids)
        self.item_meta = self.item_meta + metas
        self._rebuild()
        return np.arange(first, len(self.item_ids), dtype=np.int64)

    def _encode(self, emb: np.ndarray, metas: list[dict[str, Any]]) -> np.ndarray:
        """Codes of new items; a modality tokenizer reads each item's meta["modality"]."""
        if "modality" not in self.tokenizer.encode_needs:
            return self.tokenizer.encode(emb)
        return self.tokenizer.encode(emb, side=Side(modality=modality_ids(metas)))

    @property
    def item_modality(self) -> np.ndarray:
        """(N,) int64 modality per item (0 image, 1 text, 2 image_text); for an index whose
        items carry no "modality" metadata, all 0 (a single-modality image index)."""
        if all("modality" in m for m in self.item_meta):
            return modality_ids(self.item_meta)
        return np.zeros(len(self.item_ids), dtype=np.int64)

    def subset(self, rows: np.ndarray) -> GenerativeIndex:
        """A read-only index over some rows, sharing this one's decoder and tokenizer: the
        trie holds only their IDs, so search is confined to them (a task's own candidate
        pool inside a universal pool). Its rows are positions in `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or len(rows) == 0 or len(np.unique(rows)) != len(rows) or \
                rows.min() < 0 or rows.max() >= len(self.item_ids):
            raise ValueError(f"subset needs distinct rows in 0..{len(self.item_ids) - 1}")
        return GenerativeIndex(tokenizer=self.tokenizer, decoder=self.decoder,
                               item_emb=self.item_emb[rows], codes=self.codes[rows],
                               item_ids=[self.item_ids[r] for r in rows], config=self.config,
                               extra=self.extra, item_meta=[self.item_meta[r] for r in rows])

    def _append_rows(self, emb: np.ndarray, codes: np.ndarray) -> None:
        """Append to item_emb / codes through buffers that grow by half when full, so a
        stream of single adds copies the (N, D) embeddings O(log N) times, not N times
        (one copy of 60k x 1280 floats is 0.66 s here)."""
        n, m = len(self.item_emb), len(emb)
        emb_buf, codes_buf = self._emb_buf, self._codes_buf   # item_emb is emb_buf[:n]
        if len(emb_buf) < n + m:
            capacity = max(n + m, n + n // 2, 16)
            emb_buf = np.empty((capacity, self.item_emb.shape[1]), dtype=np.float32)
            codes_buf = np.empty((capacity, self.codes.shape[1]), dtype=np.int64)
            emb_buf[:n], codes_buf[:n] = self.item_emb, self.codes
        emb_buf[n:n + m], codes_buf[n:n + m] = emb, codes
        self._emb_buf, self._codes_buf = emb_buf, codes_buf
        self.item_emb, self.codes = emb_buf[:n + m], codes_buf[:n + m]

    def remove(self, item_ids: list[str]) -> int:
        """Drop items by id; later rows shift down (like FAISS remove_ids). -> number removed."""
        unknown = [i for i in item_ids if i not in self._row_of]
        if unknown:
            raise KeyError(f"unknown item ids: {unknown[:5]}")
        drop = np.zeros(len(self.item_ids), dtype=bool)
        drop[[self._row_of[i] for i in item_ids]] = True
        if drop.all():
            raise ValueError("cannot remove every item: an index needs at least one")
        if self.store is not None:
            self.store.remove(item_ids)
        keep = ~drop
        self.item_emb = np.ascontiguousarray(self.item_emb[keep])
        self.codes = self.codes[keep]
        self._emb_buf, self._codes_buf = self.item_emb, self.codes
        self.item_ids = [i for i, k in zip(self.item_ids, keep, strict=True) if k]
        self.item_meta = [m for m, k in zip(self.item_meta, keep, strict=True) if k]
        self._rebuild()
        return int(drop.sum())

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, item_emb: np.ndarray, *, item_ids: list[str] | None = None,
              queries: np.ndarray | None = None, sampler: Sampler | None = None,
              config: IndexConfig | None = None, progress: bool = False,
              extra: dict[str, Any] | None = None,
              item_meta: list[dict[str, Any]] | None = None,
              item_labels: np.ndarray | None = None,
              item_text_emb: np.ndarray | None = None,
              item_modality: np.ndarray | None = None,
              tokenizer_pairs: tuple[np.ndarray, np.ndarray] | None = None) -> GenerativeIndex:
        """Fit the tokenizer on (N, D) item embeddings and train the decoder.

        queries (Nq, Dq) with `sampler` drawing (query row, item row) pairs; both None
        means self-pairs (query = the item's own embedding). The supervised tokenizers
        need more: "irgen" the items' class labels (N,), "avg" a caption vector per item
        (N, D) in the items' space, "genius" each item's modality (N,) (0 image, 1 text,
        2 image_text; also written to item_meta["modality"]) and, optionally,
        tokenizer_pairs = (queries (P, D) in the items' space, their target rows (P,)) for
        its contrastive loss (default: each item is its own query).
        """
        config = (config or IndexConfig()).check()
        item_emb = np.asarray(item_emb, dtype=np.float32)
        if item_ids is None:
            item_ids = [str(i) for i in range(len(item_emb))]
        if (queries is None) != (sampler is None):
            raise ValueError("pass queries and sampler together, or neither")
        if queries is None:
            queries = item_emb
            sampler = PairSampler(np.arange(len(item_emb)), np.arange(len(item_emb)))
        assert sampler is not None
        timings = {}
        t0 = time.perf_counter()
        tokenizer = tokenizer_class(config.tokenizer)(config.rq)
        side = Side(labels=item_labels, text_emb=item_text_emb, modality=item_modality,
                    pairs=tokenizer_pairs)
        missing = [BUILD_ARGS[n] for n in tokenizer.fit_needs if getattr(side, n) is None]
        if missing:
            raise ValueError(f"the {config.tokenizer!r} tokenizer needs {missing[0]}: pass "
                             f"GenerativeIndex.build(..., {missing[0]}=...)")
        if item_modality is not None and "modality" in tokenizer.encode_needs:
            side.modality = modality = np.asarray(item_modality, dtype=np.int64)
            if modality.shape != (len(item_emb),) or modality.min() < 0 or \
                    modality.max() >= len(MODALITIES):
                raise ValueError(f"item_modality must be ({len(item_emb)},) ints in 0..2 "
                                 f"({', '.join(MODALITIES)})")
            item_meta = [{**(m or {}), "modality": MODALITIES[int(v)]} for m, v in zip(
                item_meta or [{} for _ in item_ids], modality, strict=True)]
        tokenizer = tokenizer.fit(item_emb, side=side)
        codes = _encode_all(tokenizer, item_emb, side, progress=progress)
        timings["tokenizer_s"] = time.perf_counter() - t0
        config.decoder.query_dim = int(np.asarray(queries).shape[1])
        config.decoder.codebook_sizes = tokenizer.codebook_sizes
        torch.manual_seed(config.train.seed)
        decoder = CodeDecoder(config.decoder)
        if config.voken_init:
            init_code_embeddings(decoder, _level_codebooks(tokenizer, config.tokenizer),
                                 seed=config.train.seed, rms=1.0)
        t0 = time.perf_counter()
        losses = train_decoder(decoder, queries=queries, item_codes=codes, sampler=sampler,
                               config=config.train, progress=progress,
                               item_emb=item_emb if config.train.query_aug != "none" else None)
        timings["decoder_s"] = time.perf_counter() - t0
        info = {"train_timings": timings, "final_loss": float(np.mean(losses[-50:])) if losses else None,
                "dead_code_reseeds": tokenizer.reseeds}
        return cls(tokenizer=tokenizer, decoder=decoder, item_emb=item_emb, codes=codes,
                   item_ids=item_ids, config=config, extra={**info, **(extra or {})},
                   item_meta=item_meta)

    # ----------------------------------------------------------------- search
    def __len__(self) -> int:
        return len(self.item_ids)

    def search(self, queries: np.ndarray, k: int = 10, *, beam_size: int | None = None,
               rerank: bool | None = None, query_emb: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, Dq) query embeddings -> (scores (Q, k) float32, item rows (Q, k) int64).

        Scores are the ID's log-probability, or cosine similarity with rerank. Rows are -1
        (score -inf) where fewer than k items were found. `query_emb` is the query in the
        items' embedding space for rerank, when the decoder's input space differs.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.decoder.config.query_dim:
            raise ValueError(f"queries must be (Q, {self.decoder.config.query_dim}), "
                             f"got shape {q.shape}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
        beam = max(beam_size or self.config.search.beam_size, 1)
        rerank = self.config.search.rerank if rerank is None else rerank
        beam = max(beam, min(k, self.table.num_ids))  # k results need k beams when IDs are unique
        rq = q if query_emb is None else np.ascontiguousarray(query_emb, dtype=np.float32)
        if rq.ndim != 2 or len(rq) != len(q):
            raise ValueError(f"query_emb must have one row per query ({len(q)}), got shape "
                             f"{rq.shape}")
        if rerank and rq.shape[1] != self.item_emb.shape[1]:
            raise ValueError("rerank needs queries in the items' embedding space: pass "
                             f"query_emb of width {self.item_emb.shape[1]}")
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        bs = self.config.search.batch_size
        for start in range(0, len(q), bs):
            sl = slice(start, start + bs)
            with torch.inference_mode():
                leaves, leaf_scores = constrained_beam_search(
                    self.decoder.session(torch.from_numpy(q[sl])), self.trie,
                    num_queries=len(q[sl]), beam_size=beam)
            top_items(leaves.numpy(), leaf_scores.numpy(), self.table.offsets,
                      self.table.items, rq[sl], self.item_emb, rerank, scores[sl], rows[sl])
        return scores, rows

    def stats(self) -> dict[str, Any]:
        return {**self.table.stats(),
                "codebook_utilisation": codebook_utilisation(self.codes,
                                                             self.tokenizer.codebook_sizes),
                "trie_bytes": self.trie.nbytes()}

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    def row_of(self, item_id: str) -> int:
        """The row of an item id; KeyError names an unknown id."""
        try:
            return self._row_of[item_id]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r}") from None

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, thumbnails: dict[str, bytes] | None = None,
             progress: bool = False) -> None:
        """Write the index into folder `path` atomically (`genir.persist.save_index`).
        `thumbnails` maps item id -> PNG bytes."""
        from genir.persist import save_index

        save_index(self, path, thumbnails=thumbnails, progress=progress)

    @classmethod
    def load(cls, path: str | Path) -> GenerativeIndex:
        """Read a saved index (format 1 or 2), checking every checksum."""
        return cls.open(path, writable=False)

    @classmethod
    def open(cls, path: str | Path, *, writable: bool = False) -> GenerativeIndex:
        """Load an index; with writable=True keep its item store open under the writer lock
        so add/remove are committed to disk as they happen (call close() when done);
        `genir.persist.open_index`."""
        from genir.persist import open_index

        return open_index(cls, path, writable=writable)

    def close(self) -> None:
        """Release the item store and its writer lock (a no-op when none is open)."""
        if self.store is not None:
            self.store.close()
            self.store = None


ENCODE_CHUNK = 65_536   # items encoded per call when a corpus is larger (a progress bar's step)


def _encode_all(tokenizer: Any, emb: np.ndarray, side: Side, *, progress: bool) -> np.ndarray:
    """Every item's codes; corpora over ENCODE_CHUNK items in chunks with a progress bar
    (smaller ones in one call, as always)."""
    if len(emb) <= ENCODE_CHUNK:
        return tokenizer.encode(emb, side=side)
    from tqdm.auto import tqdm

    modality = None if side.modality is None else np.asarray(side.modality)
    parts = []
    with tqdm(total=len(emb), desc="encode items", unit="item", disable=not progress) as bar:
        for start in range(0, len(emb), ENCODE_CHUNK):
            sl = slice(start, start + ENCODE_CHUNK)
            part_side = Side(modality=modality[sl]) if modality is not None else side
            parts.append(tokenizer.encode(emb[sl], side=part_side))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)


def modality_ids(metas: list[dict[str, Any]]) -> np.ndarray:
    """(N,) int64 modality ids from item metadata ("image", "text" or "image_text")."""
    out = np.empty(len(metas), dtype=np.int64)
    for i, meta in enumerate(metas):
        name = meta.get("modality")
        if name not in MODALITIES:
            raise ValueError(f"item {i}: this index's tokenizer needs item_meta['modality'] "
                             f"in {MODALITIES}, got {name!r}")
        out[i] = MODALITIES.index(name)
    return out


def _level_codebooks(tokenizer: Any, name: str) -> list[torch.Tensor]:
    """Per-level (K_l, D) codebooks of a tokenizer, for voken initialisation."""
    books = getattr(tokenizer, "codebooks", None)
    if books is None and hasattr(tokenizer, "rq"):       # IRGen: RQ in the projected space
        books = tokenizer.rq.codebooks
    if not books or any(b.ndim != 2 for b in books):
        raise ValueError(f"voken_init needs a tokenizer with one codebook per level; "
                         f"{name!r} has none")
    levels = len(tokenizer.codebook_sizes)
    if len(books) == 1 and levels > 1:                    # AVG's shared voken codebook
        books = [books[0]] * levels
    return list(books)


__all__ = ["MAX_K", "TOKENIZERS", "GenerativeIndex", "IndexConfig",
           "SearchConfig", "tokenizer_class"]
