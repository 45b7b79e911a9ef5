"""Fashion-MNIST as a `Corpus`: the IDX reader, the loader and an offline-testable downloader.

The data normally comes from the Debian package `dataset-fashion-mnist`; off Debian,
`download_fashion_mnist(dir)` fetches the four official files and `GENIR_FASHION_MNIST_DIR`
points the loader at them. This file reads and verifies files; it does no preprocessing
(images stay (N, 28, 28) uint8) and holds no encoder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genir.data.corpus import Corpus, MissingDataError
from genir.io import file_digest, fsync_dir

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "GENIR_FASHION_MNIST_DIR"
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
APT_COMMAND = "sudo apt-get install --no-install-recommends dataset-fashion-mnist"

LABEL_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

SPLITS = {  # split -> (images file, labels file, number of items)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}

# MD5 of the official .gz files as published by Zalando (README "Get the Data").
# Debian's package re-gzips them (no file name in the gzip header, 24 bytes shorter), so
# its .gz files do not match these; their decompressed content matches RAW_SHA256.
GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# SHA-256 of the decompressed IDX bytes: identical for the official and the Debian files.
RAW_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz":
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz":
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz":
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# IDX type code (third magic byte) -> big-endian element dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_CHUNK_SIZE = 1 << 20


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or plain) -> its array, native byte order, shape from the header."""
    path = Path(path)
    data = _read_maybe_gzipped(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{data[:4].hex()} "
                         "(the first two bytes must be zero)")
    type_code, num_dims = data[2], data[3]
    if type_code not in IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}; "
                         f"valid codes are {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}")
    if num_dims == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * num_dims
    if len(data) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, "
                         f"{num_dims} dimensions need {header_size})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=num_dims, offset=4))
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but an IDX header of shape {shape} "
                         f"and dtype {dtype.str} means {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def _read_maybe_gzipped(path: Path) -> bytes:
    """The file's bytes, decompressed if it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data: {exc}") from exc


def load_fashion_mnist(split: str = "train", *, root: str | Path | None = None) -> Corpus:
    """One split ("train": 60k, "test": 10k) as an image corpus of (N, 28, 28) uint8 arrays.

    root None means $GENIR_FASHION_MNIST_DIR if set, else the Debian package's directory.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; valid splits: {list(SPLITS)}")
    root = resolve_root(root)
    images_name, labels_name, _ = SPLITS[split]
    _require_files(root, [images_name, labels_name])
    images = read_idx(root / images_name)
    labels = read_idx(root / labels_name)
    _check_split(root, images, labels)
    return Corpus(name=f"fashion-mnist-{split}",
                  item_ids=[f"fmnist-{split}-{i:05d}" for i in range(len(labels))],
                  modality="image", images=images.astype(np.uint8, copy=False),
                  labels=labels.astype(np.int64), label_names=list(LABEL_NAMES),
                  metadata={"root": str(root), "split": split})


def resolve_root(root: str | Path | None) -> Path:
    """An explicit root, else $GENIR_FASHION_MNIST_DIR, else `DEBIAN_ROOT`."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEBIAN_ROOT


def _require_files(root: Path, names: list[str]) -> None:
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise MissingDataError(
            f"Fashion-MNIST files missing from {root}: {', '.join(missing)}. "
            f"On Debian/Ubuntu install them with:\n    {APT_COMMAND}\n"
            "Elsewhere, download them with "
            "`genir.data.fashion_mnist.download_fashion_mnist(dir)` and set "
            f"{ENV_VAR}=dir (or pass root=dir).")


def _check_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{root}: Fashion-MNIST images must be (N, 28, 28) uint8, "
                         f"got {images.shape} {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{root}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(LABEL_NAMES)):
        raise ValueError(f"{root}: labels must lie in 0..{len(LABEL_NAMES) - 1}, "
                         f"got {labels.min()}..{labels.max()}")


def download_fashion_mnist(dest: str | Path, *, base_url: str = BASE_URL,
                           opener: Callable[..., Any] = urllib.request.urlopen,
                           timeout: float = 60.0) -> Path:
    """Fetch the four official .gz files into `dest`, verified against `GZ_MD5`; -> dest.

    Files already present with the right checksum are kept. Each download goes to a temp
    file in `dest` and is renamed into place only once its checksum matches, so a failed
    or corrupt download never leaves a partial file. `opener(url, timeout=...)` must return
    a context manager with `.read(n)`; tests pass a fake one.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in GZ_MD5.items():
        target = dest / name
        if target.is_file() and file_digest(target, "md5") == md5:
            continue
        _download_verified(base_url.rstrip("/") + "/" + name, target, md5,
                           opener=opener, timeout=timeout)
    return dest


def _download_verified(url: str, target: Path, md5: str, *,
                       opener: Callable[..., Any], timeout: float) -> None:
    """url -> target, atomically: temp file, fsync, checksum, os.replace."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, opener(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK_SIZE), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, "
                             f"expected {md5}; nothing was written to {target}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
