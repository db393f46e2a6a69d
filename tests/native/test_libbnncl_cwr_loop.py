"""libbnncl's head-only CWR* experience loop (src/cwr_learn.c, src/cwr_rng.c) is bit-identical to the Python learner
with the portable random stream (``LearnerConfig(rng="portable")``) on the same features.

* the stream: ``PortableRNG`` (bnncl.cl.portable_rng) and the library's ``bnncl_rng_*`` give the same raw outputs,
  bounded integers (bounds near 2^32 included, where Lemire's rejection runs often), doubles and shuffles, in an
  interleaved sequence, and end in the same state;
* the loop: the fmnist-b5 protocol head-only on the embedded images' pooled features (base classes 0-4 deployed,
  then four experiences: class 5, class 6, classes 7 and 8, classes 5 and 7 again), in Python
  (``ContinualLearner`` on ``DeviceEngine`` with no tail blocks) and in C on the same features, an 8-bit buffer
  smaller than the base set (so deployment and every experience evict); after deployment and after each
  experience: ``cw`` (bits), ``past``, the buffer's codes, labels, experience indices, value range and seen
  counts, the standardizer's statistics, both streams' states; the predictions and scores on test features.
  Tolerance: none, everything is compared bit for bit.
  Cases: proportional and balanced mixing, standardize off and on, fixed and auto epochs, a new_per_class cap,
  cwr_max_k, one 32-bit buffer, and one run with no deployment (the first experience fits the standardizer).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.portable_rng import BUFFER_STREAM, LEARNER_STREAM, PortableRNG
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.device.engine import DeviceEngine
from bnncl.device.frozen import FrozenEngine
from libbnncl_cwr_lib import Config, Rng, State, ptr, scratch
from libbnncl_inputs import learning_inputs

K = 10


@pytest.fixture(scope="module")
def lib(cwr_lib):
    return cwr_lib


@pytest.fixture(scope="module")
def feats():
    inp = learning_inputs((5, 6, 7, 8), 40, 300, base_per_class=40)
    fe = FrozenEngine(inp.model)
    test = fe.latents(inp.test, "gap")
    return inp.model, fe.latents(inp.base_images, "gap"), inp.base_labels.astype(np.int64), \
        fe.latents(inp.images, "gap"), inp.labels.astype(np.int64), test


def _rng_state(r: Rng) -> tuple[int, int]:
    return int(r.state), int(r.inc)


def test_stream_twin(lib):
    for seed, stream in ((0, LEARNER_STREAM), (12345, BUFFER_STREAM), (2**63 + 7, 5)):
        py = PortableRNG(seed, stream)
        c = Rng()
        lib.bnncl_rng_seed(ctypes.byref(c), seed, stream)
        assert _rng_state(c) == (py._state, py._inc)
        raw = py._raw(5000)
        assert [lib.bnncl_rng_next32(ctypes.byref(c)) for _ in range(5000)] == raw.tolist()
        rnd = np.random.default_rng(seed % 1000)
        for step in range(400):
            kind = step % 5
            if kind == 0:
                n = int(rnd.choice([1, 2, 3, 7, 1000, 2**31 + 1, 3_000_000_000, 2**32 - 1]))
                assert lib.bnncl_rng_bounded(ctypes.byref(c), n) == py.integers(n)
            elif kind == 1:
                assert lib.bnncl_rng_random(ctypes.byref(c)) == py.random()
            elif kind == 2:
                n = int(rnd.integers(0, 300))
                items = rnd.permutation(n).astype(np.int32)
                want = py.permutation(items)
                got = items.copy()
                assert lib.bnncl_rng_shuffle(ctypes.byref(c), ptr(got), n, n) == 0
                assert np.array_equal(got, want)
            elif kind == 3:
                n = int(rnd.integers(1, 300))
                size = int(rnd.integers(0, n + 1))
                got = np.arange(n, dtype=np.int32)
                assert lib.bnncl_rng_shuffle(ctypes.byref(c), ptr(got), n, size) == 0
                assert np.array_equal(got[:size], py.choice(n, size=size, replace=False))
            else:  # bounds with many rejections, vectorized in Python
                bounds = rnd.integers(2**31, 2**32 - 1, 50).astype(np.uint64)
                want = py._bounded(bounds)
                assert [lib.bnncl_rng_bounded(ctypes.byref(c), int(b)) for b in bounds] == want.tolist()
            assert _rng_state(c) == (py._state, py._inc), f"step {step}"
    # the state round-trips through JSON-safe dicts
    py = PortableRNG(3)
    py.permutation(17)
    st = py.bit_generator.state
    again = PortableRNG()
    again.bit_generator.state = st
    assert again.permutation(50).tolist() == py.permutation(50).tolist()


class _CLoop:
    """The C learner on caller buffers."""

    def __init__(self, lib, cfg: Config, seed: int) -> None:
        self.lib, self.cfg = lib, cfg
        self.mem = scratch(lib.bnncl_cwr_state_bytes(ctypes.byref(cfg)))
        self.st = State()
        assert lib.bnncl_cwr_state_init(ctypes.byref(cfg), seed, ptr(self.mem), self.mem.nbytes,
                                        ctypes.byref(self.st)) == 0

    def _call(self, fn, x, y, index, *extra):
        x = np.ascontiguousarray(x, np.float32)
        y32 = np.ascontiguousarray(y, np.int32)
        sc = scratch(self.lib.bnncl_cwr_learn_scratch_bytes(ctypes.byref(self.cfg), len(y)))
        rc = fn(ctypes.byref(self.cfg), ctypes.byref(self.st), ptr(x), ptr(y32), len(y), index, *extra, ptr(sc),
                sc.nbytes)
        assert rc == 0

    def deploy(self, x, y, index, head):
        head = np.ascontiguousarray(head, np.float32)
        self._call(self.lib.bnncl_cwr_deploy, x, y, index, ptr(head))

    def learn(self, x, y, index):
        self._call(self.lib.bnncl_cwr_learn, x, y, index)

    def array(self, name: str, dtype, shape) -> np.ndarray:
        n = int(np.prod(shape))
        buf = (ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(getattr(self.st, name))
        return np.frombuffer(buf, dtype=dtype, count=n).reshape(shape).copy()

    def predict(self, x):
        x = np.ascontiguousarray(x, np.float32)
        cls = np.zeros(len(x), np.int32)
        scores = np.zeros((len(x), self.cfg.classes), np.float32)
        sc = scratch(self.lib.bnncl_cwr_predict_scratch_bytes(ctypes.byref(self.cfg), len(x)))
        assert self.lib.bnncl_cwr_predict(ctypes.byref(self.cfg), ctypes.byref(self.st), ptr(x), len(x), ptr(cls),
                                          ptr(scores), ptr(sc), sc.nbytes) == 0
        return cls, scores


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def _compare(c: _CLoop, learner: ContinualLearner, d: int, where: str) -> None:
    cfg, st, buf = c.cfg, c.st, learner.buffer
    cs = learner.consolidator
    assert _same_bits(c.array("cw", np.float32, (K, d)), cs.cw), f"{where}: cw"
    assert np.array_equal(c.array("past", np.int64, (K,)), cs.past), f"{where}: past"
    if learner.standardizer is not None:
        assert bool(st.fitted) == learner.standardizer.fitted
        assert _same_bits(c.array("shift", np.float32, (d,)), learner.standardizer.shift), f"{where}: shift"
        assert _same_bits(c.array("scale", np.float32, (d,)), learner.standardizer.scale), f"{where}: scale"
    arrays, meta = buf.state_dict()
    n = int(st.count)
    assert n == len(buf), f"{where}: buffer size"
    dtype = np.uint8 if cfg.lr_bits == 8 else np.float32
    assert _same_bits(c.array("store", dtype, (n, d)), arrays["latents"]), f"{where}: buffer rows"
    assert np.array_equal(c.array("labels", np.int32, (n,)), arrays["labels"]), f"{where}: buffer labels"
    assert np.array_equal(c.array("experience", np.int32, (n,)), arrays["experience"]), f"{where}: experiences"
    seen = np.zeros(K, np.int64)
    seen[arrays["seen_classes"]] = arrays["seen_counts"]
    assert np.array_equal(c.array("seen", np.int64, (K,)), seen), f"{where}: seen counts"
    if cfg.lr_bits == 8:
        assert (st.lo, st.hi) == tuple(meta["value_range"])
    bs = meta["rng_state"]["state"]
    assert bs == {"state": st.buffer_rng.state, "inc": st.buffer_rng.inc}, f"{where}: buffer rng"
    ls = learner._rng.bit_generator.state["state"]
    assert ls == {"state": st.rng.state, "inc": st.rng.inc}, f"{where}: learner rng"


CASES = [
    # mixing, standardize, epochs (None: auto), new_per_class, max_k, lr_bits, deployed
    ("proportional", "off", 3, None, None, 8, True),
    ("balanced", "on", None, None, 1.0, 8, True),
    ("proportional", "on", None, 25, 1.5, 8, True),
    ("balanced", "off", 2, 30, None, 32, True),
    ("balanced", "on", None, None, 1.0, 8, False),  # no deployment: the first experience fits the standardizer
]
#: the experiences after deployment: new classes, then two classes seen before (in the buffer and new again)
EXPERIENCES = ((5,), (6,), (7, 8), (5, 7))


@pytest.mark.parametrize("mixing,standardize,epochs,cap,max_k,lr_bits,deployed", CASES)
def test_loop_bit_identical(lib, feats, mixing, standardize, epochs, cap, max_k, lr_bits, deployed):
    model, bx, by, nx, ny, test = feats
    d, seed, capacity, mb, lr = bx.shape[1], 7, 120, 32, 0.1
    engine = DeviceEngine.from_device_model(model, 0, num_classes=K)
    cfg_py = LearnerConfig(strategy="cwr_star", epochs=epochs, lr=lr, minibatch_size=mb, seed=seed, new_per_class=cap,
                           mixing=mixing, standardize=standardize, cwr_max_k=max_k, rng="portable")
    buffer = LatentReplayBuffer((d,), capacity, lr_bits, seed=seed)
    learner = ContinualLearner(engine, cfg_py, buffer)
    cfg = Config(classes=K, features=d, qf=engine.tail.qf, qb=engine.tail.qb, lr=lr, minibatch=mb,
                 epochs=epochs or 0, new_per_class=cap or 0, mixing=int(mixing == "balanced"),
                 standardize=int(standardize == "on"), max_k=-1.0 if max_k is None else max_k, capacity=capacity,
                 lr_bits=lr_bits)
    c = _CLoop(lib, cfg, seed)
    if deployed:
        head = engine.get_head()
        learner.deploy(bx, by, 0)
        c.deploy(bx, by, 0, head)
        _compare(c, learner, d, "deploy")
    for index, classes in enumerate(EXPERIENCES, start=1):
        sel = np.isin(ny, classes)
        learner.train_experience(nx[sel], ny[sel], index)
        c.learn(nx[sel], ny[sel], index)
        _compare(c, learner, d, f"experience {index}")
        cls, scores = c.predict(test)
        assert _same_bits(scores, learner.logits(test)), f"experience {index}: scores"
        assert np.array_equal(cls, learner.predict(test)), f"experience {index}: predictions"


@pytest.mark.slow
def test_fmnist_b5_protocol_bit_identical(lib):
    """The whole fmnist-b5 protocol with the documented head-only setting (buffer 1500 at 8 bits, standardize on,
    balanced, cwr_max_k 1, auto epochs, lr 0.1, minibatch 128, seed 0): the 1500 base images deployed, then five
    experiences of 600 images; state after each, and the predictions of the 5000 test images (in the engine's
    batches of 1024) equal to Python's."""
    from bnncl import assets
    from bnncl.data.protocols import get_protocol
    from bnncl.device.modelfile import DeviceModel

    spec = get_protocol("fmnist-b5")
    train, test = spec.load()
    stream = spec.stream(train.labels, 0)
    engine = DeviceEngine.from_device_model(DeviceModel.load(assets.model_path("fmnist-b5", ".bnn")), 0,
                                            num_classes=K)
    config = LearnerConfig(strategy="cwr_star", epochs=None, lr=0.1, minibatch_size=128, seed=0, mixing="balanced",
                           standardize="on", cwr_max_k=1.0, rng="portable")
    learner = ContinualLearner(engine, config, LatentReplayBuffer((engine.head_dim,), 1500, 8, seed=0))
    d = engine.head_dim
    cfg = Config(classes=K, features=d, qf=engine.tail.qf, qb=engine.tail.qb, lr=0.1, minibatch=128, epochs=0,
                 new_per_class=0, mixing=1, standardize=1, max_k=1.0, capacity=1500, lr_bits=8)
    c = _CLoop(lib, cfg, 0)
    latents, test_latents = learner.extract(train.images), learner.extract(test.images)
    for exp in stream:
        x, y = latents[exp.indices], np.asarray(exp.labels, np.int64)
        if exp.is_base:
            head = engine.get_head()
            learner.deploy(x, y, exp.index)
            c.deploy(x, y, exp.index, head)
        else:
            learner.train_experience(x, y, exp.index)
            c.learn(x, y, exp.index)
        _compare(c, learner, d, f"experience {exp.index}")
    want = learner.predict(test_latents)
    got = np.concatenate([c.predict(test_latents[i:i + 1024])[0] for i in range(0, len(test_latents), 1024)])
    assert np.array_equal(got, want)
    print(f"\nfmnist-b5 head-only: C and Python bit-identical over {len(stream)} stages; final accuracy "
          f"{np.mean(got == test.labels):.4f}")


