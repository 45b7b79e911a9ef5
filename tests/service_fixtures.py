"""A tiny saved index of generated images for the service tests (hermetic, ~2 s)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from genir.decoder.model import DecoderConfig
from genir.decoder.train import SameLabelSampler, TrainConfig
from genir.encoders.simple import PixelHashEncoder
from genir.ids.rq import RQConfig
from genir.index import GenerativeIndex, IndexConfig, SearchConfig

PATTERNS = ("stripes", "columns", "checks")


def pattern_image(kind: int, seed: int, side: int = 32) -> Image.Image:
    """Class 0 horizontal stripes, 1 vertical stripes, 2 checks; seeded noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side]
    base = [(y // 4) % 2, (x // 4) % 2, ((x // 4) + (y // 4)) % 2][kind]
    pixels = np.clip(base * 200 + rng.normal(0, 25, (side, side)) + 20, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def png_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def make_service_index(folder: Path, n: int = 90) -> Path:
    encoder = PixelHashEncoder(dim=32, seed=0)
    labels = np.arange(n) % 3
    images = [pattern_image(int(c), seed=i) for i, c in enumerate(labels)]
    emb = encoder.encode_images(images)
    ids = [f"item-{i:03d}" for i in range(n)]
    metas = [{"caption": f"{PATTERNS[c]} number {i}", "label": PATTERNS[c]}
             for i, c in enumerate(labels)]
    cfg = IndexConfig(rq=RQConfig(num_levels=2, codebook_size=8),
                      decoder=DecoderConfig(d_model=32, num_layers=1, num_heads=2, num_prefix=2),
                      train=TrainConfig(steps=120, batch_size=32, lr=3e-3, warmup_steps=10),
                      search=SearchConfig(beam_size=8))
    index = GenerativeIndex.build(emb, item_ids=ids, queries=emb,
                                  sampler=SameLabelSampler(labels, labels), config=cfg,
                                  item_meta=metas,
                                  extra={"encoder": encoder.spec, "item_modality": "image",
                                         "task": "patterns"})
    index.save(folder, thumbnails={i: png_bytes(im) for i, im in zip(ids, images, strict=True)})
    return folder


def make_universal_service_index(folder: Path, n: int = 60) -> Path:
    """A tiny universal index: pattern images, their captions, and (image, caption) pairs;
    the decoder reads [content ; instruction] as genir.query.decoder_input builds it."""
    from genir.decoder.train import PairSampler
    from genir.instructions import INSTRUCTIONS
    from genir.query import decoder_input

    encoder = PixelHashEncoder(dim=32, seed=0)
    labels = np.arange(n) % 3
    images = [pattern_image(int(c), seed=i) for i, c in enumerate(labels)]
    captions = [f"{PATTERNS[c]} pattern" for c in labels]
    img, txt = encoder.encode_images(images), encoder.encode_texts(captions)
    pair = img + txt
    pair /= np.linalg.norm(pair, axis=1, keepdims=True)
    emb = np.concatenate([img, txt, pair]).astype(np.float32)
    modality = np.repeat([0, 1, 2], n)
    item_labels = np.tile(labels, 3)
    ids = [f"{m}-{i:03d}" for m in ("image", "text", "pair") for i in range(n)]
    metas = [{"caption": c} for c in [""] * n + captions + captions]
    # pairs: every item as a query, with each instruction its modality allows, to a random
    # same-pattern item of the instructed modality
    rng = np.random.default_rng(0)
    ins_emb = {i.text: encoder.encode_texts([i.text])[0] for i in INSTRUCTIONS}
    names = ("image", "text", "image_text")
    inputs, targets = [], []
    for row in range(len(emb)):
        for ins in INSTRUCTIONS:
            if ins.query_modality != names[modality[row]]:
                continue
            want = names.index(ins.target_modality)
            same = np.flatnonzero((item_labels == item_labels[row]) & (modality == want))
            for target in rng.choice(same, 3):
                inputs.append(decoder_input(emb[row:row + 1], ins_emb[ins.text])[0])
                targets.append(target)
    cfg = IndexConfig(tokenizer="genius", rq=RQConfig(num_levels=3, codebook_size=8),
                      decoder=DecoderConfig(d_model=32, num_layers=1, num_heads=2, num_prefix=2),
                      train=TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=10),
                      search=SearchConfig(beam_size=8))
    cfg.rq.steps, cfg.rq.hidden_dim, cfg.rq.modality_codes = 40, 16, "given"  # type: ignore[attr-defined]
    index = GenerativeIndex.build(
        emb, item_ids=ids, queries=np.array(inputs, dtype=np.float32),
        sampler=PairSampler(np.arange(len(targets)), np.array(targets)), config=cfg,
        item_meta=metas, item_modality=modality,
        extra={"encoder": {**encoder.spec, "instructions": "concatenated"}, "task": "universal"})
    index.save(folder, thumbnails={i: png_bytes(im) for i, im in zip(ids, images, strict=False)})
    return folder
