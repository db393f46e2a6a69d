"""Few-shot protocols and the ProtocolSpec interface (takes_shots, default_shots, stream)."""

import numpy as np
import pytest

from bnncl.data.embedded import BASE_PER_CLASS, NEW_PER_CLASS
from bnncl.data.protocols import PROTOCOLS, get_protocol
from bnncl.data.scenarios import fewshot_stream, nc_stream
from bnncl.errors import BnnclError
from data_available import needs_cifar

FEW = get_protocol("fmnist-fewshot")


@pytest.fixture(scope="module")
def fmnist_labels():
    train, _ = FEW.load()
    return train.labels


def _check_fewshot(stream, labels, k):
    base = stream[0]
    assert base.is_base and base.classes_in_experience == (0, 1, 2, 3, 4)
    np.testing.assert_array_equal(np.sort(base.indices), np.flatnonzero(labels < 5))  # base experience intact
    assert [e.classes_in_experience for e in stream.experiences[1:]] == [(c,) for c in range(5, 10)]
    for e in stream.experiences[1:]:
        assert len(e) == k and not e.is_base
        assert len(set(e.indices.tolist())) == k
        np.testing.assert_array_equal(labels[e.indices], e.labels)


def test_interface_fields():
    assert FEW.takes_shots and FEW.default_shots == 10 and FEW.pretrained_base and not FEW.fresh_head
    assert (FEW.data, FEW.model) == ("embedded", "fmnist-b5")
    cifar = get_protocol("cifar10-fewshot")
    assert cifar.takes_shots and cifar.default_shots == 10 and cifar.pretrained_base
    assert (cifar.data, cifar.model) == ("cifar10", "cifar10-b5")
    for name in ("fmnist-b5", "fmnist-full-b5", "cifar10-b5", "cifar10-ni"):
        p = get_protocol(name)
        assert (p.takes_shots, p.default_shots, p.fresh_head) == (False, None, False)


@pytest.mark.parametrize("k", [1, 5, 10, 20, 50, NEW_PER_CLASS])
def test_fmnist_fewshot_has_k_images_per_new_class(fmnist_labels, k):
    _check_fewshot(FEW.stream(fmnist_labels, 3, shots=k), fmnist_labels, k)


def test_default_shots_and_legacy_build_stream(fmnist_labels):
    default = FEW.stream(fmnist_labels, 1)
    _check_fewshot(default, fmnist_labels, 10)
    legacy = FEW.build_stream(fmnist_labels, 1)  # existing callers: build_stream(labels, seed)
    for a, b in zip(default, legacy):
        np.testing.assert_array_equal(a.indices, b.indices)
    assert len(FEW.stream(fmnist_labels, 1, None)[0]) == 5 * BASE_PER_CLASS


def test_shots_are_drawn_per_seed(fmnist_labels):
    a, b, c = (FEW.stream(fmnist_labels, s, shots=5) for s in (0, 0, 1))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.indices, y.indices)
    assert not all(np.array_equal(np.sort(x.indices), np.sort(z.indices)) for x, z in zip(a, c))
    for e in c.experiences[1:]:
        assert set(fmnist_labels[e.indices].tolist()) == set(e.classes_in_experience)


@pytest.mark.parametrize("shots", [0, -1, NEW_PER_CLASS + 1, 10_000, True, 2.5, "10"])
def test_shots_out_of_range_is_one_line(fmnist_labels, shots):
    with pytest.raises(BnnclError) as info:
        FEW.stream(fmnist_labels, 0, shots=shots)
    msg = str(info.value)
    assert "\n" not in msg and "fmnist-fewshot" in msg and f"from 1 to {NEW_PER_CLASS}" in msg


def test_max_shots(fmnist_labels):
    assert FEW.max_shots(fmnist_labels) == NEW_PER_CLASS
    with pytest.raises(BnnclError, match="does not take shots"):
        get_protocol("fmnist-b5").max_shots(fmnist_labels)


@pytest.mark.parametrize("name", sorted(n for n, p in PROTOCOLS.items() if not p.takes_shots))
def test_shots_refused_by_other_protocols(name):
    with pytest.raises(BnnclError) as info:
        get_protocol(name).stream(np.arange(10), 0, shots=5)
    msg = str(info.value)
    assert "\n" not in msg and name in msg and "does not take shots" in msg and "fmnist-fewshot" in msg


def test_stream_without_shots_is_build_stream(fmnist_labels):
    p = get_protocol("fmnist-b5")
    for a, b in zip(p.stream(fmnist_labels, 2), p.build_stream(fmnist_labels, 2)):
        np.testing.assert_array_equal(a.indices, b.indices)


def test_fewshot_stream_helper():
    labels = np.repeat(np.arange(6), 20)
    s = fewshot_stream(labels, base_classes=[0, 1], shots=3, classes_per_experience=2, seed=0)
    assert [e.classes_in_experience for e in s] == [(0, 1), (2, 3), (4, 5)]
    assert [len(e) for e in s] == [40, 6, 6]
    assert np.bincount(s[1].labels).tolist() == [0, 0, 3, 3]
    with pytest.raises(ValueError, match="only"):
        fewshot_stream(labels, base_classes=[0], shots=21)
    with pytest.raises(ValueError, match="shots"):
        nc_stream(labels, shots=0)
    # without shots, nc_stream is unchanged by the new arguments
    a, b = nc_stream(labels, base_classes=[0], seed=4), nc_stream(labels, base_classes=[0], seed=4, shots=None)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.indices, y.indices)


@needs_cifar
def test_cifar10_fewshot():
    p = get_protocol("cifar10-fewshot")
    train, test = p.load()  # cifar10-b5's data
    assert train.image_shape == (32, 32, 3) and len(test) == 10_000
    _check_fewshot(p.stream(train.labels, 0, shots=20), train.labels, 20)
    assert p.max_shots(train.labels) == 5000
    with pytest.raises(BnnclError, match="from 1 to 5000"):
        p.stream(train.labels, 0, shots=5001)
