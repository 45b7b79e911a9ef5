"""Open Clip Art loader: SVG metadata, captions, PNG validation and labels on a tiny tree.

Hermetic except the one `slow` test, which reads the Debian packages when installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import SVG_NAMESPACES, png_bytes, put, svg_text
from genir.data import MissingDataError, load_openclipart
from genir.data import openclipart as oc
from genir.encoders.base import load_image


@pytest.fixture
def tree(tmp_path) -> Path:
    """3 good PNGs (one RGBA, one without SVG), a truncated PNG and a 64x64 "bomb"."""
    root = tmp_path / "openclipart"
    put(root, "png/animals/frog_01.png", png_bytes((8, 8)))
    put(root, "svg/animals/frog_01.svg",
        svg_text("2 dead frogs", ("frog", None, "swamp", " ", "frog", "dead"),
                 "2 dead frogs... nothing more..."))
    put(root, "png/animals/birds/owl.png", png_bytes((9, 7), "RGBA"))
    put(root, "svg/animals/birds/owl.svg", svg_text("Owl", ("bird", "night_owl")))
    put(root, "png/food/green_apple_02.png", png_bytes((6, 6)))  # no SVG
    put(root, "png/food/broken.png", png_bytes((32, 32))[:150])
    put(root, "svg/food/broken.svg", svg_text("Broken"))
    put(root, "png/shapes/huge.png", png_bytes((64, 64)))
    put(root, "svg/shapes/huge.svg", svg_text("Huge"))
    return root


def test_parse_svg_metadata_drops_empty_keywords_and_dedupes(tree):
    meta = oc.parse_svg_metadata(tree / "svg/animals/frog_01.svg")
    assert meta == {"title": "2 dead frogs", "keywords": ["frog", "swamp", "dead"],
                    "description": "2 dead frogs... nothing more..."}


def test_parse_svg_metadata_ignores_agent_titles(tmp_path):
    path = tmp_path / "a.svg"
    path.write_text(svg_text(keywords=("x",)))
    assert oc.parse_svg_metadata(path) == {"title": "", "keywords": ["x"], "description": ""}


@pytest.mark.parametrize("text", ["<svg><metadata><rdf:RDF>", "not xml at all", "",
                                  f"<svg {SVG_NAMESPACES}><rect/></svg>"])
def test_parse_svg_metadata_malformed_or_bare_gives_empty_fields(tmp_path, text):
    path = tmp_path / "bad.svg"
    path.write_text(text)
    assert oc.parse_svg_metadata(path) == {"title": "", "keywords": [], "description": ""}
    assert oc.parse_svg_metadata(tmp_path / "absent.svg")["keywords"] == []


def test_make_caption_order_punctuation_and_fallback():
    meta = {"title": "2 dead frogs", "keywords": ["frog", "swamp", "dead"],
            "description": "2 dead frogs... nothing\n more..."}
    expected = "2 dead frogs. frog, swamp, dead. 2 dead frogs... nothing more..."
    assert oc.make_caption(meta) == expected
    assert oc.make_caption({"title": "Hi!", "keywords": ["a_b"]}) == "Hi! a b"
    assert oc.make_caption({"title": "Same", "description": "same"}) == "Same"
    assert oc.make_caption({}, stem="green_apple_02") == "green apple 02"
    assert oc.make_caption({"title": "", "keywords": []}, stem="x") == "x"


def test_make_caption_is_capped():
    meta = {"title": "word " * 200}
    caption = oc.make_caption(meta)
    assert len(caption) <= oc.MAX_CAPTION_CHARS and caption.endswith("word...")
    assert len(oc.make_caption(meta, max_chars=50)) <= 50


@pytest.mark.parametrize("max_pixels", [1000, 3000])  # 64*64: DecompressionBombError; Warning
def test_load_skips_bad_pngs_with_one_warning(tree, monkeypatch, max_pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", max_pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = load_openclipart(root=tree)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "skipped 2 of 5" in messages[0]
    assert "food/broken.png" in messages[0] and "shapes/huge.png" in messages[0]
    assert corpus.item_ids == ["openclipart/animals/birds/owl", "openclipart/animals/frog_01",
                               "openclipart/food/green_apple_02"]
    assert corpus.metadata["skipped"] == ["food/broken.png", "shapes/huge.png"]
    assert corpus.texts == ["Owl. bird, night owl",
                            "2 dead frogs. frog, swamp, dead. 2 dead frogs... nothing more...",
                            "green apple 02"]
    assert corpus.label_names == ["animals", "food", "shapes"]
    np.testing.assert_array_equal(corpus.labels, [0, 0, 1])
    assert corpus.modality == "image"
    assert corpus.images == [str(tree / "png" / rel) for rel in
                             ("animals/birds/owl.png", "animals/frog_01.png",
                              "food/green_apple_02.png")]
    assert [load_image(p).size for p in corpus.images] == [(9, 7), (8, 8), (6, 6)]


def test_load_without_validation_keeps_everything(tree):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus = load_openclipart(root=tree, validate=False)
    assert len(corpus) == 5 and corpus.item_ids[-1] == "openclipart/shapes/huge"
    np.testing.assert_array_equal(corpus.labels, [0, 0, 1, 1, 2])


def test_limit_keeps_first_valid_items_and_stable_labels(tree, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # food/broken.png is never reached: no warning
        corpus = load_openclipart(root=tree, limit=2)
    assert corpus.item_ids == ["openclipart/animals/birds/owl", "openclipart/animals/frog_01"]
    assert corpus.label_names == ["animals", "food", "shapes"]
    with pytest.warns(UserWarning, match="skipped 1 of 4"):  # stops before shapes/huge.png
        assert len(load_openclipart(root=tree, limit=3)) == 3
    with pytest.raises(ValueError, match="limit"):
        load_openclipart(root=tree, limit=-1)


def test_root_from_env(tree, monkeypatch):
    monkeypatch.setenv(oc.ENV_VAR, str(tree))
    assert len(load_openclipart(validate=False)) == 5


@pytest.mark.parametrize("missing", ["png", "svg"])
def test_missing_tree_gives_install_command(tree, missing):
    (tree / missing).rename(tree / f"{missing}.off")
    with pytest.raises(MissingDataError,
                       match="sudo apt-get install --no-install-recommends "
                             "openclipart-png openclipart-svg"):
        load_openclipart(root=tree)


@pytest.mark.slow
def test_real_debian_data():
    if not (oc.DEBIAN_ROOT / "png").is_dir() or not (oc.DEBIAN_ROOT / "svg").is_dir():
        pytest.skip(f"{oc.DEBIAN_ROOT} absent: {oc.APT_COMMAND}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few huge PNGs exceed Pillow's bomb limit
        corpus = load_openclipart(root=oc.DEBIAN_ROOT)
    assert len(corpus) > 8000
    assert len(corpus.label_names) >= 20
    assert all(corpus.texts) and len(set(corpus.item_ids)) == len(corpus)
    assert corpus.labels.min() >= 0 and corpus.labels.max() < len(corpus.label_names)
