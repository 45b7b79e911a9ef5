"""Universal instruction-driven retrieval tasks built from the bundled data, in M-BEIR files.

GENIUS (Kim et al.) and UniIR's M-BEIR evaluate one model on many tasks: every query comes
with an instruction naming the modality it wants back, and is searched either in its
task's own candidate pool or in one global pool holding every task's candidates. This
file builds such a benchmark from the Debian data (Open Clip Art, Fashion-MNIST, WordNet)
and writes it in the M-BEIR jsonl layout, so `load_mbeir` reads it exactly as it reads the
real M-BEIR release:

    task                 query            -> target          source       M-BEIR task id
    text_to_image        caption          -> its image(s)    openclipart  0
    text_to_text         definition       -> its sense entry wordnet      1
    text_to_image_text   keywords         -> (image, title)  openclipart  2
    image_to_text        image            -> its caption     openclipart  3
    image_to_image       test image       -> same class      fashion-mnist 4
    image_text_to_image  image + "a similar <category> clip-art"
                                          -> same category   openclipart  7

Per task, `{task}_queries.jsonl`, `{task}_pool.jsonl` and `{task}_qrels.txt`; for all of
them `global_pool.jsonl` (every candidate once, by did) and `manifest.json`. See
docs/universal.md for the constructions and the leakage rule. This file reads data and
writes text and PNG files; it embeds, trains and downloads nothing.

Why one file of ~600 lines: the six tasks share one deduplicated pool and one writer; split
per task, each file would re-import and re-check the same pool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genir.data.corpus import MissingDataError
from genir.data.papers import RetrievalSplit, load_mbeir
from genir.io import file_digest

__all__ = ["TASKS", "TASK_SPECS", "TaskSpec", "build_universal_tasks", "load_universal_task"]

FORMAT = "genir-universal/1"
MANIFEST = "manifest.json"
GLOBAL_POOL = "global_pool.jsonl"
FASHION_IMAGE_DIR = "images/fashion-mnist"  # PNGs written here, relative to out_dir
MBEIR_MODALITY = {"text": "text", "image": "image", "image_text": "image,text"}
SOURCE_STREAMS = {"openclipart": 1, "fashion-mnist": 2, "wordnet": 3}  # rng per source
EXCLUDED_CATEGORIES = ("unsorted",)  # Open Clip Art folders that say nothing of the content
LEAKAGE_RULE = ("no query's text equals (case and spacing ignored) the text of any candidate "
                "in the global pool, and no query's image file is any candidate's image file")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    query_modality: str    # "text", "image" or "image_text" (genir.data.corpus.MODALITIES)
    target_modality: str
    mbeir_task_id: int     # UniIR's numbering of (query, target) modality pairs
    source: str

    @property
    def instruction(self) -> str:
        """The service's instruction for this modality pair (genir.instructions)."""
        # imported here: genir.instructions imports genir.data, whose __init__ imports us
        from genir.instructions import default_instruction

        return default_instruction(self.query_modality, self.target_modality).text


TASK_SPECS = {spec.name: spec for spec in (
    TaskSpec("text_to_image", "text", "image", 0, "openclipart"),
    TaskSpec("image_to_text", "image", "text", 3, "openclipart"),
    TaskSpec("image_to_image", "image", "image", 4, "fashion-mnist"),
    TaskSpec("text_to_text", "text", "text", 1, "wordnet"),
    TaskSpec("text_to_image_text", "text", "image_text", 2, "openclipart"),
    TaskSpec("image_text_to_image", "image_text", "image", 7, "openclipart"),
)}
TASKS = tuple(TASK_SPECS)
# Open Clip Art caption groups are handed to its tasks in this order (first come, first
# served along one seeded permutation), so each group plays one role at most.
OPENCLIPART_ROLES = ("text_to_image", "text_to_image_text", "image_to_text",
                     "image_text_to_image")


