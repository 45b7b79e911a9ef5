"""Universal instruction-driven generative retrieval (the GENIUS setting) on the bundled data.

One index holds every candidate of the universal tasks (`genir.data.universal`: images,
texts and image-text pairs from Open Clip Art, Fashion-MNIST and WordNet); every query is
content plus an instruction naming the modality it wants back, and the first code of every
ID is the item's modality (GENIUS sec. 4.2, `GeniusTokenizer`).

    data = prepare_universal("runs/universal/tasks")   # writes the tasks if missing; embeds
    index = build_universal(data)                     # GENIUS tokenizer + code decoder
    result = evaluate_universal(data, index)           # every task, task pool and global pool

How a query reaches the decoder: its content embedding (the shared image-text space of an
`AlignedEncoder`; an image with text is the normalised sum of both, as GENIUS sums its
towers) concatenated with the embedding of the instruction text, (2D,). The decoder's
prefix (the pooled-prefix conditioning of the spine) sees both, so the instruction decides
the first code. Re-ranking and the flat baseline use the content embedding alone.

Training pairs (what the decoder and the tokenizer's contrastive loss see) come from the
candidate pool only, never from a test query, under two rules:
- indexing pairs (DSI): every candidate is the target of its own content, with the
  instruction of its modality (image -> "retrieve a similar image", text -> "retrieve a
  text that answers the query", image-text pair -> its title with "retrieve an image and
  its caption that match the text");
- task pairs, built like the tasks from candidates that are not a positive of any test
  query of the one-answer tasks (text_to_image, image_to_text, text_to_image_text,
  text_to_text): caption -> its images, image -> its caption, caption -> its pairs, a
  WordNet definition -> its entry, a Fashion-MNIST pool image -> a same-class pool image,
  and an Open Clip Art image + "a similar <category> clip-art" -> another image of that
  category. The last two are category-level: their targets may be any image of the class
  or category (their test positives are most of the pool), as IRGen trains on the
  gallery's classes; the one-answer kinds never target a one-answer test positive.
The projection heads of the encoder are trained on (image, caption) pairs of those same
non-test groups. So no test query's text, image or answer is trained on, except through
content-only indexing pairs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genir.decoder.train import PairSampler
from genir.encoders.base import l2_normalize
from genir.encoders.cache import EmbeddingCache
from genir.eval import metrics
from genir.eval.flat import FlatIndex
from genir.ids.genius import MODALITIES
from genir.index import GenerativeIndex, IndexConfig
from genir.instructions import default_instruction
from genir.query import decoder_input
from genir_experiments.universal_data import GLOBAL_POOL, MANIFEST, TASK_SPECS, TASKS

UNIVERSAL = "universal"           # extra["task"] of a universal index
# the one-answer tasks: their test positives are never a training target
ONE_ANSWER_TASKS = ("text_to_image", "image_to_text", "text_to_image_text", "text_to_text")
CATEGORY_PROMPT = "a similar {} clip-art"   # the image_text_to_image query text
RECALL_KS = (1, 5, 10)
PRECISION_KS = (1, 5, 10)


@dataclass
class UniversalTask:
    name: str
    instruction: str
    target_modality: str
    query_emb: np.ndarray          # (Q, D) content, in the items' space
    decoder_input: np.ndarray      # (Q, 2D) content + instruction
    relevant: list[list[int]]      # per query, its positives' rows in the global pool
    pool_rows: np.ndarray          # the task's own candidate pool, as global rows


@dataclass
class UniversalData:
    root: Path
    item_ids: list[str]
    item_emb: np.ndarray           # (N, D)
    item_modality: np.ndarray      # (N,) 0 image, 1 text, 2 image_text
    item_meta: list[dict[str, Any]]
    train_inputs: np.ndarray       # (P, 2D) decoder inputs of the training pairs
    train_query_emb: np.ndarray    # (P, D) their content part (tokenizer's contrastive loss)
    train_targets: np.ndarray      # (P,) target rows
    train_kinds: dict[str, int]    # pairs per kind
    train_sources: list[tuple[str | None, str | None, str, str]]  # (image, text, instruction,
    #                                                                kind) per training pair
    tasks: dict[str, UniversalTask]
    encoder: Any
    encoder_spec: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def default_config(*, quick: bool = False) -> IndexConfig:
    """GENIUS tokenizer: a 3-code modality level, then 3 levels of 128 codes (19k items)."""
    cfg = IndexConfig(tokenizer="genius")
    cfg.rq.num_levels = 4
    cfg.rq.codebook_size = 64 if quick else 128
    # ours, not the paper's: our queries carry the instruction beside the content, not in
    # it, so the contrastive space has no reason to group targets by modality; code m is
    # trained on the targets of modality m (GeniusConfig.modality_codes)
    cfg.rq.modality_codes = "given"     # type: ignore[attr-defined]
    cfg.rq.steps = 300 if quick else 1000  # type: ignore[attr-defined]
    cfg.train.steps = 500 if quick else 3000
    return cfg


# -- preparing the data ------------------------------------------------------------------------

def prepare_universal(root: str | Path, *, cache: EmbeddingCache | None = None,
                      encoder: Any = None, image_size: int = 128, seed: int = 0,
                      per_task_queries: int = 100, progress: bool = False,
                      build_kwargs: dict[str, Any] | None = None) -> UniversalData:
    """Read (or first write, with `build_universal_tasks`) the universal tasks under `root`,
    embed every candidate and query, and assemble the training pairs.

    encoder: an `AlignedEncoder`; one not yet fitted (or None: EfficientNet-Lite0 at
    `image_size` and MiniLM) gets its projection heads trained on the non-test (image,
    caption) pairs, a fitted one (from a saved universal index) is used as it is. build_kwargs go to
    `build_universal_tasks` (fixture roots in tests)."""
    from genir.encoders.aligned import AlignedEncoder
    from genir_experiments.universal_data import build_universal_tasks, load_universal_task

    root = Path(root)
    if not (root / MANIFEST).is_file():
        build_universal_tasks(root, seed=seed, per_task_queries=per_task_queries,
                              **(build_kwargs or {}))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    pool = _read_pool(root, manifest["global_pool"]["file"])
    row_of = {c["did"]: i for i, c in enumerate(pool)}
    # each task against its own pool (read once); its rows and positives as global rows
    splits = {t: load_universal_task(root, t, pool="task") for t in manifest["tasks"]}
    pool_rows: dict[str, np.ndarray] = {}
    relevant: dict[str, list[list[int]]] = {}
    for name, split in splits.items():
        missing = [d for d in split.gallery.item_ids if d not in row_of]
        if missing:
            raise ValueError(f"{root}: task {name}'s candidates {missing[:3]} are not in "
                             f"{GLOBAL_POOL}")
        pool_rows[name] = np.array([row_of[d] for d in split.gallery.item_ids], dtype=np.int64)
        relevant[name] = [[int(pool_rows[name][r]) for r in rel] for rel in split.relevant]
    t0 = time.perf_counter()
    cache = cache or EmbeddingCache()
    fit_heads = not getattr(encoder, "fitted", False)
    if encoder is None:
        from genir.encoders.towers import EfficientNetLiteTower

        encoder = AlignedEncoder(image_tower=EfficientNetLiteTower(image_size=image_size),
                                 cache=cache)
    sources = manifest.get("sources", {})

    # which candidates are test answers, and which texts / images are test queries
    forbidden = {pool[r]["did"] for t in ONE_ANSWER_TASKS if t in splits
                 for rel in relevant[t] for r in rel}
    query_texts = {_key(x) for s in splits.values() for x in (s.queries.texts or []) if x}

    # Open Clip Art: each item's caption (the candidates keep only the title or one caption
    # per group), from the corpus the tasks were built from
    captions: dict[str, str] = {}
    if "openclipart" in sources:
        from genir.data.openclipart import load_openclipart

        corpus = load_openclipart(root=sources["openclipart"]["root"])
        assert corpus.texts is not None
        captions = dict(zip(corpus.item_ids, corpus.texts, strict=True))
        # the tower features of the whole corpus (cached by the openclipart task too)
        feats = _Features(encoder)
        feats.add_images([str(p) for p in corpus.images or []], progress=progress)
        feats.add_texts(list(corpus.texts), progress=progress)
    else:
        feats = _Features(encoder)
    definitions: dict[str, str] = {}
    if "wordnet" in sources:
        from genir.data.wordnet import load_wordnet

        wanted = {c["src"].get("item_id") for c in pool if c["src"].get("source") == "wordnet"}
        for sid, meta in _wordnet_definitions(load_wordnet, sources["wordnet"]["root"], wanted):
            definitions[sid] = meta

    # every image and text that will be embedded
    instructions = {t: TASK_SPECS[t].instruction for t in splits}
    index_instruction = {m: default_instruction(m, m).text for m in ("image", "text")}
    index_instruction["image_text"] = default_instruction("text", "image_text").text
    images = [c["img"] for c in pool if c["img"]]
    texts = [c["txt"] for c in pool if c["txt"]] + list(instructions.values()) + \
        list(index_instruction.values()) + list(definitions.values()) + \
        list({CATEGORY_PROMPT.format(c["src"]["category"]) for c in pool
              if c["src"].get("category")})
    for s in splits.values():
        images += [p for p in (s.queries.images or []) if p]
        texts += [x for x in (s.queries.texts or []) if x]
    feats.add_images(images, progress=progress)
    feats.add_texts(texts, progress=progress)
    timings = {"embed_s": time.perf_counter() - t0}

    # caption groups: caption key -> the #caption candidate's row
    caption_row = {_key(c["txt"]): i for i, c in enumerate(pool)
                   if c["modality"] == "text" and c["did"].endswith("#caption")}
    clip_images = [i for i, c in enumerate(pool)
                   if c["modality"] == "image" and c["src"].get("source") == "openclipart"]

    def group_caption(row: int) -> tuple[str | None, int | None]:
        text = captions.get(pool[row]["src"].get("item_id", ""))
        return text, caption_row.get(_key(text)) if text else None

    t0 = time.perf_counter()
    if fit_heads:
        pairs = []
        for r in clip_images:
            text, crow = group_caption(r)
            if text and pool[r]["did"] not in forbidden and _key(text) not in query_texts and \
                    (crow is None or pool[crow]["did"] not in forbidden):
                pairs.append((pool[r]["img"], text))
        if len(pairs) < 2:
            raise ValueError(f"{root}: fewer than 2 non-test (image, caption) pairs to align "
                             "the image and text towers on")
        encoder.fit_features(feats.image([p[0] for p in pairs]), feats.text([p[1] for p in pairs]),
                             progress=progress)
    timings["align_s"] = time.perf_counter() - t0

    def embed_many(items: list[tuple[str | None, str | None]]) -> np.ndarray:
        """Batched `content`: images, texts and the normalised sum of both."""
        dim = encoder.dim
        out = np.zeros((len(items), dim), dtype=np.float32)
        img_rows = [i for i, (img, _) in enumerate(items) if img]
        txt_rows = [i for i, (_, txt) in enumerate(items) if txt]
        if img_rows:
            out[img_rows] += encoder.project_images(feats.image([str(items[i][0]) for i in img_rows]))
        if txt_rows:
            out[txt_rows] += encoder.project_texts(feats.text([str(items[i][1]) for i in txt_rows]))
        return l2_normalize(out)

    item_emb = embed_many([(c["img"], c["txt"]) for c in pool])
    item_modality = np.array([MODALITIES.index(c["modality"]) for c in pool], dtype=np.int64)
    ins_emb = {text: embed_many([(None, text)])[0]
               for text in {*instructions.values(), *index_instruction.values()}}

    # training pairs: (query image, query text, instruction, target row, kind)
    rng = np.random.default_rng(seed)
    train: list[tuple[str | None, str | None, str, int, str]] = []
    t2i, i2t, t2it = (default_instruction(*p).text for p in
                      (("text", "image"), ("image", "text"), ("text", "image_text")))
    for r, c in enumerate(pool):   # indexing pairs: each candidate from its own content
        if c["modality"] == "image_text":
            train.append((None, c["txt"], index_instruction["image_text"], r, "index"))
        else:
            train.append((c["img"], c["txt"], index_instruction[c["modality"]], r, "index"))
    pair_row = {c["src"].get("item_id"): i for i, c in enumerate(pool) if c["modality"] == "image_text"}
    for r in clip_images:
        text, crow = group_caption(r)
        if text is None or crow is None or pool[crow]["did"] in forbidden:
            continue
        if pool[r]["did"] not in forbidden:
            train.append((None, pool[crow]["txt"], t2i, r, "text_to_image"))
            train.append((pool[r]["img"], None, i2t, crow, "image_to_text"))
        prow = pair_row.get(pool[r]["src"].get("item_id"))
        if prow is not None and pool[prow]["did"] not in forbidden:
            train.append((None, pool[crow]["txt"], t2it, prow, "text_to_image_text"))
    if "image_text_to_image" in splits:
        by_category: dict[str, list[int]] = {}
        for r in clip_images:
            cat = pool[r]["src"].get("category")
            if cat and cat != "unsorted":
                by_category.setdefault(cat, []).append(r)
        it2i = TASK_SPECS["image_text_to_image"].instruction
        for cat, rows in by_category.items():
            if len(rows) < 2:
                continue
            for r in rows:
                others = rng.choice(len(rows), size=2)
                for o in others:
                    if rows[o] != r:
                        train.append((pool[r]["img"], CATEGORY_PROMPT.format(cat), it2i, rows[o],
                                      "image_text_to_image"))
    if "image_to_image" in splits:
        by_label: dict[str, list[int]] = {}
        for r, c in enumerate(pool):
            if c["src"].get("source") == "fashion-mnist":
                by_label.setdefault(str(c["src"].get("label")), []).append(r)
        i2i = TASK_SPECS["image_to_image"].instruction
        for rows in by_label.values():
            for r in rows:
                for o in rng.choice(len(rows), size=5):
                    train.append((pool[r]["img"], None, i2i, rows[o], "image_to_image"))
    t2t = TASK_SPECS["text_to_text"].instruction
    for r, c in enumerate(pool):
        definition = definitions.get(c["src"].get("item_id", ""))
        if definition and c["did"] not in forbidden and _key(definition) not in query_texts:
            train.append((None, definition, t2t, r, "text_to_text"))

    train_query_emb = embed_many([(img, txt) for img, txt, _, _, _ in train])
    train_inputs = decoder_input(train_query_emb, np.stack([ins_emb[t[2]] for t in train]))
    kinds: dict[str, int] = {}
    for t in train:
        kinds[t[4]] = kinds.get(t[4], 0) + 1

    tasks: dict[str, UniversalTask] = {}
    for name, split in splits.items():
        q = split.queries
        no_images: list[Any] = [None] * len(q)
        qs = list(zip(q.images or no_images, q.texts or no_images, strict=True))
        q_emb = embed_many([(img or None, txt or None) for img, txt in qs])
        tasks[name] = UniversalTask(
            name=name, instruction=instructions[name],
            target_modality=TASK_SPECS[name].target_modality, query_emb=q_emb,
            decoder_input=decoder_input(q_emb, ins_emb[instructions[name]]),
            relevant=relevant[name], pool_rows=pool_rows[name])
    item_meta = [{"modality": c["modality"], "caption": c["txt"] or "",
                  **({"image_path": c["img"]} if c["img"] else {}),
                  "source": c["src"].get("source", "")} for c in pool]
    return UniversalData(
        root=root, item_ids=[c["did"] for c in pool], item_emb=item_emb,
        item_modality=item_modality, item_meta=item_meta, train_inputs=train_inputs,
        train_query_emb=train_query_emb, train_targets=np.array([t[3] for t in train]),
        train_kinds=kinds, train_sources=[(img, txt, ins, kind) for img, txt, ins, _, kind in train],
        tasks=tasks, encoder=encoder,
        encoder_spec={"type": "aligned", "path": "encoder", "image_size": image_size,
                      "instructions": "concatenated"},
        timings=timings)


def build_universal(data: UniversalData, config: IndexConfig | None = None, *,
                    progress: bool = False) -> GenerativeIndex:
    """The universal index: GENIUS tokenizer on the pool, decoder on the training pairs."""
    config = config or default_config()
    return GenerativeIndex.build(
        data.item_emb, item_ids=data.item_ids, queries=data.train_inputs,
        sampler=PairSampler(np.arange(len(data.train_targets)), data.train_targets),
        config=config, progress=progress, item_meta=data.item_meta,
        item_modality=data.item_modality,
        tokenizer_pairs=(data.train_query_emb, data.train_targets),
        extra={"task": UNIVERSAL, "encoder": data.encoder_spec,
               "train_pairs": data.train_kinds, "universal_root": str(data.root)})


# -- evaluation ----------------------------------------------------------------------------------

def evaluate_universal(data: UniversalData, index: GenerativeIndex, *,
                       tasks: list[str] | None = None, beam_size: int | None = None,
                       ) -> dict[str, Any]:
    """Per task, per pool ("task", "global"), per method (genir, genir+rerank, flat knn):
    R@1/5/10, P@1/5/10, MRR, the share of queries whose top-1 and whose whole top-10 have
    the instructed modality, and queries/s."""
    names = tasks or list(data.tasks)
    unknown = [t for t in names if t not in data.tasks]
    if unknown:
        raise ValueError(f"unknown universal tasks {unknown}; this data has {list(data.tasks)}")
    if index.item_ids != data.item_ids:
        raise ValueError("the index was not built on this universal pool")
    k = max(*RECALL_KS, *PRECISION_KS)
    modality = index.item_modality
    out: dict[str, Any] = {}
    for name in names:
        task = data.tasks[name]
        want = MODALITIES.index(task.target_modality)
        out[name] = {"instruction": task.instruction, "num_queries": len(task.query_emb),
                     "pools": {}}
        for pool in ("task", "global"):
            rows_map = task.pool_rows if pool == "task" else np.arange(len(data.item_ids))
            sub = index.subset(task.pool_rows) if pool == "task" else index
            table: dict[str, dict[str, float]] = {}
            for method in ("genir", "genir+rerank", "flat knn"):
                rerank = method == "genir+rerank"
                if method != "flat knn":   # untimed: the kernels' load and the packing
                    first = slice(0, sub.config.search.batch_size)
                    sub.search(task.decoder_input[first], k, beam_size=beam_size,
                               rerank=rerank, query_emb=task.query_emb[first])
                t0 = time.perf_counter()
                if method == "flat knn":
                    _, got = FlatIndex(data.item_emb[rows_map]).search(task.query_emb, k)
                else:
                    _, got = sub.search(task.decoder_input, k, beam_size=beam_size,
                                        rerank=rerank, query_emb=task.query_emb)
                seconds = time.perf_counter() - t0
                rows = np.where(got >= 0, rows_map[np.maximum(got, 0)], -1)
                table[method] = score_rows(rows, task.relevant, modality, want)
                table[method]["queries/s"] = len(rows) / max(seconds, 1e-9)
            out[name]["pools"][pool] = {"num_candidates": len(rows_map), "methods": table}
    return out


def score_rows(rows: np.ndarray, relevant: list[list[int]], item_modality: np.ndarray,
               want: int) -> dict[str, float]:
    """(Q, K) global rows (-1 padded) -> metrics and modality-match shares."""
    hits = np.zeros(rows.shape, dtype=bool)
    for q, rel in enumerate(relevant):
        hits[q] = np.isin(rows[q], np.asarray(rel, dtype=np.int64)) & (rows[q] >= 0)
    res = metrics.summarize(hits, precision_ks=PRECISION_KS, recall_ks=RECALL_KS)
    mod = np.where(rows >= 0, item_modality[np.maximum(rows, 0)], -1)
    res["modality@1"] = float((mod[:, 0] == want).mean())
    valid = rows >= 0
    res["modality@10"] = float(((mod == want) | ~valid).all(1).mean())
    return res


def format_universal(result: dict[str, Any]) -> str:
    """Markdown table: one row per task, pool and method."""
    cols = ["R@1", "R@5", "R@10", "P@10", "MRR", "modality@1", "modality@10", "queries/s"]
    lines = ["| task | pool | method | " + " | ".join(cols) + " |",
             "| --- | --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for name, task in result.items():
        for pool, res in task["pools"].items():
            for method, row in res["methods"].items():
                cells = [f"{row[c]:.1f}" if c == "queries/s" else f"{row[c]:.3f}" for c in cols]
                lines.append(f"| {name} | {pool} ({res['num_candidates']}) | {method} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- helpers -------------------------------------------------------------------------------------

class _Features:
    """Tower features by image path / text, filled in batches through the encoder's cache."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._img: dict[str, np.ndarray] = {}
        self._txt: dict[str, np.ndarray] = {}

    def add_images(self, paths: list[str], *, progress: bool = False) -> None:
        todo = sorted({p for p in paths if p not in self._img})
        if todo:
            self._img.update(zip(todo, self.encoder.image_features(todo, progress=progress),
                                 strict=True))

    def add_texts(self, texts: list[str], *, progress: bool = False) -> None:
        todo = sorted({t for t in texts if t not in self._txt})
        if todo:
            self._txt.update(zip(todo, self.encoder.text_features(todo, progress=progress),
                                 strict=True))

    def image(self, paths: list[str]) -> np.ndarray:
        self.add_images(paths)
        return np.stack([self._img[p] for p in paths])

    def text(self, texts: list[str]) -> np.ndarray:
        self.add_texts(texts)
        return np.stack([self._txt[t] for t in texts])


def _read_pool(root: Path, name: str) -> list[dict[str, Any]]:
    out = []
    with (root / name).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                img = obj.get("img_path")
                out.append({"did": obj["did"], "txt": obj.get("txt") or None,
                            "img": str(root / img) if img else None,
                            "modality": "image_text" if "," in obj["modality"] else obj["modality"],
                            "src": json.loads(obj.get("src_content") or "{}")})
    return out


def _wordnet_definitions(load_wordnet: Any, root: str, wanted: set[str]):
    corpus = load_wordnet(root=root)
    defs = corpus.metadata.get("definitions")
    for i, item_id in enumerate(corpus.item_ids):
        if item_id in wanted:
            definition = defs[i] if defs is not None else None
            if definition:
                yield item_id, definition


def _key(text: str | None) -> str:
    return " ".join((text or "").casefold().split())


__all__ = ["TASKS", "UNIVERSAL", "UniversalData", "UniversalTask", "build_universal",
           "decoder_input", "default_config", "evaluate_universal", "format_universal",
           "prepare_universal", "score_rows"]
