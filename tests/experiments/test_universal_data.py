"""WordNet loader and universal task builder (genir.data.wordnet, genir_experiments.universal_data).

Hermetic: every test writes its own WordNet, Open Clip Art and Fashion-MNIST fixtures,
except the one `slow` test, which reads Debian's wordnet-base when installed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fixtures import png_bytes, put, svg_text, write_fashion_mnist, write_openclipart
from genir.data import MissingDataError, load_mbeir
from genir.data import wordnet as wn
from genir.instructions import default_instruction, parse_instruction
from genir_experiments.universal_data import TASK_SPECS, TASKS, build_universal_tasks, load_universal_task

LICENSE = [
    "This software and database is being provided to you, the LICENSEE, by",
    'Princeton University under the following license.  "AS IS" | 99 n 01 fake 0 000 | no',
    "",
    "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.",
]

# (lex_filenum, ss_type, words, pointers and frames, gloss); the offset is computed.
SYNSETS = {
    "noun": [
        (3, "n", ["entity"], "000", "that which is perceived or known or inferred to have its "
                                    "own distinct existence (living or nonliving)"),
        (5, "n", ["dog", "domestic_dog", "Canis_familiaris"], "001 @ 00001740 n 0000",
         'a member of the genus Canis; occurs in many breeds; "the dog barked all night"'),
        (5, "n", ["cat", "true_cat"], "000",
         'feline mammal usually having thick soft fur; "the cat sat on the mat"; '
         '"cats purr" - a proverb'),
        (20, "n", ["oak", "oak_tree"], "000",
         'a tree of the genus Quercus; "an old oak shaded the yard'),  # unclosed quote
        (13, "n", ["apple"], "000", 'fruit with red or yellow or green skin; "an apple a day"'),
    ],
    "verb": [
        (29, "v", ["breathe", "take_a_breath", "respire"], "001 @ 00002325 v 0000 01 + 02 00",
         'draw air into, and expel out of, the lungs; "I can breathe better now"'),
        (29, "v", ["choke"], "001 @ 00001740 v 0000 01 + 02 00",
         'breathe with great difficulty; "She choked with emotion"'),
        (38, "v", ["run"], "000 01 + 01 00", 'move fast by using one\'s feet; "Don\'t run!"'),
    ],
    "adj": [
        (0, "a", ["able"], "000", '(usually followed by `to\') having the necessary means; '
                                  '"able to swim"'),
        (0, "s", ["abounding", "galore(ip)"], "001 & 00001740 a 0000",
         'existing in abundance; "abounding confidence"; "food galore"'),
    ],
    "adv": [
        (2, "r", ["quickly", "speedily"], "000", 'with rapid movements; "he works quickly"'),
    ],
}


def write_wordnet(root: Path, synsets: dict[str, list[tuple]] = SYNSETS) -> Path:
    """data.<pos> files in the wndb(5WN) format: license lines, then byte-offset synsets."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in synsets.items():
        data = "".join(f"  {i} {line}  \n" for i, line in enumerate(LICENSE, start=1))
        for lex_filenum, ss_type, words, rest, gloss in rows:
            word_fields = " ".join(f"{w} 0" for w in words)
            data += (f"{len(data.encode()):08d} {lex_filenum:02d} {ss_type} {len(words):02x} "
                     f"{word_fields} {rest} | {gloss}  \n")
        (root / f"data.{name}").write_text(data, encoding="utf-8")
    return root


def write_clipart(root: Path) -> Path:
    """The shared 30-item tree plus the cases the builder must handle."""
    write_openclipart(root)
    red = (220, 30, 30)
    # same metadata as warm/red_square: one caption, two images
    put(root, "png/warm/red_square_copy.png", png_bytes((50, 50), color=red))
    put(root, "svg/warm/red_square_copy.svg", svg_text("red square", ("red", "square", "clipart")))
    # caption "blue box" equals the title (pair text) of cool/blue_box
    put(root, "png/cool/plain.png", png_bytes((54, 54), color=(30, 40, 220)))
    put(root, "svg/cool/plain.svg", svg_text("blue box"))
    put(root, "png/unsorted/thing.png", png_bytes((48, 48), color=(1, 2, 3)))
    put(root, "svg/unsorted/thing.svg", svg_text("thing", ("misc",)))
    # one picture under two more names, as Debian's symlinks do: a link and a byte copy
    (root / "png/warm/zz_link.png").symlink_to("red_square.png")
    put(root, "svg/warm/zz_link.svg", svg_text("linked square", ("link",)))
    put(root, "png/warm/zz_copy.png", (root / "png/warm/red_box.png").read_bytes())
    put(root, "svg/warm/zz_copy.svg", svg_text("copied box", ("copy",)))
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    return {"openclipart_root": write_clipart(base / "openclipart"),
            "fashion_mnist_root": write_fashion_mnist(base / "fmnist"),
            "wordnet_root": write_wordnet(base / "wordnet")}