@dataclass
class _Candidate:
    did: str
    modality: str                 # genir modality
    txt: str | None = None
    img_path: str | None = None   # absolute, or relative to out_dir
    src: dict[str, Any] = field(default_factory=dict)

    def line(self) -> dict[str, Any]:
        return {"txt": self.txt, "img_path": self.img_path,
                "modality": MBEIR_MODALITY[self.modality], "did": self.did,
                "src_content": json.dumps(self.src, sort_keys=True)}


@dataclass
class _Query:
    txt: str | None
    img_path: str | None
    positives: list[str]          # dids
    src: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Task:
    pool: list[_Candidate]
    queries: list[_Query]


# -- the builder -----------------------------------------------------------------------------

def build_universal_tasks(out_dir: str | Path, *, seed: int = 0, per_task_queries: int = 100,
                          tasks: Sequence[str] = TASKS, fashion_gallery_size: int = 1000,
                          wordnet_pool_size: int = 2000, openclipart_limit: int | None = None,
                          validate_images: bool = True,
                          openclipart_root: str | Path | None = None,
                          fashion_mnist_root: str | Path | None = None,
                          wordnet_root: str | Path | None = None) -> dict[str, Any]:
    """Write the universal tasks to `out_dir` (new or empty); -> the manifest it wrote.

    per_task_queries: queries per task (fewer where the data has fewer eligible ones; the
        manifest has the real counts). fashion_gallery_size: Fashion-MNIST training images
        sampled as the image_to_image pool. wordnet_pool_size: WordNet senses with example
        sentences sampled as the text_to_text pool (its queries are drawn from them).
    openclipart_limit / validate_images: passed to `load_openclipart` (limit, validate).
    Roots None: each loader's default ($GENIR_*_DIR, else the Debian package folder); a
    missing source raises its loader's MissingDataError (with the apt-get command).
    Deterministic: the same data, arguments and seed give byte-identical files. img_path
    is relative to out_dir (the image_root for `load_mbeir`) for the Fashion-MNIST PNGs
    written under out_dir/images/, absolute for Open Clip Art PNGs, read in place.
    """
    unknown = [t for t in tasks if t not in TASK_SPECS]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown}; valid tasks: {list(TASKS)}")
    for name, value in (("per_task_queries", per_task_queries),
                        ("fashion_gallery_size", fashion_gallery_size),
                        ("wordnet_pool_size", wordnet_pool_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} is not an empty folder; build_universal_tasks writes "
                         "into a new or empty one")
    tasks = [t for t in TASKS if t in tasks]  # canonical order
    sources = {TASK_SPECS[t].source for t in tasks}
    rngs = {s: np.random.default_rng([seed, SOURCE_STREAMS[s]]) for s in sources}
    source_meta: dict[str, dict[str, Any]] = {}

    # Query eligibility is checked against every text that may become a candidate, from
    # every source, so the rule holds in the global pool (see _leaks for the check itself).
    wordnet = clipart = None
    blocked: set[str] = set()
    if "wordnet" in sources:
        wordnet = _WordNetPool.sample(wordnet_root, wordnet_pool_size, rngs["wordnet"])
        blocked |= wordnet.entry_keys()
    if "openclipart" in sources:
        clipart = _Clipart.load(openclipart_root, openclipart_limit, validate_images)
        blocked |= clipart.caption_keys() | clipart.title_keys()

    built: dict[str, _Task] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    if clipart is not None:
        roles = [t for t in OPENCLIPART_ROLES if t in tasks]
        built.update(clipart.tasks(roles, per_task_queries, rngs["openclipart"],
                                   wordnet.entry_keys() if wordnet else set()))
        source_meta["openclipart"] = clipart.meta
    if "fashion-mnist" in sources:
        built["image_to_image"], source_meta["fashion-mnist"] = _fashion_task(
            out_dir, fashion_mnist_root, per_task_queries, fashion_gallery_size,
            rngs["fashion-mnist"])
    if wordnet is not None:
        built["text_to_text"] = wordnet.task(per_task_queries, blocked)
        source_meta["wordnet"] = wordnet.meta
    for name in tasks:
        if not built[name].queries:
            raise ValueError(f"task {name}: no eligible queries in the data "
                             f"({TASK_SPECS[name].source}); is the source too small?")
    leaks = _leaks(built, out_dir)
    if leaks:  # a bug in the constructions above, never expected on any data
        raise RuntimeError(f"leakage rule broken ({LEAKAGE_RULE}): {leaks[:5]}")
    manifest = _write(out_dir, {t: built[t] for t in tasks})
    manifest.update(seed=seed, per_task_queries=per_task_queries,
                    fashion_gallery_size=fashion_gallery_size,
                    wordnet_pool_size=wordnet_pool_size, openclipart_limit=openclipart_limit,
                    validate_images=validate_images, sources=source_meta)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _key(text: str | None) -> str:
    """Texts compare by this key in the leakage rule: case and runs of spaces ignored."""
    return " ".join((text or "").casefold().split())


