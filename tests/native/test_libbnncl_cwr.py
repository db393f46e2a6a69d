"""libbnncl's head-only CWR* pieces (src/cwr.c) are bit-identical to the Python device engine on the same inputs.

The library's sources are built as a shared object (the same flags as libbnncl/Makefile: -O3 -ffp-contract=off;
tests/libbnncl_cwr_lib.py, fixture ``cwr_lib`` of tests/native/conftest.py) and called through ctypes on fmnist-b5's
pooled features of the embedded images:

* the head step: ``DeviceEngine`` (no tail blocks, q_f 8 / q_b 16, 10 classes) after ``set_head`` of a
  CWR*-like head takes 12 SGD steps on minibatches of new and base features; the library's head after each
  step must be the engine's bit for bit.  The softmax's exp is libbnncl's own (``bnncl_cwr_expf``): the engine
  runs with ``np.exp`` of float32 arrays replaced by it (the hook the Python engine needs to agree on every
  minibatch); with NumPy's own exp the test only reports how many steps still agree;
* ``CWRStar.begin_experience`` + ``set_head`` and ``end_experience`` (classes seen before, new ones, a present
  class with no pattern, the ``cwr_max_k`` cap): ``cw`` and ``past`` bit for bit;
* ``LatentReplayBuffer(bits=8)``: the stored codes and the decoded latents bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.cl.cwr import CWRStar
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.device.engine import DeviceEngine
from bnncl.device.frozen import FrozenEngine
from libbnncl_inputs import learning_inputs


@pytest.fixture(scope="module")
def lib(cwr_lib):
    return cwr_lib


@pytest.fixture(scope="module")
def feats():
    inp = learning_inputs((5, 7), 50, 8, base_per_class=40)
    fe = FrozenEngine(inp.model)
    return (inp.model, fe.latents(inp.base_images, "gap"), inp.base_labels.astype(np.int64),
            fe.latents(inp.images, "gap"), inp.labels.astype(np.int64))


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _c_exp(lib):
    def exp(x, *args, **kwargs):
        a = np.asarray(x)
        if a.dtype != np.float32 or args or kwargs:
            return _NP_EXP(x, *args, **kwargs)
        flat = np.ascontiguousarray(a).reshape(-1)
        return np.array([lib.bnncl_cwr_expf(float(v)) for v in flat], np.float32).reshape(a.shape)
    return exp


_NP_EXP = np.exp


def test_expf_close_to_libm(lib):
    x = np.linspace(-87, 0, 20001, dtype=np.float32)
    got = np.array([lib.bnncl_cwr_expf(float(v)) for v in x], np.float32)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got / ref - 1)) < 4e-7
    assert lib.bnncl_cwr_expf(0.0) == 1.0


def test_head_step_bit_identical(lib, feats, monkeypatch):
    model, bx, by, nx, ny = feats
    rng = np.random.default_rng(5)
    k, d = 10, bx.shape[1]
    cw = (rng.standard_normal((k, d)) * 0.05).astype(np.float32)
    present = np.zeros(k, np.uint8)
    present[[0, 1, 2, 3, 4, 5, 7]] = 1
    agree_numpy_exp = 0
    for use_c_exp in (True, False):
        eng = DeviceEngine.from_device_model(model, 0, num_classes=k)
        cs = CWRStar(k, d)
        cs.cw = cw.copy()
        eng.set_head(cs.begin_experience(np.flatnonzero(present)))
        head = np.zeros((k, d), np.float32)
        assert lib.bnncl_cwr_begin(_ptr(cw), _ptr(present), _ptr(head), k, d, 16) == 0
        assert np.array_equal(head.view(np.uint32), eng.get_head().view(np.uint32))
        with monkeypatch.context() as m:
            if use_c_exp:
                m.setattr(np, "exp", _c_exp(lib))
            for step in range(12):
                n = int(rng.integers(20, 60))
                pick_new = rng.choice(len(nx), n // 2, replace=False)
                pick_old = rng.choice(len(bx), n - n // 2, replace=False)
                x = np.ascontiguousarray(np.concatenate([nx[pick_new], bx[pick_old]]), np.float32)
                y = np.concatenate([ny[pick_new], by[pick_old]])
                eng._train_batch(x, y, 0.05)
                scratch = np.zeros(lib.bnncl_cwr_step_scratch(n, d, k) // 4, np.float32)
                y32 = y.astype(np.int32)
                assert lib.bnncl_cwr_head_step(_ptr(x), _ptr(y32), n, d, k, _ptr(head), 0.05, 8, 16, _ptr(scratch),
                                               scratch.nbytes) == 0
                same = np.array_equal(head.view(np.uint32), eng.get_head().view(np.uint32))
                if use_c_exp:
                    assert same, f"step {step}: head differs from the Python engine's"
                else:
                    agree_numpy_exp += same
                    head = eng.get_head().copy()  # continue from Python's head
    print(f"\nwith NumPy's own exp: {agree_numpy_exp} of 12 steps bit-identical")


def test_consolidate_bit_identical(lib, feats):
    _, bx, _, _, _ = feats
    k, d = 10, bx.shape[1]
    rng = np.random.default_rng(9)
    for max_k in (None, 1.5):
        cs = CWRStar(k, d, max_k)
        cs.cw[:5] = (rng.standard_normal((5, d)) * 0.1).astype(np.float32)
        cs.past[:5] = [6000, 5900, 6100, 6050, 5950]
        cw, past = cs.cw.copy(), cs.past.copy()
        trained = (rng.standard_normal((k, d)) * 0.1 + 0.01).astype(np.float32)
        present = np.array([0, 1, 2, 3, 4, 5, 1, 0, 0, 0], np.int64)
        present[6] = 1  # class 6 is present with no pattern: unchanged
        pres = np.flatnonzero(present)
        cur = np.array([300, 300, 300, 300, 300, 5000, 0, 0, 0, 0], np.int64)
        cs.end_experience(trained, pres, cur)
        scratch = np.zeros(k * d, np.float32)
        assert lib.bnncl_cwr_consolidate(_ptr(trained), _ptr(present.astype(np.uint8)), _ptr(cur), _ptr(cw),
                                         _ptr(past), k, d, -1.0 if max_k is None else max_k, _ptr(scratch)) == 0
        assert np.array_equal(cw.view(np.uint32), cs.cw.view(np.uint32))
        assert np.array_equal(past, cs.past)


def test_replay_8bit_bit_identical(lib, feats):
    _, bx, by, nx, ny = feats
    buf = LatentReplayBuffer((bx.shape[1],), capacity=4000, bits=8)
    buf.add(bx, by, 0)
    buf.add(nx * np.float32(1.3), ny, 1)  # values outside the first batch's range: clipped
    lo, hi = buf.value_range
    order = np.argsort(buf.experience_indices, kind="stable")
    src = np.concatenate([bx, nx * np.float32(1.3)])
    lab = np.concatenate([by, ny])
    codes = np.zeros(src.shape, np.uint8)
    src = np.ascontiguousarray(src, np.float32)
    assert lib.bnncl_replay_encode8(_ptr(src), src.size, lo, hi, _ptr(codes)) == 0
    stored = buf.state_dict()[0]["latents"]
    # the buffer holds every pattern (capacity 4000): match its rows to the sources by label and codes
    got = {(int(y), c.tobytes()) for y, c in zip(lab, codes)}
    want = {(int(y), c.tobytes()) for y, c in zip(buf.labels[order], stored[order])}
    assert want == got
    dec = np.zeros(stored.shape, np.float32)
    assert lib.bnncl_replay_decode8(_ptr(np.ascontiguousarray(stored)), stored.size, lo, hi, _ptr(dec)) == 0
    assert np.array_equal(dec.view(np.uint32), buf.latents().view(np.uint32))
