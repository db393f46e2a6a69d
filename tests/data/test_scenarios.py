import numpy as np
import pytest

from bnncl.data.scenarios import nc_stream, ni_stream, nic_stream
from bnncl.data.shifts import apply_shift, blur, brightness, crop, default_ni_shifts, rotation

LABELS = np.repeat(np.arange(10), 30)[np.random.default_rng(0).permutation(300)]


def all_indices(stream):
    return np.concatenate([e.indices for e in stream])


def test_nc_stream_base_then_one_class_each():
    s = nc_stream(LABELS, base_classes=range(5), seed=1)
    assert len(s) == 6 and s.num_classes == 10
    assert s[0].is_base and s[0].classes_in_experience == (0, 1, 2, 3, 4)
    assert [e.classes_in_experience for e in s.experiences[1:]] == [(c,) for c in range(5, 10)]
    idx = all_indices(s)
    assert sorted(idx) == list(range(300))  # disjoint and complete
    for e in s:
        np.testing.assert_array_equal(e.labels, LABELS[e.indices])
    assert s.seen_classes(2) == (0, 1, 2, 3, 4, 5, 6)


def test_nc_stream_order_groups_and_determinism():
    s = nc_stream(LABELS, class_order=[9, 3, 1, 0, 2, 4, 5, 6, 7, 8], classes_per_experience=4, seed=3)
    assert [e.classes_in_experience for e in s] == [(0, 1, 3, 9), (2, 4, 5, 6), (7, 8)]
    t = nc_stream(LABELS, class_order=[9, 3, 1, 0, 2, 4, 5, 6, 7, 8], classes_per_experience=4, seed=3)
    u = nc_stream(LABELS, class_order=[9, 3, 1, 0, 2, 4, 5, 6, 7, 8], classes_per_experience=4, seed=4)
    np.testing.assert_array_equal(all_indices(s), all_indices(t))
    assert not np.array_equal(all_indices(s), all_indices(u))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base_classes": [11]}, "base_classes"),
        ({"base_classes": [1, 1]}, "repeated"),
        ({"base_classes": [0], "class_order": [0, 1]}, "repeats base"),
        ({"classes_per_experience": 0}, "classes_per_experience"),
    ],
)
def test_nc_stream_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nc_stream(LABELS, **kwargs)


def test_labels_validation():
    with pytest.raises(ValueError, match="labels"):
        nc_stream(np.array([[0, 1]]))
    with pytest.raises(ValueError, match="labels"):
        ni_stream(np.array([0.5, 1.0]))


def test_ni_stream_all_classes_disjoint_stratified_with_shifts():
    s = ni_stream(LABELS, n_experiences=3, seed=0)
    assert sorted(all_indices(s)) == list(range(300))
    for e in s:
        assert e.classes_in_experience == tuple(range(10))
        assert np.all(np.bincount(e.labels) == 10)
    assert [e.transform for e in s] == [n for n, _ in default_ni_shifts(3)]
    s2 = ni_stream(LABELS, n_experiences=2, shifts=["none", ("blur", {"radius": 2})])
    assert s2[1].transform == "blur" and s2[1].transform_params == {"radius": 2}
    with pytest.raises(ValueError, match="shifts has 1"):
        ni_stream(LABELS, n_experiences=2, shifts=["none"])
    with pytest.raises(ValueError, match="unknown shift"):
        ni_stream(LABELS, n_experiences=1, shifts=["warp"])


def test_experience_images_gathers_and_shifts_without_touching_dataset():
    images = np.random.default_rng(0).integers(0, 256, (300, 6, 6, 3), dtype=np.uint8)
    before = images.copy()
    s = ni_stream(LABELS, n_experiences=2, shifts=["none", ("brightness", {"delta": 10})])
    np.testing.assert_array_equal(s[0].images(images), images[s[0].indices])
    np.testing.assert_array_equal(s[1].images(images), brightness(images[s[1].indices], 10))
    np.testing.assert_array_equal(images, before)
    with pytest.raises(ValueError, match="images has 10 rows"):
        s[0].images(images[:10])


def test_nic_stream_units_cover_everything_once():
    s = nic_stream(LABELS, base_classes=[0, 1], parts_per_class=3, units_per_experience=2, seed=5)
    assert s[0].is_base and s[0].classes_in_experience == (0, 1)
    assert sorted(all_indices(s)) == list(range(300))
    assert len(s) == 1 + (10 * 3 - 2) // 2
    # every class keeps its 30 examples in 3 parts of 10; two units per experience
    assert all(len(e) == 20 for e in s.experiences[1:]) and len(s[0]) == 20
    t = nic_stream(LABELS, base_classes=[0, 1], parts_per_class=3, units_per_experience=2, seed=5)
    np.testing.assert_array_equal(all_indices(s), all_indices(t))
    with pytest.raises(ValueError, match="fewer than"):
        nic_stream(LABELS, parts_per_class=31)


IMG = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 2), dtype=np.uint8)


def test_brightness_clips():
    out = brightness(IMG, 100)
    np.testing.assert_array_equal(out, np.minimum(IMG.astype(int) + 100, 255))
    assert out.dtype == np.uint8


def test_blur_keeps_constant_images_and_smooths():
    const = np.full((1, 5, 5, 1), 77, np.uint8)
    np.testing.assert_array_equal(blur(const, 2), const)
    out = blur(IMG, 1)
    assert out.shape == IMG.shape and out.std() < IMG.std()
    np.testing.assert_array_equal(blur(IMG, 0), IMG)


def test_rotation_zero_and_ninety():
    np.testing.assert_array_equal(rotation(IMG, 0), IMG)
    np.testing.assert_array_equal(rotation(IMG, 90), np.rot90(IMG, k=1, axes=(1, 2)))


def test_crop_full_is_identity_and_partial_upsamples():
    np.testing.assert_array_equal(crop(IMG, 1.0), IMG)
    out = crop(IMG, 0.5, 0.0, 0.0)
    np.testing.assert_array_equal(out[:, ::2, ::2], IMG[:, :4, :4])


def test_apply_shift_validation_and_purity():
    before = IMG.copy()
    for name, params in default_ni_shifts(9):
        out = apply_shift(IMG, name, params)
        assert out.shape == IMG.shape and out.dtype == np.uint8
        assert apply_shift(IMG, name, params).tobytes() == out.tobytes()
    np.testing.assert_array_equal(IMG, before)
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(IMG, "warp")
    with pytest.raises(ValueError, match="bad parameters"):
        apply_shift(IMG, "blur", {"sigma": 1})
    with pytest.raises(ValueError, match="uint8"):
        apply_shift(IMG.astype(np.float32), "none")