def _leaks(built: dict[str, _Task], out_dir: Path) -> list[str]:
    """Queries that break LEAKAGE_RULE against the union of all pools.

    Images compare by resolved path here; copies under other names were merged on loading.
    """
    texts = {_key(c.txt) for t in built.values() for c in t.pool if c.txt}
    images = {os.path.realpath(out_dir / c.img_path) for t in built.values() for c in t.pool
              if c.img_path}
    found = []
    for name, task in built.items():
        for k, q in enumerate(task.queries):
            if q.txt and _key(q.txt) in texts:
                found.append(f"{name}:{k} text {q.txt!r}")
            if q.img_path and os.path.realpath(out_dir / q.img_path) in images:
                found.append(f"{name}:{k} image {q.img_path!r}")
    return found


def _write(out_dir: Path, built: dict[str, _Task]) -> dict[str, Any]:
    """The jsonl and qrels files; -> the manifest's "tasks" and "global_pool" parts."""
    global_pool: dict[str, _Candidate] = {}
    tasks_meta: dict[str, Any] = {}
    for name, task in built.items():
        spec = TASK_SPECS[name]
        files = {"queries": f"{name}_queries.jsonl", "pool": f"{name}_pool.jsonl",
                 "qrels": f"{name}_qrels.txt"}
        pool_dids = {c.did for c in task.pool}
        for c in task.pool:
            seen = global_pool.setdefault(c.did, c)
            if seen.line() != c.line():  # one did, one content, whichever task holds it
                raise RuntimeError(f"did {c.did!r} has two contents")
            if any(ch.isspace() for ch in c.did):
                raise ValueError(f"did {c.did!r} has white space, which qrels cannot hold")
        query_lines: list[dict[str, Any]] = []
        qrels_lines: list[str] = []
        for k, q in enumerate(task.queries):
            qid = f"{name}:{k}"
            assert q.positives and set(q.positives) <= pool_dids, (qid, q.positives)
            query_lines.append({
                "qid": qid, "query_txt": q.txt, "query_img_path": q.img_path,
                "query_modality": MBEIR_MODALITY[spec.query_modality],
                "query_src_content": json.dumps(q.src, sort_keys=True),
                "pos_cand_list": q.positives, "neg_cand_list": [],
                "task_id": spec.mbeir_task_id, "instruction": spec.instruction})
            qrels_lines.extend(f"{qid} 0 {did} 1 {spec.mbeir_task_id}" for did in q.positives)
        _write_jsonl(out_dir / files["queries"], query_lines)
        _write_jsonl(out_dir / files["pool"], [c.line() for c in task.pool])
        (out_dir / files["qrels"]).write_text("".join(f"{x}\n" for x in qrels_lines),
                                              encoding="utf-8")
        tasks_meta[name] = {
            "source": spec.source, "query_modality": spec.query_modality,
            "target_modality": spec.target_modality, "mbeir_task_id": spec.mbeir_task_id,
            "instruction": spec.instruction, "files": files,
            "num_queries": len(task.queries), "num_candidates": len(task.pool),
            "num_qrels": len(qrels_lines)}
    _write_jsonl(out_dir / GLOBAL_POOL, [c.line() for c in global_pool.values()])
    by_modality: dict[str, int] = {}
    for c in global_pool.values():
        by_modality[c.modality] = by_modality.get(c.modality, 0) + 1
    return {"format": FORMAT, "tasks": tasks_meta,
            "global_pool": {"file": GLOBAL_POOL, "num_candidates": len(global_pool),
                            "by_modality": by_modality},
            "image_root": "this folder: img_path is relative to it, or absolute",
            "leakage_rule": LEAKAGE_RULE}


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                    encoding="utf-8")


