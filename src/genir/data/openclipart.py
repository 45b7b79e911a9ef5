"""Open Clip Art as a captioned image `Corpus`: PNG paths, captions from the SVG metadata.

The data comes from the Debian packages `openclipart-png` and `openclipart-svg`: each
png/<rel>.png has a twin svg/<rel>.svg whose RDF metadata (title, keywords, description)
becomes the caption, and whose top-level folder is the class. This file lists, validates
and captions files; it never decodes pixels for the corpus (images stay paths) and never
renders SVG.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genir.data.corpus import Corpus, MissingDataError

DEBIAN_ROOT = Path("/usr/share/openclipart")
ENV_VAR = "GENIR_OPENCLIPART_DIR"
APT_COMMAND = "sudo apt-get install --no-install-recommends openclipart-png openclipart-svg"
MAX_CAPTION_CHARS = 300
MAX_NAMED_SKIPS = 5  # how many skipped files the warning names
_SVG_CHUNK_SIZE = 4096  # bytes fed to the XML parser at a time; small, since we stop early

DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
CC = "{http://web.resource.org/cc/}"


def parse_svg_metadata(path: str | Path) -> dict[str, Any]:
    """An SVG's RDF metadata -> {"title": str, "keywords": list[str], "description": str}.

    Reads `cc:Work/dc:title`, `cc:Work/dc:subject/rdf:Bag/rdf:li` and
    `cc:Work/dc:description` of the first `cc:Work`. Missing fields are empty; an unreadable
    or malformed file gives all-empty fields rather than an error.
    """
    work = _first_work(Path(path))
    if work is None:
        return {"title": "", "keywords": [], "description": ""}
    keywords = [li.text for li in work.iterfind(f"{DC}subject/{RDF}Bag/{RDF}li")]
    return {"title": _squash(work.findtext(f"{DC}title")),
            "keywords": _dedupe(_squash(k) for k in keywords),
            "description": _squash(work.findtext(f"{DC}description"))}


def _first_work(path: Path) -> ET.Element | None:
    """The first `cc:Work` element, parsing only as far as its end.

    The metadata usually sits near the top, so feeding small chunks and stopping early
    halves the time of a full parse on the Debian tree. Plain ElementTree: the files are
    local, and the expat bundled with Python >= 3.11 limits entity expansion (billion
    laughs); some Illustrator exports declare internal entities.
    """
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("end",))
    try:
        with path.open("rb") as f:
            while chunk := f.read(_SVG_CHUNK_SIZE):
                parser.feed(chunk)
                for event in parser.read_events():
                    elem = event[-1]  # ("end", element)
                    if isinstance(elem, ET.Element) and elem.tag == f"{CC}Work":
                        return elem
    except (ET.ParseError, OSError, UnicodeError, ValueError):
        pass
    return None


def _squash(text: str | None) -> str:
    """None -> ""; runs of whitespace (newlines, tabs) -> one space."""
    return " ".join(text.split()) if text else ""


def _dedupe(items: Iterable[str]) -> list[str]:
    """Non-empty items, first spelling kept, case-insensitive duplicates dropped, in order."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item and item.casefold() not in seen:
            seen.add(item.casefold())
            out.append(item)
    return out


def make_caption(meta: dict[str, Any], *, stem: str = "",
                 max_chars: int = MAX_CAPTION_CHARS) -> str:
    """meta -> "Title. kw1, kw2. Description", at most `max_chars`; the stem if all empty.

    The stem fallback has its underscores replaced by spaces.

    Keywords' underscores become spaces ("lemon_theme_icon" -> "lemon theme icon"); a
    description equal to the title is dropped.
    """
    title, description = _squash(meta.get("title")), _squash(meta.get("description"))
    if description.casefold() == title.casefold():
        description = ""  # many SVGs repeat the title as the description
    keywords = ", ".join(k.replace("_", " ") for k in meta.get("keywords") or [])
    parts = [title, _squash(keywords), description]
    caption = ""
    for part in filter(None, parts):
        sep = "" if not caption else " " if caption[-1] in ".!?" else ". "
        caption += sep + part
    if not caption:
        caption = _squash(stem.replace("_", " "))
    return _truncate(caption, max_chars)