BUILD = {"per_task_queries": 3, "fashion_gallery_size": 50, "wordnet_pool_size": 8}


@pytest.fixture(scope="module")
def built(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("universal") / "tasks"
    build_universal_tasks(out, seed=0, **BUILD, **sources)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def task_files(root: Path, task: str) -> tuple[list[dict], list[dict], list[list[str]]]:
    """(query lines, pool lines, per-query relevant dids from the qrels) of one task."""
    queries = read_jsonl(root / f"{task}_queries.jsonl")
    pool = read_jsonl(root / f"{task}_pool.jsonl")
    positives: dict[str, list[str]] = {q["qid"]: [] for q in queries}
    for line in (root / f"{task}_qrels.txt").read_text().splitlines():
        qid, zero, did, relevance, task_id = line.split()
        assert (zero, relevance, int(task_id)) == ("0", "1", TASK_SPECS[task].mbeir_task_id)
        positives[qid].append(did)
    return queries, pool, [positives[q["qid"]] for q in queries]


def dog_offset(root: Path) -> int:
    """The byte offset of the fixture's dog synset in data.noun."""
    return (root / "data.noun").read_bytes().index(b" 05 n 03 dog ") - 8


# -- WordNet ---------------------------------------------------------------------------------

def test_wordnet_parses_senses(tmp_path):
    corpus = wn.load_wordnet(write_wordnet(tmp_path))
    assert len(corpus) == 11  # the license lines, even one holding "|" and quotes, are skipped
    assert corpus.modality == "text" and corpus.name == "wordnet"
    m = corpus.metadata
    dog = 1
    assert corpus.item_ids[dog] == f"wordnet/n/{dog_offset(tmp_path):08d}"
    assert m["lemmas"][dog] == ["dog", "domestic dog", "Canis familiaris"]
    assert m["definitions"][dog] == "a member of the genus Canis; occurs in many breeds"
    assert m["examples"][dog] == ["the dog barked all night"]
    assert corpus.texts[dog] == ("dog, domestic dog, Canis familiaris: a member of the genus "
                                 'Canis; occurs in many breeds; "the dog barked all night"')
    assert corpus.label_names[corpus.labels[dog]] == "noun.animal"
    cat, oak, entity = 2, 3, 0
    assert m["examples"][cat] == ["the cat sat on the mat", "cats purr"]  # attribution dropped
    assert m["examples"][oak] == ["an old oak shaded the yard"]  # unclosed final quote
    assert m["examples"][entity] == [] and m["definitions"][entity].startswith("that which")
    galore = corpus.item_ids.index(next(i for i, lem in zip(corpus.item_ids, m["lemmas"],
                                                            strict=True) if "galore" in lem))
    assert m["lemmas"][galore] == ["abounding", "galore"]  # "(ip)" marker dropped
    assert m["ss_types"][galore] == "s" and corpus.item_ids[galore].startswith("wordnet/a/")
    assert m["pos"] == ["n"] * 5 + ["v"] * 3 + ["a"] * 2 + ["r"]
    assert corpus.label_names[corpus.labels[-1]] == "adv.all"


def test_wordnet_offsets_are_byte_offsets(tmp_path):
    root = write_wordnet(tmp_path)
    corpus = wn.load_wordnet(root, pos=("v",))
    raw = (root / "data.verb").read_bytes()
    for item_id, lemmas in zip(corpus.item_ids, corpus.metadata["lemmas"], strict=True):
        offset = int(item_id.rsplit("/", 1)[1])
        assert raw[offset:].split(b" ")[4].decode().replace("_", " ") == lemmas[0]


def test_wordnet_pos_and_limit(tmp_path):
    root = write_wordnet(tmp_path)
    assert wn.load_wordnet(root, pos=("v", "r")).metadata["pos"] == ["v", "v", "v", "r"]
    assert len(wn.load_wordnet(root, limit=6)) == 6
    assert wn.load_wordnet(root, pos=("v", "n"), limit=4).metadata["pos"] == ["v"] * 3 + ["n"]
    with pytest.raises(ValueError, match="valid"):
        wn.load_wordnet(root, pos=("x",))
    with pytest.raises(ValueError, match="limit"):
        wn.load_wordnet(root, limit=-1)


def test_wordnet_rejects_edited_files(tmp_path):
    root = write_wordnet(tmp_path)
    path = root / "data.verb"
    path.write_text(path.read_text().replace("breathe 0", "breathes 0", 1))  # shifts offsets
    with pytest.raises(ValueError, match=r"data\.verb:6: synset_offset"):
        wn.load_wordnet(root, pos=("v",))
    path.write_text("00000000 29 v 01 breathe 0 000 no gloss bar\n")
    with pytest.raises(ValueError, match=r"data\.verb:1: expected"):
        wn.load_wordnet(root, pos=("v",))


def test_wordnet_missing_names_the_package(tmp_path, monkeypatch):
    with pytest.raises(MissingDataError, match="apt-get install .*wordnet-base"):
        wn.load_wordnet(tmp_path / "nowhere")
    write_wordnet(tmp_path / "wn")
    monkeypatch.setenv(wn.ENV_VAR, str(tmp_path / "wn"))
    assert len(wn.load_wordnet()) == 11


def test_split_gloss():
    assert wn.split_gloss('to move; "he ran" - Bible; "she ran"') == ("to move", ["he ran", "she ran"])
    assert wn.split_gloss("no examples here") == ("no examples here", [])
    assert wn.split_gloss('"only an example"') == ("", ["only an example"])


@pytest.mark.slow
def test_real_wordnet():
    if not (wn.DEBIAN_ROOT / "data.noun").is_file():
        pytest.skip(f"{wn.DEBIAN_ROOT} absent: {wn.APT_COMMAND}")
    corpus = wn.load_wordnet()
    assert len(corpus) == 117_659  # WordNet 3.0 synsets
    pos = corpus.metadata["pos"]
    assert [pos.count(p) for p in "nvar"] == [82_115, 13_767, 18_156, 3_621]
    assert sum(1 for e in corpus.metadata["examples"] if e) == 32_927
    dog = corpus.item_ids.index("wordnet/n/02084071")
    assert corpus.metadata["lemmas"][dog] == ["dog", "domestic dog", "Canis familiaris"]
    assert corpus.metadata["definitions"][dog].startswith("a member of the genus Canis")
    assert corpus.metadata["examples"][dog] == ["the dog barked all night"]
    assert corpus.label_names[corpus.labels[dog]] == "noun.animal"
    choke = corpus.item_ids.index("wordnet/v/00002724")
    assert corpus.metadata["examples"][choke] == [
        "She choked with emotion when she spoke about her deceased husband"]


# -- universal tasks -------------------------------------------------------------------------

def test_manifest_and_files(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert list(manifest["tasks"]) == list(TASKS)
    for task, meta in manifest["tasks"].items():
        queries, pool, positives = task_files(built, task)
        assert meta["num_queries"] == len(queries) == BUILD["per_task_queries"]
        assert meta["num_candidates"] == len(pool) > 0
        assert meta["num_qrels"] == sum(map(len, positives))
    assert manifest["seed"] == 0
    assert set(manifest["sources"]) == {"openclipart", "fashion-mnist", "wordnet"}
    clipart = manifest["sources"]["openclipart"]
    assert (clipart["num_pngs"], clipart["num_pictures"], clipart["num_captions"]) == (35, 33, 32)
    assert not any("zz_" in line for line in (built / "global_pool.jsonl").open())
    assert manifest["global_pool"]["num_candidates"] == len(read_jsonl(built / "global_pool.jsonl"))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("pool", ["task", "global"])
def test_round_trip_through_load_mbeir(built, task, pool):
    queries, task_pool, positives = task_files(built, task)
    pool_lines = task_pool if pool == "task" else read_jsonl(built / "global_pool.jsonl")
    split = load_universal_task(built, task, pool=pool)
    assert split.queries.item_ids == [q["qid"] for q in queries]
    assert split.gallery.item_ids == [c["did"] for c in pool_lines]
    assert [[split.gallery.item_ids[r] for r in rows] for rows in split.relevant] == positives
    assert positives == [q["pos_cand_list"] for q in queries]  # qrels agree with the queries
    same = load_mbeir(built / f"{task}_queries.jsonl",
                      built / (f"{task}_pool.jsonl" if pool == "task" else "global_pool.jsonl"),
                      built / f"{task}_qrels.txt", image_root=built)
    assert same.relevant == split.relevant and same.gallery.texts == split.gallery.texts
    assert same.gallery.images == split.gallery.images
    for image in [*(split.queries.images or []), *(split.gallery.images or [])]:
        assert image is None or Path(image).is_file()
    spec = TASK_SPECS[task]
    assert set(split.queries.metadata["modalities"]) == {spec.query_modality}
    assert split.queries.metadata["task_ids"] == [spec.mbeir_task_id] * len(queries)


@pytest.mark.parametrize("task", TASKS)
def test_instructions_name_the_target_modality(built, task):
    spec = TASK_SPECS[task]
    split = load_universal_task(built, task)
    assert split.queries.metadata["instructions"] == [
        default_instruction(spec.query_modality, spec.target_modality).text] * len(split.queries)
    for q in read_jsonl(built / f"{task}_queries.jsonl"):
        parsed = parse_instruction(q["instruction"])
        assert (parsed.query_modality, parsed.target_modality) == (spec.query_modality,
                                                                    spec.target_modality)


@pytest.mark.parametrize("task", TASKS)
def test_qrels_point_at_the_instructed_modality(built, task):
    split = load_universal_task(built, task, pool="global")
    modalities = split.gallery.metadata["modalities"]
    assert len(set(modalities)) == 3  # the global pool mixes all three
    target = parse_instruction(split.queries.metadata["instructions"][0]).target_modality
    assert all(rows for rows in split.relevant)
    assert {modalities[r] for rows in split.relevant for r in rows} == {target}


def test_global_pool_is_the_union_without_duplicates(built):
    union: dict[str, dict] = {}
    for task in TASKS:
        for line in read_jsonl(built / f"{task}_pool.jsonl"):
            assert union.setdefault(line["did"], line) == line  # one did, one content
    global_pool = read_jsonl(built / "global_pool.jsonl")
    dids = [c["did"] for c in global_pool]
    assert len(dids) == len(set(dids))
    assert {c["did"]: c for c in global_pool} == union


def test_constructions(built, sources):
    # text_to_text: a definition finds its sense's "lemmas: examples" entry, never itself
    queries, pool, positives = task_files(built, "text_to_text")
    entry = {c["did"]: c["txt"] for c in pool}
    for q, (did,) in zip(queries, positives, strict=True):
        lemmas_and_examples = entry[did].split(": ", 1)
        assert len(lemmas_and_examples) == 2 and q["query_txt"] not in entry[did]
    senses = wn.load_wordnet(sources["wordnet_root"])
    meta = {i: (lem, d, ex) for i, lem, d, ex in zip(senses.item_ids, senses.metadata["lemmas"],
                                                     senses.metadata["definitions"],
                                                     senses.metadata["examples"], strict=True)}
    for q, (did,) in zip(queries, positives, strict=True):
        lemmas, definition, examples = meta[did]
        assert q["query_txt"] == definition
        assert entry[did] == f"{', '.join(lemmas)}: {'; '.join(examples)}"
    # text_to_image: a caption finds every image with that caption
    queries, _, positives = task_files(built, "text_to_image")
    for q, dids in zip(queries, positives, strict=True):
        assert all(d.endswith("#image") for d in dids)
        if q["query_txt"] == "red square. red, square, clipart":
            assert dids == ["openclipart/warm/red_square#image",
                            "openclipart/warm/red_square_copy#image"]
    # image_text_to_image: same category folder, never the query's own image
    queries, _, positives = task_files(built, "image_text_to_image")
    for q, dids in zip(queries, positives, strict=True):
        category = json.loads(q["query_src_content"])["category"]
        assert q["query_txt"] == f"a similar {category} clip-art" and category != "unsorted"
        assert all(d.startswith(f"openclipart/{category}/") for d in dids)
        assert json.loads(q["query_src_content"])["item_id"] + "#image" not in dids
    # image_to_image: same Fashion-MNIST class
    queries, pool, positives = task_files(built, "image_to_image")
    label = {c["did"]: json.loads(c["src_content"])["label"] for c in pool}
    for q, dids in zip(queries, positives, strict=True):
        want = json.loads(q["query_src_content"])["label"]
        assert {label[d] for d in dids} == {want}
        assert sorted(dids) == sorted(d for d, lab in label.items() if lab == want)


def assert_no_leakage(root: Path) -> int:
    """The documented rule, checked on the files alone; -> number of queries checked."""
    pool = read_jsonl(root / "global_pool.jsonl")

    def key(text: str) -> str:
        return " ".join(text.casefold().split())

    def picture(path: str) -> str:  # same bytes, same picture, whatever the file name
        return hashlib.sha256((root / path).read_bytes()).hexdigest()

    texts = {key(c["txt"]) for c in pool if c["txt"]}
    images = {picture(c["img_path"]) for c in pool if c["img_path"]}
    checked = 0
    for task in json.loads((root / "manifest.json").read_text())["tasks"]:
        for q in read_jsonl(root / f"{task}_queries.jsonl"):
            assert not q["query_txt"] or key(q["query_txt"]) not in texts, (task, q)
            assert not q["query_img_path"] or picture(q["query_img_path"]) not in images, (task, q)
            checked += 1
    return checked


def test_no_leakage(built):
    assert assert_no_leakage(built) == len(TASKS) * BUILD["per_task_queries"]


@pytest.mark.parametrize("task", ["text_to_image", "text_to_image_text"])
def test_leakage_rule_leaves_out_colliding_captions(tmp_path, sources, task):
    """With every caption group asked for, only the one that would leak is left out.

    30 + 5 items, 33 pictures, 32 captions. cool/plain's caption "blue box" is the title (pair text) of
    cool/blue_box, so it is no text_to_image query; it has no keywords, so it makes no
    text_to_image_text query either.
    """
    out = tmp_path / task
    manifest = build_universal_tasks(out, tasks=[task], per_task_queries=100, **sources)
    texts = [q["query_txt"] for q in read_jsonl(out / f"{task}_queries.jsonl")]
    assert len(texts) == manifest["tasks"][task]["num_queries"] == 31
    assert "blue box" not in texts and ("thing. misc" if task == "text_to_image" else "misc") in texts
    assert assert_no_leakage(out) == 31


def test_deterministic_for_a_seed(tmp_path, built, sources):
    again = tmp_path / "again"
    build_universal_tasks(again, seed=0, **BUILD, **sources)
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    build_universal_tasks(other, seed=1, **BUILD, **sources)
    differ = [t for t in TASKS if (other / f"{t}_queries.jsonl").read_bytes()
              != (built / f"{t}_queries.jsonl").read_bytes()]
    assert differ  # another seed draws other queries


def test_errors(tmp_path, sources, built):
    with pytest.raises(MissingDataError, match="apt-get install"):
        build_universal_tasks(tmp_path / "a", **{**sources, "openclipart_root": tmp_path / "no"})
    with pytest.raises(MissingDataError, match="wordnet-base"):
        build_universal_tasks(tmp_path / "b", tasks=["text_to_text"],
                              wordnet_root=tmp_path / "no")
    with pytest.raises(MissingDataError, match="dataset-fashion-mnist"):
        build_universal_tasks(tmp_path / "c", tasks=["image_to_image"],
                              fashion_mnist_root=tmp_path / "no")
    with pytest.raises(ValueError, match="valid tasks"):
        build_universal_tasks(tmp_path / "d", tasks=["text_to_audio"], **sources)
    with pytest.raises(ValueError, match="not an empty folder"):
        build_universal_tasks(built, **sources)
    with pytest.raises(MissingDataError, match="build_universal_tasks"):
        load_universal_task(tmp_path, "text_to_image")
    with pytest.raises(ValueError, match="unknown task"):
        load_universal_task(built, "text_to_audio")
    with pytest.raises(ValueError, match="pool"):
        load_universal_task(built, "text_to_image", pool="local")


def test_subset_of_tasks_needs_only_its_sources(tmp_path, sources):
    manifest = build_universal_tasks(tmp_path / "t", tasks=["text_to_text"], per_task_queries=2,
                                     wordnet_pool_size=100, wordnet_root=sources["wordnet_root"],
                                     openclipart_root=tmp_path / "absent")
    assert list(manifest["tasks"]) == ["text_to_text"] and list(manifest["sources"]) == ["wordnet"]
    split = load_universal_task(tmp_path / "t", "text_to_text")
    assert len(split.gallery) == 10  # every sense with an example; "entity" has none
    dog = split.gallery.item_ids.index(f"wordnet/n/{dog_offset(sources['wordnet_root']):08d}")
    assert split.gallery.texts[dog] == "dog, domestic dog, Canis familiaris: the dog barked all night"