# -- Open Clip Art: text_to_image, image_to_text, text_to_image_text, image_text_to_image --

@dataclass
class _Clipart:
    """Open Clip Art items grouped by caption: items with one caption are one group.

    Many clip-art sets share a caption (8,121 PNGs, 3,240 distinct captions on Debian), so
    a caption query is relevant to every image of its group, and roles go by group.
    """

    item_ids: list[str]
    images: list[str]             # absolute PNG paths
    captions: list[str]           # load_openclipart's "Title. keywords. Description"
    titles: list[str]             # the title alone (the file stem if untitled)
    rests: list[str]              # keywords and description, without the title
    categories: list[str]         # top folder, "" for none
    groups: list[list[int]]       # item rows per caption, in corpus order
    meta: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path | None, limit: int | None, validate: bool) -> _Clipart:
        from genir.data.openclipart import load_openclipart, make_caption, parse_svg_metadata

        corpus = load_openclipart(root=root, limit=limit, validate=validate)
        assert corpus.texts is not None and corpus.labels is not None
        assert corpus.images is not None and corpus.label_names is not None
        # Debian ships one picture under several names and folders (1,221 of its 8,121
        # PNGs are symlinks); each picture is kept once, at its first path in sorted order,
        # so no query image can reappear as a candidate under another name.
        keys = _picture_keys([str(path) for path in corpus.images])
        first_of: dict[str, int] = {}
        for row, key in enumerate(keys):
            first_of.setdefault(key, row)
        corpus = corpus.subset(sorted(first_of.values()))
        assert corpus.texts is not None and corpus.labels is not None
        assert corpus.images is not None and corpus.label_names is not None
        svg_root = Path(corpus.metadata["root"]) / "svg"
        titles, rests = [], []
        for item_id in corpus.item_ids:
            rel = item_id.removeprefix("openclipart/")
            svg = svg_root / f"{rel}.svg"
            meta = parse_svg_metadata(svg) if svg.is_file() else {}
            title = meta.get("title", "")
            description = meta.get("description", "")
            if description.casefold() == title.casefold():
                description = ""  # as in make_caption
            titles.append(make_caption({"title": title}, stem=Path(rel).name))
            rests.append(make_caption({"keywords": meta.get("keywords", []),
                                       "description": description}))
        row_groups: dict[str, list[int]] = {}
        for row, caption in enumerate(corpus.texts):
            row_groups.setdefault(_key(caption), []).append(row)
        return cls(item_ids=list(corpus.item_ids),
                   images=[os.path.abspath(p) for p in corpus.images],
                   captions=list(corpus.texts), titles=titles, rests=rests,
                   categories=[corpus.label_names[i] if i >= 0 else ""
                               for i in corpus.labels.tolist()],
                   groups=list(row_groups.values()),
                   meta={"root": os.path.abspath(corpus.metadata["root"]),
                         "num_pngs": len(keys), "num_pictures": len(corpus),
                         "num_captions": len(row_groups),
                         "skipped": len(corpus.metadata.get("skipped", []))})

    def caption_keys(self) -> set[str]:
        return {_key(c) for c in self.captions}

    def title_keys(self) -> set[str]:
        return {_key(t) for t in self.titles}

    def _query_text(self, role: str, row: int) -> str | None:
        """The text of the query that `row` would make in `role` ("" if none is possible)."""
        if role == "text_to_image":
            return self.captions[row]
        if role == "text_to_image_text":
            return self.rests[row]
        if role == "image_text_to_image":
            category = self.categories[row]
            if category in ("", *EXCLUDED_CATEGORIES):
                return ""
            return f"a similar {category.replace('_', ' ')} clip-art"
        return None  # image_to_text: an image alone

    def _eligible(self, role: str, group: list[int], captions: set[str], others: set[str],
                  category_sizes: dict[str, int]) -> bool:
        """Whether the group's first item can make a query in `role` under LEAKAGE_RULE.

        captions: every caption; others: every other text that may be a candidate (titles,
        other sources' texts). A text_to_image query is its group's caption, whose caption
        candidate is dropped and which differs from every other group's caption, so only
        `others` counts there.
        """
        row = group[0]
        if role == "image_text_to_image" and category_sizes.get(self.categories[row], 0) < 2:
            return False
        text = self._query_text(role, row)
        if text is None:
            return True
        key = _key(text)
        return bool(key) and key not in others and (role == "text_to_image"
                                                    or key not in captions)

    def tasks(self, roles: Sequence[str], num_queries: int, rng: np.random.Generator,
              blocked_by_others: set[str]) -> dict[str, _Task]:
        """Assign caption groups to roles along one permutation; build the four tasks."""
        category_sizes: dict[str, int] = {}
        for c in self.categories:
            category_sizes[c] = category_sizes.get(c, 0) + 1
        caption_keys, others = self.caption_keys(), self.title_keys() | blocked_by_others
        chosen: dict[str, list[int]] = {role: [] for role in roles}  # role -> group indices
        taken: set[int] = set()
        order = rng.permutation(len(self.groups)).tolist()
        for role in roles:
            for g in order:
                if len(chosen[role]) == num_queries:
                    break
                group = self.groups[g]
                if g not in taken and self._eligible(role, group, caption_keys, others,
                                                     category_sizes):
                    chosen[role].append(g)
                    taken.add(g)
        # An image query is the first item of its group; its file is no candidate anywhere.
        query_rows = {self.groups[g][0] for role in ("image_to_text", "image_text_to_image")
                      for g in chosen.get(role, [])}
        rows = [r for r in range(len(self.item_ids)) if r not in query_rows]
        text_query_groups = {g for role in ("text_to_image", "text_to_image_text")
                             for g in chosen.get(role, [])}

        def src(row: int) -> dict[str, Any]:
            return {"source": "openclipart", "item_id": self.item_ids[row],
                    "category": self.categories[row]}

        images = [_Candidate(f"{self.item_ids[r]}#image", "image", img_path=self.images[r],
                             src=src(r)) for r in rows]
        pairs = [_Candidate(f"{self.item_ids[r]}#pair", "image_text", txt=self.titles[r],
                            img_path=self.images[r], src=src(r)) for r in rows]
        captions = {g: _Candidate(f"{self.item_ids[group[0]]}#caption", "text",
                                  txt=self.captions[group[0]], src=src(group[0]))
                    for g, group in enumerate(self.groups) if g not in text_query_groups}
        out: dict[str, _Task] = {}
        if "text_to_image" in chosen:
            out["text_to_image"] = _Task(images, [
                _Query(self.captions[self.groups[g][0]], None,
                       [f"{self.item_ids[r]}#image" for r in self.groups[g]],
                       src(self.groups[g][0])) for g in chosen["text_to_image"]])
        if "text_to_image_text" in chosen:
            out["text_to_image_text"] = _Task(pairs, [
                _Query(self.rests[self.groups[g][0]], None,
                       [f"{self.item_ids[r]}#pair" for r in self.groups[g]],
                       src(self.groups[g][0])) for g in chosen["text_to_image_text"]])
        if "image_to_text" in chosen:
            out["image_to_text"] = _Task(list(captions.values()), [
                _Query(None, self.images[self.groups[g][0]], [captions[g].did],
                       src(self.groups[g][0])) for g in chosen["image_to_text"]])
        if "image_text_to_image" in chosen:
            queries = []
            for g in chosen["image_text_to_image"]:
                row = self.groups[g][0]
                category = self.categories[row]
                positives = [f"{self.item_ids[r]}#image" for r in rows
                             if self.categories[r] == category]
                if positives:  # empty only if every item of the category is a query image
                    queries.append(_Query(self._query_text("image_text_to_image", row),
                                          self.images[row], positives, src(row)))
            out["image_text_to_image"] = _Task(images, queries)
        return out


