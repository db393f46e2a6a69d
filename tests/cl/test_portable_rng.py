"""The portable random stream (bnncl.cl.portable_rng) and the learner's ``rng="portable"`` opt-in.

The draws against libbnncl's C code: tests/native/test_libbnncl_cwr_loop.py."""

import dataclasses
import json

import numpy as np
import pytest

from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.linear_engine import NumpyLinearEngine
from bnncl.cl.portable_rng import BUFFER_STREAM, LEARNER_STREAM, PortableRNG, make_rng, rng_from_state
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.data.scenarios import Stream, nc_stream

SHAPE = (4, 4, 1)


def _clusters(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    means = np.random.default_rng(123).standard_normal((10, 16)) * 0.8
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class)
    x = means[y] + rng.standard_normal((len(y), 16))
    return np.clip(170 + 30 * x, 0, 255).astype(np.uint8).reshape((-1,) + SHAPE), y.astype(np.int64)


TRAIN = _clusters(100, 1)
TEST = _clusters(30, 2)
STREAM = nc_stream(TRAIN[1], base_classes=range(5), seed=0)


def test_pcg32_reference_outputs():
    # pcg32-demo of O'Neill's minimal C library: pcg32_srandom_r(&rng, 42u, 54u)
    r = PortableRNG(42, 54)
    assert [r.next32() for _ in range(6)] == [0xA15C02B7, 0x7B47F409, 0xBA1D3330, 0x83D2F293, 0xBFA4784B, 0xCBED606E]


def test_draws_are_what_they_claim():
    r = PortableRNG(1)
    for n in (0, 1, 2, 17, 500):
        p = r.permutation(n)
        assert sorted(p.tolist()) == list(range(n)) and p.dtype == np.int64
    arr = np.array([9, 3, 3, 7])
    assert sorted(r.permutation(arr).tolist()) == [3, 3, 7, 9]
    c = r.choice(100, size=30, replace=False)
    assert len(set(c.tolist())) == 30 and c.min() >= 0 and c.max() < 100
    assert r.choice(np.array([4, 5]), size=0).tolist() == []
    x = np.array([r.random() for _ in range(2000)])
    assert x.min() >= 0 and x.max() < 1 and abs(x.mean() - 0.5) < 0.03
    counts = np.bincount([r.integers(6) for _ in range(6000)], minlength=6)
    assert counts.min() > 850 and counts.max() < 1150
    with pytest.raises(ValueError):
        r.choice(5, size=3, replace=True)
    with pytest.raises(ValueError):
        r.integers(0)


def test_vectorized_bounded_equals_one_at_a_time():
    bounds = np.random.default_rng(0).integers(2**31, 2**32 - 1, 300).astype(np.uint64)  # many rejections
    a, b = PortableRNG(5), PortableRNG(5)
    assert a._bounded(bounds).tolist() == [b.integers(int(n)) for n in bounds]
    assert a.bit_generator.state == b.bit_generator.state
    assert PortableRNG(5, LEARNER_STREAM).next32() != PortableRNG(5, BUFFER_STREAM).next32()


def test_state_is_json_safe_and_restores():
    r = PortableRNG(2**64 - 1)
    r.permutation(33)
    st = json.loads(json.dumps(r.bit_generator.state))
    again = rng_from_state(st)
    assert isinstance(again, PortableRNG) and again.permutation(40).tolist() == r.permutation(40).tolist()
    g = np.random.default_rng(3)
    assert rng_from_state(json.loads(json.dumps(g.bit_generator.state))).random() == g.random()
    with pytest.raises(ValueError):
        PortableRNG().bit_generator.state = {"bit_generator": "PCG64", "state": {}}
    assert isinstance(make_rng("numpy", 0), np.random.Generator)
    with pytest.raises(ValueError):
        make_rng("mt19937", 0)


def _fresh(rng: str) -> ContinualLearner:
    engine = NumpyLinearEngine(SHAPE, 10, seed=0)
    buffer = LatentReplayBuffer(engine.latent_shape, capacity=300, bits=8, seed=0)
    return ContinualLearner(engine, LearnerConfig("cwr_star", lr=0.3, minibatch_size=32, mixing="balanced",
                                                  rng=rng), buffer)


def test_portable_learner_learns_and_resumes():
    full = _fresh("portable")
    assert isinstance(full._rng, PortableRNG) and isinstance(full.buffer._rng, PortableRNG)
    res = full.run(STREAM, TRAIN[0], *TEST, pretrained_base=False)
    assert res.final_accuracy > 0.5
    numpy_res = _fresh("numpy").run(STREAM, TRAIN[0], *TEST, pretrained_base=False)
    assert abs(res.final_accuracy - numpy_res.final_accuracy) < 0.1
    first = _fresh("portable")
    first.run(Stream("nc", STREAM.experiences[:3], 10, 0), TRAIN[0], *TEST, pretrained_base=False)
    arrays, meta = first.state_dict()
    meta = json.loads(json.dumps(meta))
    assert meta["rng_state"]["bit_generator"] == "bnncl_pcg32"
    second = _fresh("portable")
    second.load_state_dict({k: v.copy() for k, v in arrays.items()}, meta)
    with pytest.raises(ValueError, match="rng"):
        _fresh("numpy").load_state_dict(arrays, meta)
    rest = second.run(Stream("nc", STREAM.experiences[3:], 10, 0), TRAIN[0], *TEST)
    want = [dataclasses.replace(e, train_seconds=0, extract_seconds=0) for e in res.experiences[3:]]
    assert [dataclasses.replace(e, train_seconds=0, extract_seconds=0) for e in rest.experiences] == want


def test_rng_setting_is_checked():
    with pytest.raises(ValueError, match="rng"):
        LearnerConfig("cwr_star", rng="mt")
