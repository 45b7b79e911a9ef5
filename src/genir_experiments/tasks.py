"""The bundled evaluation tasks: what `genir demo`, `genir build` and `genir eval` run.

- fashion-mnist (IRGen set-up, image -> image): gallery = the 60k training images, a
  seeded sample of test images as queries, relevance = same class; the top of the image
  tower is fine-tuned on the gallery's labels (genir.encoders.tuning; `tune_tower=False`
  keeps it frozen), and the decoder is trained on (image, random image of the same class)
  pairs from the gallery.
- openclipart (AVG set-up, text -> image): every clip-art image is an item; a seeded
  held-out split of captions are the queries, relevance = the caption's own image. The
  projection heads and the decoder never see held-out captions; the decoder is trained on
  (training caption -> its image) pairs plus (image -> own ID) indexing pairs for all
  items, the DSI recipe for items without training queries.

Each task embeds once (cached), builds a `GenerativeIndex`, and scores genir,
genir + rerank and flat exact k-NN on the same embeddings in the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genir.decoder.train import PairSampler, SameLabelSampler
from genir.encoders.cache import EmbeddingCache
from genir.eval import metrics
from genir.eval.flat import FlatIndex
from genir.index import GenerativeIndex, IndexConfig

TASKS = ("fashion-mnist", "openclipart")
MAX_HELD_OUT = 1000  # openclipart captions kept out of all training (at most n / 5)


@dataclass
class TaskData:
    """Everything a task needs after embedding: the index inputs and the query side."""

    name: str
    item_ids: list[str]
    item_emb: np.ndarray          # (N, D) gallery embeddings
    train_queries: np.ndarray     # (Nq, D) decoder training queries
    sampler: Any                  # draws (train query row, item row) pairs
    query_emb: np.ndarray         # (Q, D) evaluation queries
    relevance: dict[str, np.ndarray]  # hit_matrix keyword arguments
    num_relevant: np.ndarray      # (Q,) relevant items per query
    metric_ks: dict[str, tuple[int, ...]]
    encoder_spec: dict[str, Any]
    encoder: Any = None           # an object with save(path), when the task trained one
    timings: dict[str, float] = field(default_factory=dict)
    texts: list[str] | None = None
    item_meta: list[dict[str, Any]] | None = None   # per gallery item: caption, label, source
    item_labels: np.ndarray | None = None     # (N,) class per item (IRGen tokenizer)
    item_text_emb: np.ndarray | None = None   # (N, D) each item's caption vector (AVG tokenizer)
    thumbnail_source: Any = None  # (N, H, W) uint8 gallery pixels to store as PNG thumbnails
    query_source: Any = None      # the evaluation queries' raw content: (Q, H, W) uint8 pixels
    #                               (Fashion-MNIST); Openclipart's are `texts`

    def thumbnails(self) -> dict[str, bytes] | None:
        """item id -> PNG bytes, for galleries whose pixels are in memory (Fashion-MNIST);
        items with an image_path in their metadata get theirs made on request."""
        if self.thumbnail_source is None:
            return None
        import io

        from PIL import Image

        out = {}
        for item_id, pixels in zip(self.item_ids, self.thumbnail_source, strict=True):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(pixels)).save(buf, format="PNG")
            out[item_id] = buf.getvalue()
        return out


@dataclass
class TaskResult:
    task: str
    rows: dict[str, dict[str, float]]   # method -> metric -> value
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "rows": self.rows, "info": self.info}


def default_config(task: str, *, quick: bool = False) -> IndexConfig:
    """The tuned defaults of each bundled task (quick: fewer steps, for tests and smoke runs)."""
    _check_task(task)
    cfg = IndexConfig()
    if quick:
        cfg.train.steps = 500
    if task == "openclipart":
        # 8k items: 3 levels of 128 codes (2M IDs) leave few collisions but the duplicated
        # captions/images; 128 and 256 codes scored the same (genir R@10 0.208 vs 0.203,
        # measured with a 3-layer decoder on an earlier held-out split)
        cfg.rq.codebook_size = 64 if quick else 128
        cfg.rq.num_levels = 3
        cfg.train.steps = 300 if quick else 1500
    return cfg


def prepare(task: str, *, cache: EmbeddingCache | None = None, num_queries: int = 1000,
            image_size: int | None = None, limit: int | None = None, seed: int = 0,
            encoder: Any = None, tune_tower: bool | None = None,
            progress: bool = False) -> TaskData:
    """Load a bundled task and embed it (cached).

    encoder: an already fitted encoder from a saved index to reuse instead of training one:
    for openclipart an `AlignedEncoder` (projection heads), for fashion-mnist a
    `TunedEfficientNetLite`.
    tune_tower (fashion-mnist): fine-tune the top of the image tower on the gallery's class
    labels (default True; False embeds with the frozen ImageNet tower, as the ablations do).
    """
    _check_task(task)
    cache = cache or EmbeddingCache()
    if task == "fashion-mnist":
        return _prepare_fashion_mnist(cache=cache, num_queries=num_queries,
                                      image_size=image_size or 64, limit=limit, seed=seed,
                                      encoder=encoder,
                                      tune_tower=True if tune_tower is None else tune_tower,
                                      progress=progress)
    return _prepare_openclipart(cache=cache, num_queries=num_queries,
                                image_size=image_size or 128, limit=limit, seed=seed,
                                encoder=encoder, progress=progress)


def _prepare_fashion_mnist(*, cache: EmbeddingCache, num_queries: int, image_size: int,
                           limit: int | None, seed: int, encoder: Any, tune_tower: bool,
                           progress: bool) -> TaskData:
    from genir.data.fashion_mnist import load_fashion_mnist
    from genir.encoders.towers import EfficientNetLiteTower

    gallery = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(gallery):
        gallery = gallery.subset(np.sort(rng.choice(len(gallery), limit, replace=False)))
    queries = test.subset(np.sort(rng.choice(len(test), min(num_queries, len(test)),
                                             replace=False)))
    gallery_images, query_images = gallery.images, queries.images
    assert gallery_images is not None and query_images is not None
    labels = gallery.labels
    assert labels is not None and queries.labels is not None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if encoder is not None or tune_tower:
        encoder, item_emb = _tuned_tower(encoder, image_size, gallery_images, labels, cache,
                                         timings, progress)
        query_emb = cache.get_or_compute(encoder.cache_key(), "image", query_images,
                                         lambda: encoder.encode_images(query_images))
        encoder_spec: dict[str, Any] = {"type": "efficientnet-lite0-tuned",
                                        "image_size": image_size, "path": "encoder"}
    else:
        tower = EfficientNetLiteTower(image_size=image_size)
        item_emb = cache.get_or_compute(tower.cache_key(), "image", gallery_images,
                                        lambda: tower.encode_images(gallery_images,
                                                                    progress=progress))
        query_emb = cache.get_or_compute(tower.cache_key(), "image", query_images,
                                         lambda: tower.encode_images(query_images,
                                                                     progress=progress))
        encoder_spec = {"type": "efficientnet-lite0", "image_size": image_size}
    timings["embed_s"] = time.perf_counter() - t0 - timings.get("tune_s", 0.0)
    return TaskData(
        name="fashion-mnist", item_ids=gallery.item_ids, item_emb=item_emb,
        train_queries=item_emb, sampler=SameLabelSampler(labels, labels), query_emb=query_emb,
        relevance={"query_labels": queries.labels, "item_labels": labels},
        num_relevant=np.bincount(labels, minlength=10)[queries.labels],
        metric_ks={"precision": (1, 10, 30), "recall": (10,), "map": (100,)},
        encoder_spec=encoder_spec, encoder=encoder, timings=timings,
        item_meta=[{"caption": gallery.label_names[lab], "label": gallery.label_names[lab],
                    "source": f"fashion-mnist {item_id}"}
                   for item_id, lab in zip(gallery.item_ids, labels.tolist(), strict=True)]
        if gallery.label_names else None,
        thumbnail_source=gallery_images if isinstance(gallery_images, np.ndarray) else None,
        query_source=query_images, item_labels=labels)


def _tuned_tower(encoder: Any, image_size: int, images: Any, labels: np.ndarray,
                 cache: EmbeddingCache, timings: dict[str, float], progress: bool
                 ) -> tuple[Any, np.ndarray]:
    """The gallery through a fine-tuned tower: `encoder` (a saved index's) as is, or a new
    top trained on the gallery's labels. The trunk maps and the tuned weights are cached
    (same images, labels and config -> the same seeded training, so it runs once).
    -> (the encoder, the gallery embeddings)"""
    from genir.encoders.cache import content_digest
    from genir.encoders.towers import EfficientNetLiteTower
    from genir.encoders.tuning import TunedEfficientNetLite, tune_key

    if encoder is None:
        encoder = TunedEfficientNetLite(EfficientNetLiteTower(image_size=image_size))
    maps = cache.get_or_compute(encoder.trunk_key(), "trunk", images,
                                lambda: encoder.trunk(images, progress=progress),
                                dtype=np.float16)
    if not encoder.fitted:
        t0 = time.perf_counter()
        key = tune_key(f"{encoder.trunk_key()}|{content_digest(images)}", labels,
                       encoder.config)
        weights = cache.root / f"tower-top-{key}.safetensors"
        if cache.enabled and weights.exists():
            encoder.load_top(weights)
        else:
            encoder.fit(maps, labels, progress=progress)
            if cache.enabled:
                encoder.save_top(weights)
        timings["tune_s"] = time.perf_counter() - t0
    return encoder, cache.get_or_compute(encoder.cache_key(), "image", images,
                                         lambda: encoder.embed_trunk(maps))


def _prepare_openclipart(*, cache: EmbeddingCache, num_queries: int, image_size: int,
                         limit: int | None, seed: int, encoder: Any, progress: bool) -> TaskData:
    from genir.data.openclipart import load_openclipart
    from genir.encoders.aligned import AlignedEncoder
    from genir.encoders.towers import EfficientNetLiteTower

    corpus = load_openclipart(limit=limit)
    assert corpus.texts is not None and corpus.images is not None
    n = len(corpus)
    rng = np.random.default_rng(seed)
    # the held-out pool is fixed by the seed alone (not by num_queries), so an index built
    # with any num_queries never trained on a caption that a later evaluation asks
    pool = rng.permutation(n)[:min(MAX_HELD_OUT, n // 5)]
    held_out = np.sort(pool[:num_queries])
    train = np.setdiff1d(np.arange(n), pool)
    fit_heads = encoder is None
    if encoder is None:
        encoder = AlignedEncoder(image_tower=EfficientNetLiteTower(image_size=image_size),
                                 cache=cache)
    t0 = time.perf_counter()
    image_feats = encoder.image_features(corpus.images, progress=progress)
    text_feats = encoder.text_features(corpus.texts, progress=progress)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if fit_heads:
        encoder.fit_features(image_feats[train], text_feats[train], progress=progress)
    align_s = time.perf_counter() - t0
    item_emb = encoder.project_images(image_feats)
    text_emb = encoder.project_texts(text_feats)
    # decoder training queries: training captions, then every image (indexing pairs)
    train_queries = np.concatenate([text_emb[train], item_emb])
    targets = np.concatenate([train, np.arange(n)])
    return TaskData(
        name="openclipart", item_ids=corpus.item_ids, item_emb=item_emb,
        train_queries=train_queries,
        sampler=PairSampler(np.arange(len(targets)), targets),
        query_emb=text_emb[held_out], relevance={"relevant_items": held_out},
        num_relevant=np.ones(len(held_out), dtype=np.int64),
        metric_ks={"precision": (), "recall": (1, 5, 10), "map": ()},
        encoder_spec={"type": "aligned", "path": "encoder", "image_size": image_size,
                      "held_out": {"seed": seed, "size": len(pool)}},
        encoder=encoder, timings={"embed_s": embed_s, "align_s": align_s},
        texts=[corpus.texts[i] for i in held_out],
        item_text_emb=_captions_without_held_out(text_emb, item_emb, pool),
        item_meta=[{"caption": text, "image_path": str(path), "source": "openclipart"}
                   for text, path in zip(corpus.texts, corpus.images, strict=True)])


def _captions_without_held_out(text_emb: np.ndarray, item_emb: np.ndarray,
                               pool: np.ndarray) -> np.ndarray:
    """Each item's caption vector for a caption-aligned tokenizer (AVG), except the held-out
    query pool: those items get their own image vector, so no query caption is trained on."""
    out = text_emb.copy()
    out[pool] = item_emb[pool]
    return out


def build(data: TaskData, config: IndexConfig, *, progress: bool = False) -> GenerativeIndex:
    return GenerativeIndex.build(data.item_emb, item_ids=data.item_ids,
                                 queries=data.train_queries, sampler=data.sampler,
                                 config=config, progress=progress,
                                 extra={"task": data.name, "encoder": data.encoder_spec,
                                        "item_modality": "image"},
                                 item_meta=data.item_meta, item_labels=data.item_labels,
                                 item_text_emb=data.item_text_emb)


def evaluate(data: TaskData, index: GenerativeIndex, *, beam_size: int | None = None
             ) -> TaskResult:
    ks = data.metric_ks
    k = max([*ks["precision"], *ks["recall"], *ks["map"], 1])
    runs: dict[str, tuple[np.ndarray, float]] = {}
    for method, rerank in (("genir", False), ("genir+rerank", True)):
        # queries/s leaves out one-off costs: the kernels' load or compile (`genir compile`)
        # and the weights' packing happen in an untimed first search
        index.search(data.query_emb[:index.config.search.batch_size], k, beam_size=beam_size,
                     rerank=rerank)
        t0 = time.perf_counter()
        _, rows = index.search(data.query_emb, k, beam_size=beam_size, rerank=rerank)
        runs[method] = rows, time.perf_counter() - t0
    t0 = time.perf_counter()
    _, rows = FlatIndex(data.item_emb).search(data.query_emb, k)
    runs["flat knn"] = rows, time.perf_counter() - t0
    table = {}
    for method, (rows, seconds) in runs.items():
        hits = metrics.hit_matrix(rows, **data.relevance)
        summary = metrics.summarize(hits, precision_ks=ks["precision"], recall_ks=ks["recall"],
                                    num_relevant=data.num_relevant,
                                    map_k=ks["map"][0] if ks["map"] else None)
        summary["queries/s"] = len(data.query_emb) / max(seconds, 1e-9)
        table[method] = summary
    info = {"num_items": len(index), "num_queries": len(data.query_emb),
            "timings": data.timings, **index.extra, "index_stats": index.stats(),
            "beam_size": beam_size or index.config.search.beam_size}
    return TaskResult(task=data.name, rows=table, info=info)


def format_table(result: TaskResult) -> str:
    methods = list(result.rows)
    cols = list(result.rows[methods[0]])
    width = max(len(m) for m in methods) + 2
    lines = [f"{result.task}: {result.info['num_queries']} queries, "
             f"{result.info['num_items']} items",
             "method".ljust(width) + "".join(c.rjust(11) for c in cols)]
    for m in methods:
        cells = [f"{v:11.1f}" if c == "queries/s" else f"{v:11.3f}"
                 for c, v in result.rows[m].items()]
        lines.append(m.ljust(width) + "".join(cells))
    return "\n".join(lines)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