def _picture_keys(paths: Sequence[str]) -> list[str]:
    """Per path, a key shared by the paths that show the same file's bytes.

    Symlinks are resolved; regular files whose sizes collide are compared by SHA-256, so
    copies are found too without hashing every file.
    """
    real = [os.path.realpath(p) for p in paths]
    by_size: dict[int, list[str]] = {}
    for r in dict.fromkeys(real):
        by_size.setdefault(os.path.getsize(r), []).append(r)
    key = {r: r for r in real}
    for same_size in by_size.values():
        if len(same_size) > 1:
            key.update({r: "sha256:" + file_digest(r) for r in same_size})
    return [key[r] for r in real]


# -- Fashion-MNIST: image_to_image -----------------------------------------------------------

def _fashion_task(out_dir: Path, root: str | Path | None, num_queries: int, gallery_size: int,
                  rng: np.random.Generator) -> tuple[_Task, dict[str, Any]]:
    """Test images -> the same-class images of a seeded sample of training images.

    Images are written as 28x28 grayscale PNGs under out_dir/images/fashion-mnist/; the
    class name goes in src_content only, never in a query's or candidate's text.
    """
    from PIL import Image

    from genir.data.fashion_mnist import load_fashion_mnist

    train = load_fashion_mnist("train", root=root)
    test = load_fashion_mnist("test", root=root)
    assert train.labels is not None and test.labels is not None and train.label_names
    pixels = {"train": np.asarray(train.images), "test": np.asarray(test.images)}  # (N, 28, 28)
    gallery = np.sort(rng.choice(len(train), size=min(gallery_size, len(train)), replace=False))
    classes = set(train.labels[gallery].tolist())
    # a test image identical to a gallery image would leak (Debian's files have none)
    gallery_bytes = {pixels["train"][i].tobytes() for i in gallery}
    order = rng.permutation(len(test))
    picked = [int(i) for i in order if int(test.labels[i]) in classes
              and pixels["test"][i].tobytes() not in gallery_bytes][:num_queries]

    def save(split: str, index: int) -> str:
        rel = f"{FASHION_IMAGE_DIR}/{split}/{index:05d}.png"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[split][index]).save(out_dir / rel)
        return rel

    def src(corpus: Any, index: int) -> dict[str, Any]:
        label = int(corpus.labels[index])
        return {"source": "fashion-mnist", "item_id": corpus.item_ids[index],
                "label": corpus.label_names[label]}

    pool = [_Candidate(train.item_ids[i], "image", img_path=save("train", int(i)),
                       src=src(train, int(i))) for i in gallery]
    dids_of: dict[int, list[str]] = {}
    for i, c in zip(gallery.tolist(), pool, strict=True):
        dids_of.setdefault(int(train.labels[i]), []).append(c.did)
    queries = [_Query(None, save("test", i), dids_of[int(test.labels[i])], src(test, i))
               for i in picked]
    meta = {"root": os.path.abspath(train.metadata["root"]), "num_train": len(train),
            "num_test": len(test), "label_names": list(train.label_names)}
    return _Task(pool, queries), meta