def _truncate(text: str, max_chars: int) -> str:
    """Cut at the last word boundary that fits, marking the cut with "..."."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 3]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,.;:") + "..."


def load_openclipart(*, root: str | Path | None = None, limit: int | None = None,
                     validate: bool = True) -> Corpus:
    """PNG paths sorted by relative path, captioned from their SVGs, labelled by top folder.

    root None means $GENIR_OPENCLIPART_DIR if set, else the Debian packages' directory.
    validate: open and verify every PNG with Pillow and skip the ones it refuses (broken,
    truncated, larger than `Image.MAX_IMAGE_PIXELS`), with one warning for all of them.
    limit: keep the first `limit` (valid) items in that order.
    label_names are the top-level folders of the whole tree, so label ids do not depend on
    `limit`; a PNG directly under png/ gets label -1.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    root = resolve_root(root)
    png_root, svg_root = root / "png", root / "svg"
    _require_trees(png_root, svg_root)
    rel_paths = list_pngs(png_root)  # sorted
    label_names = sorted({rel.split("/", 1)[0] for rel in rel_paths if "/" in rel})
    if validate:
        rel_paths, skipped = _valid_pngs(png_root, rel_paths, limit=limit)
    else:
        rel_paths, skipped = rel_paths[:limit], []
    label_of = {name: i for i, name in enumerate(label_names)}
    labels = [label_of.get(rel.split("/", 1)[0], -1) if "/" in rel else -1 for rel in rel_paths]
    return Corpus(name="openclipart",
                  item_ids=[f"openclipart/{rel.removesuffix('.png')}" for rel in rel_paths],
                  modality="image",
                  images=[str(png_root / rel) for rel in rel_paths],
                  texts=[_caption_for(svg_root, rel) for rel in rel_paths],
                  labels=np.asarray(labels, dtype=np.int64), label_names=label_names,
                  metadata={"root": str(root), "skipped": skipped})


def resolve_root(root: str | Path | None) -> Path:
    """An explicit root, else $GENIR_OPENCLIPART_DIR, else `DEBIAN_ROOT`."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEBIAN_ROOT


def _require_trees(png_root: Path, svg_root: Path) -> None:
    missing = [str(p) for p in (png_root, svg_root) if not p.is_dir()]
    if missing:
        raise MissingDataError(
            f"Open Clip Art not found: missing {' and '.join(missing)}. "
            f"On Debian/Ubuntu install it with:\n    {APT_COMMAND}\n"
            f"or set {ENV_VAR} (or pass root=) to a directory holding png/ and svg/.")


def list_pngs(png_root: Path) -> list[str]:
    """Relative POSIX paths of every *.png under png_root, sorted as strings."""
    out: list[str] = []
    for dirpath, _, filenames in os.walk(png_root):
        rel_dir = os.path.relpath(dirpath, png_root).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        out.extend(prefix + f for f in filenames if f.endswith(".png"))
    return sorted(out)


def _valid_pngs(png_root: Path, rel_paths: list[str], *,
                limit: int | None) -> tuple[list[str], list[str]]:
    """(first `limit` PNGs Pillow accepts, those it refused); warns once if any refused."""
    kept: list[str] = []
    skipped: list[str] = []
    checked = 0
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we skip those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for rel in rel_paths:
            if limit is not None and len(kept) >= limit:
                break
            checked += 1
            (kept if _png_ok(png_root / rel) else skipped).append(rel)
    if skipped:
        more = ", ..." if len(skipped) > MAX_NAMED_SKIPS else ""
        named = ", ".join(skipped[:MAX_NAMED_SKIPS]) + more
        warnings.warn(f"openclipart: skipped {len(skipped)} of {checked} PNGs that Pillow "
                      f"cannot read under {png_root}: {named}", stacklevel=3)
    return kept, skipped


def _png_ok(path: Path) -> bool:
    """Whether Pillow opens and verifies the file (chunk CRCs, size under the bomb limit)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # Pillow raises many types for bad files (SyntaxError, struct.error...)
        return False
    return True


def _caption_for(svg_root: Path, rel_png: str) -> str:
    stem = Path(rel_png).stem
    svg = svg_root / (rel_png.removesuffix(".png") + ".svg")
    meta = parse_svg_metadata(svg) if svg.is_file() else {}
    return make_caption(meta, stem=stem)
