import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnncl.cl.replay import LatentReplayBuffer


def signs(rng, n, shape):
    return np.where(rng.random((n,) + shape) < 0.5, -1.0, 1.0).astype(np.float32)


def fill(buf, rng, classes, per_class, exp):
    labels = np.repeat(np.asarray(classes), per_class)
    buf.add(signs(rng, len(labels), buf.latent_shape), labels, exp)


def test_class_balanced_quota_and_eviction_on_new_class():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer((2, 2, 64), capacity=1500, bits=1, seed=1)
    fill(buf, rng, range(5), 1000, 0)
    assert buf.class_counts() == {c: 300 for c in range(5)}
    fill(buf, rng, [5], 1000, 1)
    assert buf.class_counts() == {c: 250 for c in range(6)}
    assert len(buf) == 1500


def test_water_filling_gives_small_class_all_it_has():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer((8,), capacity=100, bits=32, seed=0)
    buf.add(rng.standard_normal((70, 8)), np.array([0] * 10 + [1] * 60), 0)
    assert buf.class_counts() == {0: 10, 1: 60}
    buf.add(rng.standard_normal((80, 8)), np.full(80, 2), 1)
    assert buf.class_counts() == {0: 10, 1: 45, 2: 45}


@settings(max_examples=25, deadline=None)
@given(
    capacity=st.integers(1, 60),
    batches=st.lists(st.lists(st.integers(0, 6), min_size=0, max_size=40), min_size=1, max_size=6),
    policy=st.sampled_from(["class_balanced", "random"]),
)
def test_capacity_never_exceeded_and_balance(capacity, batches, policy):
    buf = LatentReplayBuffer((3,), capacity=capacity, bits=32, policy=policy, seed=3)
    seen: dict[int, int] = {}
    for i, labels in enumerate(batches):
        labels = np.asarray(labels, dtype=np.int64)
        buf.add(np.zeros((len(labels), 3), np.float32), labels, i)
        for c in labels:
            seen[int(c)] = seen.get(int(c), 0) + 1
        assert len(buf) <= capacity
        assert len(buf) == min(capacity, sum(seen.values())) or policy == "random"
        if policy == "class_balanced":
            counts = buf.class_counts()
            # a class below the max holds all it could; otherwise counts differ by at most one
            top = max(counts.values(), default=0)
            for c, n in seen.items():
                assert counts.get(c, 0) == n or counts.get(c, 0) >= top - 1


@pytest.mark.parametrize("channels", [64, 128, 256])
def test_one_bit_storage_is_one_32nd_of_float32(channels):
    rng = np.random.default_rng(0)
    x, y = signs(rng, 50, (4, 4, channels)), rng.integers(0, 3, 50)
    b1 = LatentReplayBuffer((4, 4, channels), capacity=50, bits=1)
    b32 = LatentReplayBuffer((4, 4, channels), capacity=50, bits=32)
    b1.add(x, y, 0)
    b32.add(x, y, 0)
    assert b1.latent_nbytes * 32 == b32.latent_nbytes == 50 * 16 * channels * 4
    assert b1.nbytes == b1.latent_nbytes + 50 * (8 + 4)


@pytest.mark.parametrize("bits, value_range", [(1, None), (8, (-1.0, 1.0)), (8, None), (32, None)])
def test_round_trip_exact_for_sign_latents(bits, value_range):
    rng = np.random.default_rng(1)
    x, y = signs(rng, 40, (2, 3, 70)), np.arange(40) % 4
    buf = LatentReplayBuffer((2, 3, 70), capacity=40, bits=bits, value_range=value_range)
    buf.add(x, y, 0)
    got = buf.latents()
    assert got.dtype == np.float32
    # the buffer keeps everything (capacity == N); compare as sets of rows per label
    for c in range(4):
        want = x[y == c].reshape(10, -1)
        have = got[buf.labels == c].reshape(10, -1)
        assert sorted(map(bytes, want.astype(np.int8))) == sorted(map(bytes, have.astype(np.int8)))
    np.testing.assert_array_equal(np.unique(got), [-1.0, 1.0])


def test_eight_bit_affine_quantization_error_bounded():
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 5, (30, 16)).astype(np.float32)
    buf = LatentReplayBuffer((16,), capacity=30, bits=8, policy="random")
    buf.add(x, np.zeros(30, np.int64), 0)
    lo, hi = buf.value_range
    assert lo == pytest.approx(x.min()) and hi == pytest.approx(x.max())
    got = buf.latents()
    step = (hi - lo) / 255
    # all 30 patterns are kept (in a random order)
    assert np.abs(np.sort(got.ravel()) - np.sort(x.ravel())).max() <= step / 2 + 1e-5
    assert buf.latent_nbytes == 30 * 16


def test_random_policy_ar1_replacement():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer((4,), capacity=120, bits=32, policy="random", seed=5)
    buf.add(rng.standard_normal((500, 4)), np.zeros(500, np.int64), 0)
    assert len(buf) == 120 and set(buf.experience_indices) == {0}
    buf.add(rng.standard_normal((500, 4)), np.ones(500, np.int64), 1)
    assert (buf.experience_indices == 1).sum() == 60 and len(buf) == 120
    buf.add(rng.standard_normal((500, 4)), np.full(500, 2), 2)
    assert (buf.experience_indices == 2).sum() == 40


def test_determinism_and_state_round_trip():
    def run(buf):
        rng = np.random.default_rng(9)
        for i in range(4):
            fill(buf, rng, [i, i + 1], 37, i)
        return buf

    a = run(LatentReplayBuffer((5, 64), capacity=50, seed=11))
    b = run(LatentReplayBuffer((5, 64), capacity=50, seed=11))
    np.testing.assert_array_equal(a.latents(), b.latents())
    np.testing.assert_array_equal(a.labels, b.labels)
    arrays, meta = a.state_dict()
    json.dumps(meta)
    c = LatentReplayBuffer.from_state(arrays, meta)
    rng1, rng2 = np.random.default_rng(4), np.random.default_rng(4)
    fill(a, rng1, [9], 30, 5)
    fill(c, rng2, [9], 30, 5)
    np.testing.assert_array_equal(a.latents(), c.latents())
    np.testing.assert_array_equal(a.labels, c.labels)
    np.testing.assert_array_equal(a.sample(7)[0], c.sample(7)[0])


def test_sample_and_get():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer((64,), capacity=20, seed=0)
    fill(buf, rng, [0, 1], 10, 0)
    x, y = buf.sample(5)
    assert x.shape == (5, 64) and y.shape == (5,)
    with pytest.raises(ValueError, match="n must be"):
        buf.sample(21)
    with pytest.raises(ValueError, match="indices"):
        buf.get([20])


@pytest.mark.parametrize(
    "kwargs, call, match",
    [
        ({}, lambda b: b.add(np.zeros((2, 3)), np.zeros(2, np.int64), 0), "latents must have shape"),
        ({}, lambda b: b.add(np.full((2, 4), np.nan), np.zeros(2, np.int64), 0), "NaN"),
        ({}, lambda b: b.add(np.zeros((2, 4)), np.zeros(3, np.int64), 0), "labels"),
        ({}, lambda b: b.add(np.zeros((2, 4)), np.array([0, -1]), 0), "labels"),
        ({"bits": 4}, None, "bits"),
        ({"policy": "fifo"}, None, "policy"),
        ({"capacity": 0}, None, "capacity"),
    ],
)
def test_bad_input(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        buf = LatentReplayBuffer((4,), **kwargs)
        call(buf)
