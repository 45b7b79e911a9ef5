"""Fashion-MNIST loader: IDX round trips, error messages and an offline download.

Hermetic except the one `slow` test, which reads the Debian package when it is installed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from fixtures import idx_bytes, write_idx
from genir.data import MissingDataError, load_fashion_mnist
from genir.data import fashion_mnist as fm


def write_split(root: Path, split: str, num_items: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_items, 28, 28), dtype=np.uint8)
    labels = (np.arange(num_items) % 10).astype(np.uint8)
    images_name, labels_name, _ = fm.SPLITS[split]
    write_idx(root / images_name, images)
    write_idx(root / labels_name, labels)
    return images


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (3, 4, 5)), (np.int32, (7,)),
                                         (np.float32, (2, 3))])
def test_read_idx_round_trip(tmp_path, gz, dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    out = fm.read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_read_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "bad-magic.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="bad-magic.idx.*magic"):
        fm.read_idx(path)


@pytest.mark.parametrize("cut,match", [(1, "bytes"), (-1, "bytes")])
def test_read_idx_wrong_byte_count(tmp_path, cut, match):
    data = idx_bytes(np.zeros((2, 3), np.uint8))
    data = data[:-1] if cut > 0 else data + b"\x00"
    path = tmp_path / "short.idx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"short.idx.*{match}"):
        fm.read_idx(path)


def test_read_idx_unknown_type_code_and_bad_gzip(tmp_path):
    path = tmp_path / "type.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="type.idx.*type code 0x07"):
        fm.read_idx(path)
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(ValueError, match="cut.idx.gz.*gzip"):
        fm.read_idx(path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_fixture_split(tmp_path, split):
    images = write_split(tmp_path, split)
    corpus = load_fashion_mnist(split, root=tmp_path)
    assert corpus.name == f"fashion-mnist-{split}"
    assert corpus.item_ids[:2] == [f"fmnist-{split}-00000", f"fmnist-{split}-00001"]
    assert corpus.modality == "image"
    assert corpus.images.shape == (12, 28, 28) and corpus.images.dtype == np.uint8
    np.testing.assert_array_equal(corpus.images, images)
    assert corpus.labels.dtype == np.int64
    np.testing.assert_array_equal(corpus.labels, np.arange(12) % 10)
    assert corpus.label_names == fm.LABEL_NAMES and len(fm.LABEL_NAMES) == 10


def test_root_from_env(tmp_path, monkeypatch):
    write_split(tmp_path, "test", num_items=3)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    assert len(load_fashion_mnist("test")) == 3


def test_unknown_split_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="'train'.*'test'"):
        load_fashion_mnist("validation", root=tmp_path)


def test_missing_files_give_install_command(tmp_path):
    with pytest.raises(MissingDataError) as info:
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    message = str(info.value)
    assert "sudo apt-get install --no-install-recommends dataset-fashion-mnist" in message
    assert "download_fashion_mnist" in message and fm.ENV_VAR in message
    assert isinstance(info.value, FileNotFoundError)


def test_mismatched_label_count_is_rejected(tmp_path):
    write_split(tmp_path, "test", num_items=4)
    write_idx(tmp_path / fm.SPLITS["test"][1], np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="4 images"):
        load_fashion_mnist("test", root=tmp_path)


class FakeOpener:
    """Serves bytes by file name, records the URLs asked for; never touches the network."""

    def __init__(self, payloads: dict[str, bytes]):
        self.payloads = payloads
        self.urls: list[str] = []

    def __call__(self, url: str, *, timeout: float) -> io.BytesIO:
        self.urls.append(url)
        return io.BytesIO(self.payloads[url.rsplit("/", 1)[1]])


@pytest.fixture
def payloads(monkeypatch) -> dict[str, bytes]:
    """Tiny stand-in .gz files, with the checksum table patched to match them."""
    data = {name: gzip.compress(f"fake {name}".encode()) for name in fm.GZ_MD5}
    monkeypatch.setattr(fm, "GZ_MD5", {name: hashlib.md5(blob).hexdigest()
                                       for name, blob in data.items()})
    return data


def test_download_verifies_and_skips_present_files(tmp_path, payloads):
    opener = FakeOpener(payloads)
    dest = fm.download_fashion_mnist(tmp_path / "fm", base_url="http://example.invalid/x/",
                                     opener=opener)
    assert sorted(p.name for p in dest.iterdir()) == sorted(payloads)
    for name, blob in payloads.items():
        assert (dest / name).read_bytes() == blob
    assert opener.urls == [f"http://example.invalid/x/{name}" for name in fm.GZ_MD5]
    fm.download_fashion_mnist(dest, opener=opener)  # everything present and verified
    assert len(opener.urls) == len(fm.GZ_MD5)


def test_download_replaces_a_corrupt_existing_file(tmp_path, payloads):
    name = next(iter(payloads))
    (tmp_path / name).write_bytes(b"stale")
    opener = FakeOpener(payloads)
    fm.download_fashion_mnist(tmp_path, opener=opener)
    assert (tmp_path / name).read_bytes() == payloads[name]
    assert len(opener.urls) == len(fm.GZ_MD5)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, payloads):
    first = next(iter(payloads))
    bad = dict(payloads, **{first: b"tampered bytes"})
    with pytest.raises(ValueError, match=f"checksum mismatch.*{first}"):
        fm.download_fashion_mnist(tmp_path, opener=FakeOpener(bad))
    assert list(tmp_path.iterdir()) == []  # no target, no temp file


def test_default_checksums_are_the_official_ones():
    assert fm.GZ_MD5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert fm.BASE_URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


@pytest.mark.slow
def test_real_debian_data():
    if not fm.DEBIAN_ROOT.is_dir():
        pytest.skip(f"{fm.DEBIAN_ROOT} absent: {fm.APT_COMMAND}")
    train = load_fashion_mnist("train", root=fm.DEBIAN_ROOT)
    test = load_fashion_mnist("test", root=fm.DEBIAN_ROOT)
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 6000))
    for name, sha256 in fm.RAW_SHA256.items():  # same content as Zalando's official files
        raw = gzip.decompress((fm.DEBIAN_ROOT / name).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == sha256, name
