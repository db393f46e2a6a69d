"""Geometry conversion (bnncl.data.domains) and the cross-domain protocols."""

import numpy as np
import pytest

from bnncl.data.dataset import ImageDataset
from bnncl.data.domains import balanced_subset, parse_geometry, split_geometry, to_geometry
from bnncl.data.protocols import get_protocol
from bnncl.data.registry import load_dataset
from bnncl.errors import DataError
from data_available import needs_cifar

RNG = np.random.default_rng(0)
RGB = ImageDataset(RNG.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.arange(6) % 3, ("a", "b", "c"), "rgb")
GRAY = ImageDataset(RNG.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8), np.arange(6) % 3, ("a", "b", "c"), "gray")


def _model_geometry(name):
    from bnncl.assets import model_path
    from bnncl.device.modelfile import DeviceModel
    from bnncl.errors import ModelFileError

    try:
        return tuple(DeviceModel.load(model_path(name, ".bnn")).architecture["input_shape"])
    except ModelFileError as exc:
        pytest.skip(f"shipped model {name} not available: {exc}")


def test_parse_and_split_geometry():
    assert parse_geometry("32x32x3") == (32, 32, 3)
    assert split_geometry("embedded@32x32x3") == ("embedded", (32, 32, 3))
    assert split_geometry("cifar10") == ("cifar10", None)
    assert split_geometry("/data/me@home/set") == ("/data/me@home/set", None)
    for bad in ("32x32", "32x32x2", "0x32x3", "axbxc"):
        with pytest.raises(DataError) as info:
            parse_geometry(bad)
        assert "\n" not in str(info.value) and "HxWxC" in str(info.value)
    with pytest.raises(DataError, match="32x32x2"):
        load_dataset("embedded@32x32x2", "test")


def test_gray_to_rgb_replicates_and_resizes():
    out = to_geometry(GRAY, (32, 32, 3))
    assert out.images.shape == (6, 32, 32, 3) and out.images.dtype == np.uint8
    assert (out.images[..., 0] == out.images[..., 1]).all() and (out.images[..., 1] == out.images[..., 2]).all()
    np.testing.assert_array_equal(out.labels, GRAY.labels)
    assert out.class_names == GRAY.class_names and out.source == "gray@32x32x3"


def test_rgb_to_gray_is_itu_601_luma():
    same = to_geometry(RGB, (32, 32, 1))
    rgb = RGB.images.astype(np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert np.abs(same.images[..., 0] - luma).max() <= 1.0
    small = to_geometry(RGB, (28, 28, 1))
    assert small.images.shape == (6, 28, 28, 1)


def test_conversion_is_deterministic_and_keeps_flat_images():
    a, b = to_geometry(RGB, (28, 28, 1)), to_geometry(RGB, (28, 28, 1))
    assert a.images.tobytes() == b.images.tobytes()
    flat = ImageDataset(np.full((2, 28, 28, 1), 77, np.uint8), np.zeros(2, np.int64), ("x",))
    assert (to_geometry(flat, (32, 32, 3)).images == 77).all()
    assert to_geometry(RGB, (32, 32, 3)) is RGB


def test_balanced_subset():
    labels = np.repeat(np.arange(3), [5, 10, 2])
    ds = ImageDataset(np.arange(17, dtype=np.uint8).reshape(17, 1, 1, 1), labels, ("a", "b", "c"))
    sub = balanced_subset(ds, 4, seed=0)
    assert sub.class_counts().tolist() == [4, 4, 2]
    assert sub.images.tobytes() == balanced_subset(ds, 4, seed=0).images.tobytes()
    assert sub.images.tobytes() != balanced_subset(ds, 4, seed=1).images.tobytes()
    assert np.all(np.diff(sub.images.ravel().astype(int)) > 0)  # dataset order
    with pytest.raises(DataError, match="per_class"):
        balanced_subset(ds, 0)


def test_embedded_spec_with_geometry():
    ds = load_dataset("embedded@32x32x3", "test")
    assert ds.image_shape == (32, 32, 3) and len(ds) == 5000 and ds.class_counts().tolist() == [500] * 10


def _check_cross_domain(p, train, test, per_class):
    assert p.fresh_head and not p.pretrained_base and not p.takes_shots
    geometry = _model_geometry(p.model)
    assert train.image_shape == geometry and test.image_shape == geometry
    assert len(train.class_names) == 10 and train.class_counts().tolist() == [per_class] * 10
    s = p.stream(train.labels, 0)
    assert [e.classes_in_experience for e in s] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert not any(e.is_base for e in s)
    assert sorted(np.concatenate([e.indices for e in s]).tolist()) == list(range(len(train)))
    t = p.stream(train.labels, 1)
    assert [e.classes_in_experience for e in t] == [e.classes_in_experience for e in s]


def test_fmnist_on_cifar():
    p = get_protocol("fmnist-on-cifar")
    assert p.model == "cifar10-b5" and p.data == "embedded@32x32x3"
    train, test = p.load()
    _check_cross_domain(p, train, test, 300)
    assert len(test) == 5000
    again, _ = p.load()
    assert again.images.tobytes() == train.images.tobytes()  # fixed subset, deterministic conversion
    # the converted images are the embedded ones, upscaled: same mean brightness per image, roughly
    raw = balanced_subset(load_dataset("embedded", "train"), 300, seed=0)
    diff = np.abs(raw.images.mean(axis=(1, 2, 3)) - train.images.mean(axis=(1, 2, 3)))
    assert diff.max() < 3


@needs_cifar
def test_cifar_on_fmnist():
    p = get_protocol("cifar-on-fmnist")
    assert p.model == "fmnist-b5" and p.train_per_class == 1000
    train, test = p.load()
    _check_cross_domain(p, train, test, 1000)
    assert len(test) == 10_000 and test.class_counts().tolist() == [1000] * 10
