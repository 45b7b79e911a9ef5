"""Encoders by name: what `--encoder` selects and what a saved index's manifest reopens.

    spec = parse_encoder("clip:/models/clip-vit-b32")    # {"type": "clip", "name": "/models/..."}
    encoder = load_encoder(spec, index_dir)               # an object with encode_images / texts

Kinds: "default" (the bundled towers, chosen per source by `genir.pipeline`),
"efficientnet-lite0" (images), "sentence-transformers[:PATH_OR_NAME]" (texts; bundled
all-MiniLM-L6-v2 without a name), "clip:PATH_OR_NAME" (Hugging Face `CLIPModel`, images and
texts), "none" (the items are your own vectors; queries are vectors too). A manifest's spec
may also name the encoders the bundled tasks train ("aligned", "efficientnet-lite0-tuned")
or the tests' "pixel-hash".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENCODER_CHOICES = ("default", "efficientnet-lite0", "sentence-transformers[:PATH]", "clip:PATH",
                   "none")


def parse_encoder(text: str) -> dict[str, Any]:
    """An `--encoder` value -> a manifest spec. ValueError lists the valid forms."""
    kind, _, name = text.partition(":")
    if kind in ("default", "none", "efficientnet-lite0") and not name:
        return {"type": kind} if kind != "efficientnet-lite0" else {"type": kind, "image_size": 224}
    if kind == "sentence-transformers":
        return {"type": kind, "name": name or None}
    if kind == "clip" and name:
        return {"type": kind, "name": name}
    raise ValueError(f"unknown encoder {text!r}; choose one of {', '.join(ENCODER_CHOICES)}")


def load_encoder(spec: dict[str, Any], index_dir: str | Path | None = None) -> Any:
    """The encoder a spec names (weights a build trained are read from `index_dir`), or None
    for "none". ValueError: an unknown type."""
    kind = spec.get("type")
    if kind == "none":
        return None
    if kind == "efficientnet-lite0":
        from genir.encoders.towers import EfficientNetLiteTower

        return EfficientNetLiteTower(image_size=spec.get("image_size", 224))
    if kind == "sentence-transformers":
        from genir.encoders.towers import MiniLMTower

        return MiniLMTower(spec.get("name"))
    if kind == "clip":
        from genir.encoders.clip import CLIPEncoder

        return CLIPEncoder(spec["name"])
    if kind in ("efficientnet-lite0-tuned", "aligned") and index_dir is None:
        raise ValueError(f"a {kind!r} encoder is stored in its index folder: pass index_dir")
    if kind == "efficientnet-lite0-tuned":
        from genir.encoders.tuning import TunedEfficientNetLite

        return TunedEfficientNetLite.load(Path(index_dir) / spec["path"])  # type: ignore[arg-type]
    if kind == "aligned":
        from genir.encoders.aligned import AlignedEncoder
        from genir.encoders.cache import EmbeddingCache

        return AlignedEncoder.load(Path(index_dir) / spec["path"],  # type: ignore[arg-type]
                                   cache=EmbeddingCache(enabled=False))
    if kind == "pixel-hash":
        from genir.encoders.simple import PixelHashEncoder

        return PixelHashEncoder(dim=spec["dim"], seed=spec["seed"])
    raise ValueError(f"unknown encoder type {kind!r}")
