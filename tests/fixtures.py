"""Writers of tiny data sets in the bundled formats, shared by the tests.

Fashion-MNIST as IDX .gz files and Open Clip Art as png/ + svg/ trees, with images whose
class shows in the pixels, so a pipeline run on them has something to learn.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
SVG_NAMESPACES = ('xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" '
                  'xmlns:cc="http://web.resource.org/cc/" '
                  'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"')


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def class_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,) labels in 0..9 -> (N, 28, 28) uint8: a bright horizontal band per class + noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label: 5 + 2 * label, 3:25] = 230
    return images


def write_fashion_mnist(root: Path, *, num_train: int = 120, num_test: int = 40,
                        seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n, prefix in ((num_train, "train"), (num_test, "t10k")):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", class_images(labels, seed + n))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def svg_text(title: str = "", keywords: tuple[str | None, ...] = (), description: str = "") -> str:
    items = "".join("<rdf:li/>" if k is None else f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return (f'<?xml version="1.0"?>\n<svg {SVG_NAMESPACES}><metadata><rdf:RDF>'
            f'<cc:Work rdf:about=""><dc:title>{title}</dc:title>'
            f"<dc:description>{description}</dc:description>"
            f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
            "<dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent>"
            "</dc:publisher></cc:Work></rdf:RDF></metadata><rect width='1' height='1'/></svg>")


def png_bytes(size: tuple[int, int], mode: str = "RGB", color: tuple[int, ...] | None = None
              ) -> bytes:
    rng = np.random.default_rng(size[0])
    channels = {"RGB": 3, "RGBA": 4}[mode]
    if color is None:
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    else:
        pixels = np.zeros((size[1], size[0], channels), dtype=np.uint8) + np.uint8(255)
        pixels[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = color
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
          "yellow": (240, 220, 20), "black": (10, 10, 10)}
SHAPES = ("square", "box", "tile", "block", "panel", "patch")


def write_openclipart(root: Path) -> Path:
    """30 clip-art items: a colored square per item, captioned with its color and a name."""
    for ci, (color, rgb) in enumerate(COLORS.items()):
        for si, shape in enumerate(SHAPES):
            rel = f"{'warm' if ci < 2 else 'cool'}/{color}_{shape}"
            size = (24 + 4 * si, 24 + 4 * si)
            put(root, f"png/{rel}.png", png_bytes(size, color=rgb))
            put(root, f"svg/{rel}.svg", svg_text(f"{color} {shape}", (color, shape, "clipart")))
    return root


def write_tiny_clip(path: Path, dim: int = 16) -> None:
    """Random tiny CLIPModel + CLIP BPE tokenizer + image processor, all under `path`."""
    import json
    import string

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    # Byte-level BPE vocab: specials, then every lowercase letter and digit, alone
    # (mid-word) and with CLIP's end-of-word suffix; no merges needed.
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = string.ascii_lowercase + string.digits
    tokens = specials + list(chars) + [c + "</w>" for c in chars]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(path)
    tokenizer.save_pretrained(path)

    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=37,
                         max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=37),
        projection_dim=dim,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(path)
