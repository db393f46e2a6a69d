import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from bnncl.data.cifar10 import CIFAR10_CLASSES, default_cifar10_path, load_cifar10, load_cifar10_batches
from bnncl.errors import DataError
from data_available import needs_cifar


def _write_batches(root, n_per_batch=4, seed=0):
    """The official cifar-10-batches-py layout: pickled dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    expected_images, expected_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(root / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n_per_batch}, fh, protocol=2)
        if name != "test_batch":
            expected_images.append(data)
            expected_labels += labels
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, fh)
    return np.concatenate(expected_images), np.array(expected_labels)


def test_batches_py_fixture(tmp_path):
    data, labels = _write_batches(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder itself or its parent
        ds = load_cifar10(path, "train")
        assert ds.images.shape == (20, 32, 32, 3)
        np.testing.assert_array_equal(ds.labels, labels)
        # channel planes (R, G, B) of 1024 bytes each, row-major: pixel (0, 1) red is byte 1
        assert ds.images[0, 0, 1, 0] == data[0, 1] and ds.images[0, 0, 0, 2] == data[0, 2048]
    assert len(load_cifar10_batches(tmp_path / "cifar-10-batches-py", "test")) == 4


def test_batches_refuse_arbitrary_pickles(tmp_path):
    root = tmp_path / "evil"
    _write_batches(root)

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with open(root / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": Boom(), b"labels": []}, fh)
    with pytest.raises(DataError, match="forbidden global"):
        load_cifar10(root, "train")


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_tar_maps_labels_by_name(tmp_path):
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for cls, color in (("truck", (250, 0, 0)), ("airplane", (0, 0, 250))):
                for i in range(2):
                    data = _png(color)
                    info = tarfile.TarInfo(f"cifar/{split}/{cls}/{i:04d}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    ds = load_cifar10(archive, "test")
    assert sorted(ds.labels.tolist()) == [0, 0, 9, 9]
    assert ds.class_names == CIFAR10_CLASSES
    truck = ds.images[ds.labels == 9]
    assert (truck[..., 0] > 240).all()
    again = load_cifar10(archive, "test")  # second call comes from the cache
    np.testing.assert_array_equal(again.images, ds.images)


def test_image_folder_directory(tmp_path):
    for cls in ("ship", "cat"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        (tmp_path / "test" / cls / "1.png").write_bytes(_png((10, 20, 30)))
    ds = load_cifar10(tmp_path, "test")
    assert sorted(ds.labels.tolist()) == [3, 8]
    with pytest.raises(DataError, match="not a CIFAR-10 layout"):
        load_cifar10(tmp_path, "train")


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_cifar10(tmp_path / "missing", "train")
    (tmp_path / "data.zip").write_bytes(b"zip")
    with pytest.raises(DataError, match="expected a .tar.gz"):
        load_cifar10(tmp_path / "data.zip", "train")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataError, match="missing"):
        load_cifar10(tmp_path / "b", "train")


@needs_cifar
def test_real_cifar10_archive():
    test = load_cifar10(default_cifar10_path(), "test")
    assert test.images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(test.class_counts(), np.full(10, 1000))
    # labels follow names: ships are bluer than cats, frogs greener than trucks
    mean = lambda c, ch: test.images[test.labels == CIFAR10_CLASSES.index(c), ..., ch].mean()  # noqa: E731
    assert mean("ship", 2) - mean("ship", 0) > mean("cat", 2) - mean("cat", 0) + 10
    assert mean("frog", 1) - mean("frog", 2) > mean("truck", 1) - mean("truck", 2)
