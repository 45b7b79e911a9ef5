"""WordNet 3.0 word senses as a text `Corpus`: the data.<pos> reader and the loader.

The data comes from the Debian package `wordnet-base` (/usr/share/wordnet); elsewhere
`GENIR_WORDNET_DIR` points the loader at a folder holding the same `data.noun`,
`data.verb`, `data.adj` and `data.adv` files. The format is `man 5 wndb`: license lines
that start with two spaces, then one synset per line,

    synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...]
        [frames...] | gloss

where synset_offset is the line's own byte offset in the file (checked here, so an edited
or re-encoded file is caught). This file reads senses and splits their glosses; it keeps
no pointers (hypernyms etc.), verb frames or index files, and does no lemmatisation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genir.data.corpus import Corpus, MissingDataError

__all__ = ["LEX_NAMES", "POS_FILES", "WordSense", "load_wordnet", "parse_data_line",
           "split_gloss"]

DEBIAN_ROOT = Path("/usr/share/wordnet")
ENV_VAR = "GENIR_WORDNET_DIR"
APT_COMMAND = "sudo apt-get install --no-install-recommends wordnet-base"

POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
SS_TYPES = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}  # ss_type -> its file's pos
LICENSE_PREFIX = "  "  # license and copyright lines start with two spaces (wndb(5WN))

# lexnames(5WN): lex_filenum -> lexicographer file; the label of a sense is its lex_filenum.
LEX_NAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]


@dataclass(frozen=True)
class WordSense:
    """One synset line of a data.<pos> file."""

    offset: int             # synset_offset: the line's byte offset in its file
    lex_filenum: int        # index into LEX_NAMES
    ss_type: str            # n, v, a, s (adjective satellite) or r
    lemmas: list[str]       # words of the synset, underscores as spaces, markers dropped
    gloss: str              # everything after "|", stripped
    definition: str         # the gloss before its first quoted example
    examples: list[str]     # the quoted parts of the gloss, without quotes


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """A gloss -> (definition, example sentences).

    `'breathe excessively hard; "the climber started to hyperventilate"'` ->
    `('breathe excessively hard', ['the climber started to hyperventilate'])`. The
    definition is the text before the first double quote, without the trailing "; ".
    Examples are the quoted parts; text between quoted parts (attributions such as
    `- Shakespeare`, separators) is dropped. A handful of WordNet 3.0 glosses have an
    unbalanced quote: an unclosed last example runs to the end of the gloss.
    """
    parts = gloss.split('"')
    definition = parts[0].strip().rstrip(";:,").strip()
    examples = [p.strip() for p in parts[1::2] if p.strip()]
    return definition, examples


def parse_data_line(line: str, *, where: str = "") -> WordSense:
    """One synset line (without its newline) -> WordSense; ValueError naming `where`."""
    head, sep, gloss = line.partition("|")
    fields = head.split()
    if not sep or len(fields) < 6:
        raise ValueError(f"{where}: expected 'synset_offset lex_filenum ss_type w_cnt word "
                         f"lex_id ... | gloss', got {line[:80]!r}")
    offset, lex_filenum, ss_type, w_cnt = fields[:4]
    try:
        num_words = int(w_cnt, 16)  # w_cnt is two hexadecimal digits
        if not (offset.isdigit() and lex_filenum.isdigit()):
            raise ValueError
    except ValueError:
        raise ValueError(f"{where}: bad synset_offset {offset!r}, lex_filenum {lex_filenum!r} "
                         f"or w_cnt {w_cnt!r}") from None
    if ss_type not in SS_TYPES or int(lex_filenum) >= len(LEX_NAMES):
        raise ValueError(f"{where}: ss_type must be one of {sorted(SS_TYPES)} and lex_filenum "
                         f"below {len(LEX_NAMES)}, got {ss_type!r}, {lex_filenum!r}")
    words = fields[4: 4 + 2 * num_words: 2]
    if num_words == 0 or len(fields) < 4 + 2 * num_words + 1:
        raise ValueError(f"{where}: w_cnt says {num_words} words, the line has fewer")
    gloss = gloss.strip()
    definition, examples = split_gloss(gloss)
    return WordSense(offset=int(offset), lex_filenum=int(lex_filenum), ss_type=ss_type,
                     lemmas=[_lemma(w) for w in words], gloss=gloss, definition=definition,
                     examples=examples)


def _lemma(word: str) -> str:
    """`galore(ip)` -> `galore`, `physical_entity` -> `physical entity`.

    data.adj appends a syntactic marker "(a)", "(p)" or "(ip)" to some words.
    """
    if word.endswith(")") and "(" in word:
        word = word[: word.rindex("(")]
    return word.replace("_", " ")


def read_senses(path: Path, *, limit: int | None = None) -> list[WordSense]:
    """The synsets of one data.<pos> file in file order (at most `limit`); license skipped."""
    senses: list[WordSense] = []
    position = 0  # byte offset of the current line
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, position = position, position + len(raw)
            if limit is not None and len(senses) >= limit:
                break
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text: {exc}") from None
            if line.startswith(LICENSE_PREFIX) or not line.strip():
                continue
            sense = parse_data_line(line, where=f"{path}:{lineno}")
            if sense.offset != start:  # wndb(5WN): the offset is the line's byte offset
                raise ValueError(f"{path}:{lineno}: synset_offset {sense.offset:08d} but the "
                                 f"line starts at byte {start} (edited or re-encoded file?)")
            senses.append(sense)
    return senses


def load_wordnet(root: str | Path | None = None, *, pos: Sequence[str] = ("n", "v", "a", "r"),
                 limit: int | None = None) -> Corpus:
    """Word senses of the given parts of speech as a text corpus, in pos then file order.

    Item ids "wordnet/{pos}/{offset:08d}" (pos the file's: satellites are "a"); text
    "lemma, lemma: gloss"; labels the lexicographer file (`label_names` = LEX_NAMES, e.g.
    "noun.animal"). Per item, metadata holds "pos", "ss_types", "lemmas", "definitions"
    and "examples" (lists aligned with item_ids). limit: keep the first `limit` senses
    in all. root None means $GENIR_WORDNET_DIR if set, else /usr/share/wordnet.
    """
    unknown = [p for p in pos if p not in POS_FILES]
    if unknown or not pos:
        raise ValueError(f"unknown WordNet parts of speech {unknown}; valid: {list(POS_FILES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    root = resolve_root(root)
    paths = {p: root / POS_FILES[p] for p in dict.fromkeys(pos)}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise MissingDataError(
            f"WordNet files missing: {', '.join(missing)}. On Debian/Ubuntu install them "
            f"with:\n    {APT_COMMAND}\nor set {ENV_VAR} (or pass root=) to a folder holding "
            f"the WordNet 3.0 data.noun, data.verb, data.adj and data.adv files.")
    item_ids: list[str] = []
    senses: list[WordSense] = []
    poses: list[str] = []
    for p, path in paths.items():
        left = None if limit is None else limit - len(senses)
        for sense in read_senses(path, limit=left):
            if SS_TYPES[sense.ss_type] != p:
                raise ValueError(f"{path}: synset {sense.offset:08d} has ss_type "
                                 f"{sense.ss_type!r}, which does not belong in {path.name}")
            item_ids.append(f"wordnet/{p}/{sense.offset:08d}")
            senses.append(sense)
            poses.append(p)
    return Corpus(name="wordnet", item_ids=item_ids, modality="text",
                  texts=[f"{', '.join(s.lemmas)}: {s.gloss}" for s in senses],
                  labels=np.array([s.lex_filenum for s in senses], dtype=np.int64),
                  label_names=list(LEX_NAMES),
                  metadata={"root": str(root), "pos": poses,
                            "ss_types": [s.ss_type for s in senses],
                            "lemmas": [s.lemmas for s in senses],
                            "definitions": [s.definition for s in senses],
                            "examples": [s.examples for s in senses]})


def resolve_root(root: str | Path | None) -> Path:
    """An explicit root, else $GENIR_WORDNET_DIR, else `DEBIAN_ROOT`."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEBIAN_ROOT
