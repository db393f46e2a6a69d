import gzip

import numpy as np
import pytest

from bnncl.data.idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    load_fashion_mnist,
    load_idx_dataset,
    read_idx,
    write_idx,
)
from bnncl.errors import DataError
from data_available import needs_fmnist


def _write_split(root, prefix, images, labels, ext):
    write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)


@pytest.mark.parametrize("ext", [".gz", ".xz", ""])
def test_idx_fixture_round_trip(tmp_path, ext):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 3, 3, 5], dtype=np.uint8)
    _write_split(tmp_path, "t10k", images, labels, ext)
    ds = load_idx_dataset(tmp_path, "test", MNIST_CLASSES)
    assert ds.images.shape == (7, 28, 28, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names == MNIST_CLASSES


def test_idx_header_is_the_official_one(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((2, 3, 4), np.uint8))
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:8] == (2).to_bytes(4, "big")
    assert len(raw) == 16 + 24


def test_idx_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_idx_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte"):
        load_idx_dataset(tmp_path)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "trunc").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="expected 5"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="corrupted gzip"):
        read_idx(tmp_path / "badgz")
    _write_split(tmp_path, "train", np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8), ".gz")
    with pytest.raises(DataError, match="3 images but 4 labels"):
        load_idx_dataset(tmp_path)
    with pytest.raises(DataError, match="split must be"):
        load_idx_dataset(tmp_path, "val")


@needs_fmnist
def test_real_fashion_mnist():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(train.class_counts(), np.full(10, 6000))
    np.testing.assert_array_equal(test.class_counts(), np.full(10, 1000))
    assert train.class_names == FASHION_MNIST_CLASSES
    assert 60 < train.images.mean() < 80  # Fashion-MNIST mean pixel is about 72.9