def test_edge_settings_bit_identical(lib, feats):
    """Random small settings on synthetic features: minibatches of 1 (balanced epochs with empty minibatches), a
    buffer smaller than the class count (zero quotas), caps of 1, experiences of one pattern, classes revisited,
    max_k 0: C and Python agree bit for bit after every stage."""
    model = feats[0]
    rnd = np.random.default_rng(11)
    d = 128
    for trial in range(12):
        mixing = ("proportional", "balanced")[trial % 2]
        standardize = ("off", "on")[(trial // 2) % 2]
        mb, capacity = int(rnd.choice([1, 2, 5, 16])), int(rnd.choice([1, 3, 7, 40]))
        epochs = [1, 2, None][trial % 3]
        cap = [None, 1, 3][(trial // 3) % 3]
        max_k = [None, 0.0, 1.0][(trial // 4) % 3]
        lr_bits, seed = (8, 32)[(trial // 6) % 2], int(rnd.integers(0, 2**40))
        engine = DeviceEngine.from_device_model(model, 0, num_classes=K)
        learner = ContinualLearner(engine, LearnerConfig(
            strategy="cwr_star", epochs=epochs, lr=0.05, minibatch_size=mb, seed=seed, new_per_class=cap,
            mixing=mixing, standardize=standardize, cwr_max_k=max_k, rng="portable"),
            LatentReplayBuffer((d,), capacity, lr_bits, seed=seed))
        cfg = Config(classes=K, features=d, qf=engine.tail.qf, qb=engine.tail.qb, lr=0.05, minibatch=mb,
                     epochs=epochs or 0, new_per_class=cap or 0, mixing=int(mixing == "balanced"),
                     standardize=int(standardize == "on"), max_k=-1.0 if max_k is None else max_k,
                     capacity=capacity, lr_bits=lr_bits)
        c = _CLoop(lib, cfg, seed)
        centers = rnd.standard_normal((K, d)).astype(np.float32)
        for index in range(4):
            n = int(rnd.integers(1, 25))
            y = rnd.choice(rnd.choice(K, int(rnd.integers(1, 4)), replace=False), n).astype(np.int64)
            x = (centers[y] + rnd.standard_normal((n, d)).astype(np.float32) * np.float32(0.7)).astype(np.float32)
            learner.train_experience(x, y, index)
            c.learn(x, y, index)
            _compare(c, learner, d, f"trial {trial} experience {index}")
            probe = (centers[rnd.integers(0, K, 9)] + rnd.standard_normal((9, d)).astype(np.float32)).astype(np.float32)
            cls, scores = c.predict(probe)
            assert _same_bits(scores, learner.logits(probe)), f"trial {trial}: scores"
            assert np.array_equal(cls, learner.predict(probe)), f"trial {trial}: predictions"


def test_errors_leave_the_state_unchanged(lib):
    cfg = Config(classes=K, features=4, qf=8, qb=16, lr=0.1, minibatch=4, epochs=1, new_per_class=0, mixing=0,
                 standardize=1, max_k=-1.0, capacity=8, lr_bits=8)
    c = _CLoop(lib, cfg, 0)
    before = c.mem.copy()
    x, y = np.ones((3, 4), np.float32), np.array([1, 2, 3], np.int32)
    n = lib.bnncl_cwr_learn_scratch_bytes(ctypes.byref(cfg), 3)
    sc = scratch(n)

    def learn(xx, yy, nbytes=n, at=0):
        return lib.bnncl_cwr_learn(ctypes.byref(cfg), ctypes.byref(c.st), ptr(xx), ptr(yy), len(yy), 0, ptr(sc) + at,
                                   nbytes)

    bad_x = x.copy()
    bad_x[1, 2] = np.nan
    assert learn(x, np.array([1, 2, K], np.int32)) == -11  # BNNCL_E_LABEL
    assert learn(bad_x, y) == -12  # BNNCL_E_NUMERIC
    assert learn(x, y, n - 1) == -3  # BNNCL_E_ARENA_SMALL
    assert learn(x, y, n - 4, at=4) == -4  # BNNCL_E_ALIGN
    assert np.array_equal(c.mem, before)
    cls = np.zeros(1, np.int32)
    psc = scratch(lib.bnncl_cwr_predict_scratch_bytes(ctypes.byref(cfg), 1))
    assert lib.bnncl_cwr_predict(ctypes.byref(cfg), ctypes.byref(c.st), ptr(x), 1, ptr(cls), None, ptr(psc),
                                 psc.nbytes) == -10  # BNNCL_E_NO_LEARNING: nothing learned yet
    bad = Config(**{f: getattr(cfg, f) for f, _ in Config._fields_})
    bad.lr_bits = 1  # 1-bit replay of real-valued pooled features: refused
    assert lib.bnncl_cwr_state_bytes(ctypes.byref(bad)) == 0
    assert learn(x, y) == 0