# -- WordNet: text_to_text -------------------------------------------------------------------

@dataclass
class _WordNetPool:
    """A seeded sample of WordNet senses that have example sentences, with their entries."""

    item_ids: list[str]           # in the sample's (random) order
    definitions: list[str]
    entries: list[str]            # "lemma, lemma: example; example"
    labels: list[str]
    meta: dict[str, Any]

    @classmethod
    def sample(cls, root: str | Path | None, size: int, rng: np.random.Generator) -> _WordNetPool:
        from genir.data.wordnet import load_wordnet

        corpus = load_wordnet(root)
        m = corpus.metadata
        assert corpus.labels is not None and corpus.label_names is not None
        eligible = [i for i, (d, e) in enumerate(zip(m["definitions"], m["examples"],
                                                     strict=True)) if d and e]
        picked: list[int] = []
        seen: set[str] = set()
        for i in rng.permutation(len(eligible)).tolist():
            row = eligible[i]
            entry = _key(_entry(m["lemmas"][row], m["examples"][row]))
            if entry not in seen:  # two senses with one entry text could not be told apart
                seen.add(entry)
                picked.append(row)
            if len(picked) == size:
                break
        return cls(item_ids=[corpus.item_ids[r] for r in picked],
                   definitions=[m["definitions"][r] for r in picked],
                   entries=[_entry(m["lemmas"][r], m["examples"][r]) for r in picked],
                   labels=[corpus.label_names[int(corpus.labels[r])] for r in picked],
                   meta={"root": os.path.abspath(m["root"]), "num_senses": len(corpus),
                         "num_with_examples": len(eligible)})

    def entry_keys(self) -> set[str]:
        return {_key(e) for e in self.entries}

    def task(self, num_queries: int, blocked: set[str]) -> _Task:
        """Definitions of the first eligible senses of the sample -> their entries."""

        def src(k: int) -> dict[str, Any]:
            return {"source": "wordnet", "item_id": self.item_ids[k], "lex_file": self.labels[k]}

        pool = [_Candidate(self.item_ids[k], "text", txt=self.entries[k], src=src(k))
                for k in sorted(range(len(self.item_ids)), key=self.item_ids.__getitem__)]
        queries = [_Query(self.definitions[k], None, [self.item_ids[k]], src(k))
                   for k in range(len(self.item_ids))
                   if _key(self.definitions[k]) not in blocked][:num_queries]
        return _Task(pool, queries)


def _entry(lemmas: list[str], examples: list[str]) -> str:
    """The text_to_text candidate: the sense's words and example sentences, no definition."""
    return f"{', '.join(lemmas)}: {'; '.join(examples)}"


# -- reading it back -------------------------------------------------------------------------

def load_universal_task(root: str | Path, task: str, *, pool: str = "task") -> RetrievalSplit:
    """One task of a `build_universal_tasks` folder, read by `load_mbeir`.

    pool "task": the task's own candidates; "global": every task's candidates (the
    universal setting of GENIUS Table 2). queries.metadata gains "instructions" (per query,
    checked against genir.instructions), "task" and "target_modality".
    """
    from genir.instructions import parse_instruction  # see TaskSpec.instruction

    if pool not in ("task", "global"):
        raise ValueError(f"pool must be 'task' or 'global', got {pool!r}")
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise MissingDataError(f"missing {manifest_path}; write the tasks with "
                               "genir_experiments.universal_data.build_universal_tasks(out_dir)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if task not in manifest["tasks"]:
        raise ValueError(f"unknown task {task!r}; {root} holds {list(manifest['tasks'])}")
    files = manifest["tasks"][task]["files"]
    pool_file = files["pool"] if pool == "task" else manifest["global_pool"]["file"]
    split = load_mbeir(root / files["queries"], root / pool_file, root / files["qrels"],
                       image_root=root)
    spec = TASK_SPECS[task]
    instructions = []
    with (root / files["queries"]).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                text = json.loads(line).get("instruction")
                found = parse_instruction(str(text))
                if (found.query_modality, found.target_modality) != (spec.query_modality,
                                                                      spec.target_modality):
                    raise ValueError(f"{root / files['queries']}:{lineno}: instruction "
                                     f"{text!r} does not fit task {task}")
                instructions.append(found.text)
    split.queries.metadata.update(instructions=instructions, task=task,
                                  target_modality=spec.target_modality)
    return split
