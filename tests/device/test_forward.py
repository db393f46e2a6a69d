"""One-call frozen forward (``kernels.forward.ForwardPlan``) against the per-layer path, its oracle.

The one-call path does the same float32 operations in the same order as the per-layer path, so
everything must be bit-identical: logits, real activations at every split, ±1 and packed latents at
the binary splits, on every kernel path, batch 1 and N, 1 and 2 threads, and with scratch reused
across batch sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnncl.device.frozen import FrozenEngine
from bnncl.device.kernels import forward
from bnncl.device.modelfile import DeviceModel, split_names

ASSETS = Path(__file__).resolve().parents[2] / "src" / "bnncl" / "assets" / "models"
MODELS = sorted(ASSETS.glob("*.bnn"))


def _images(dm: DeviceModel, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *dm.architecture["input_shape"]), dtype=np.uint8)


def _assert_same(fused: FrozenEngine, layers: FrozenEngine, images: np.ndarray) -> None:
    dm = fused.model
    assert np.array_equal(fused.logits(images), layers.logits(images))
    for split in split_names(dm.architecture):
        assert np.array_equal(fused.latents(images, split), layers.latents(images, split)), split
        if split != "gap":
            assert np.array_equal(fused.forward_to(images, split), layers.forward_to(images, split)), split
        if dm.is_binary_split(split):
            assert np.array_equal(fused.latents(images, split, packed=True),
                                  layers.latents(images, split, packed=True)), split
    for k in range(min(3, len(dm.architecture["blocks"])) + 1):  # the LR splits the device engine serves
        split = dm.split_for_tail(k)
        assert np.array_equal(fused.latents(images, split), layers.latents(images, split)), split


@pytest.mark.skipif(not MODELS, reason="no shipped .bnn models")
@pytest.mark.parametrize("model_file", MODELS, ids=[m.stem for m in MODELS])
def test_shipped_models_one_call_equals_per_layer(path, model_file):
    dm = DeviceModel.load(model_file)
    fused, layers = FrozenEngine(dm), FrozenEngine(dm, fused=False)
    if path != "numpy":
        assert fused.plan() is not None and layers.plan() is None
    for n in (1, 5):
        _assert_same(fused, layers, _images(dm, n, seed=n))


@pytest.mark.skipif(not MODELS, reason="no shipped .bnn models")
def test_threads_chunks_and_scratch_reuse(path):
    dm = DeviceModel.load(MODELS[0])
    images = _images(dm, 11, seed=3)
    layers = FrozenEngine(dm, fused=False)
    ref, ref1 = layers.logits(images), layers.logits(images[:1])  # (the NumPy head's rounding depends on N)
    eng = FrozenEngine(dm, threads=2, chunk=4)  # chunks of 4, 4, 3: scratch sized once, reused
    for _ in range(2):
        assert np.array_equal(eng.logits(images), ref)
        assert np.array_equal(eng.logits(images[:1]), ref1)  # smaller batch after a larger one
    split = dm.lr_split
    assert np.array_equal(eng.latents(images, split, packed=True),
                          FrozenEngine(dm, fused=False).latents(images, split, packed=True))
    assert eng.logits(images[:0]).shape == (0, dm.architecture["num_classes"])


def test_toy_model_with_unpadded_channels(path):
    """Channel counts below 32 (8, 16) take the generic im2col layout; 32 the padded one."""
    pytest.importorskip("torch")
    from bnncl.nn.export import build_device_model
    from nn.test_export import TINY, randomized  # tests/ is on the pytest pythonpath

    dm = build_device_model(randomized(TINY, seed=5), {"classes": [0, 1, 2]})
    fused, layers = FrozenEngine(dm, chunk=16), FrozenEngine(dm, fused=False, chunk=16)
    for n in (1, 19):
        _assert_same(fused, layers, _images(dm, n, seed=n))
    assert np.array_equal(FrozenEngine(dm, threads=2).logits(_images(dm, 7)), layers.logits(_images(dm, 7)))


@pytest.mark.skipif(not forward.available(), reason="C core not built")
def test_plan_argument_errors():
    dm = DeviceModel.load(MODELS[0]) if MODELS else None
    if dm is None:
        pytest.skip("no shipped .bnn models")
    plan = FrozenEngine(dm).plan("scalar")  # a C path even where BNNCL_KERNEL=numpy is forced
    h, w, c = plan.stem_shape
    ic = plan.image_shape[2]
    with pytest.raises(ValueError, match="images"):
        plan.run(np.zeros((1, h, w, ic), np.float32), 1, False, 1, "scalar")
    with pytest.raises(ValueError, match="images"):
        plan.run(np.zeros((1, h + 1, w, ic), np.uint8), 1, False, 1, "scalar")
    images = np.zeros((1, h, w, ic), np.uint8)
    with pytest.raises(ValueError, match="stop"):
        plan.run(images, plan.nblocks + 1, False, 1, "scalar")
    with pytest.raises(ValueError, match="stop"):
        plan.run(images, plan.nblocks, True, 1, "scalar")
    stem = (np.zeros(c), np.zeros((h, w, c)), np.zeros(c), np.ones(c), np.zeros(c))
    with pytest.raises(ValueError, match="block 0"):
        forward.ForwardPlan((h, w, c), ic, np.zeros((9 * ic, c)), stem, [np.zeros((8, 3, 3, 1), np.uint64)],
                            [(c + 1, 8, 1, h, w, 0)], [[np.zeros(8)] * 6])
    with pytest.raises(ValueError, match="even input size"):  # the shortcut's 2x2 pool would read past the map
        forward.ForwardPlan((h + 1, w, c), ic, np.zeros((9 * ic, c)), (stem[0], np.zeros((h + 1, w, c)), *stem[2:]),
                            [np.zeros((c, 3, 3, 1), np.uint64)], [(c, c, 2, h + 1, w, 0)], [[np.zeros(c)] * 6])
    with pytest.raises(ValueError, match="multiple of"):
        forward.ForwardPlan((h, w, c), ic, np.zeros((9 * ic, c)), stem, [np.zeros((c + 8, 3, 3, 1), np.uint64)],
                            [(c, c + 8, 1, h, w, 0)], [[np.zeros(c)] * 2 + [np.zeros(c)] + [np.zeros(c + 8)] * 3])
    with pytest.raises(ValueError, match="stem_w"):
        forward.ForwardPlan((h, w, c), ic, np.zeros((9 * ic + 1, c)), stem, [], [], [])


@pytest.mark.skipif(not MODELS, reason="no shipped .bnn models")
def test_int8_stem_one_call_equals_per_layer(path):
    dm = DeviceModel.load(MODELS[-1])
    images = _images(dm, 3, seed=9)
    fused, layers = FrozenEngine(dm, stem="int8"), FrozenEngine(dm, stem="int8", fused=False)
    assert np.array_equal(fused.logits(images), layers.logits(images))
    assert np.array_equal(fused.latents(images, packed=True), layers.latents(images, packed=True))


@pytest.mark.skipif(not MODELS, reason="no shipped .bnn models")
@pytest.mark.parametrize("model_file", MODELS, ids=[m.stem for m in MODELS])
def test_every_split_binary(path, model_file):
    """Every block fed sign(x + b) (its conv and its shortcut): packed latents at every split, 32-channel
    outputs packed into 64-bit words (the upper half zero), the binary shortcut at stride 1 and 2."""
    dm = DeviceModel.load(model_file)
    dm.architecture["binary_latents"] = [f"block{i}" for i in range(len(dm.architecture["blocks"]))]
    _assert_same(FrozenEngine(dm), FrozenEngine(dm, fused=False), _images(dm, 3, seed=4))


@pytest.mark.skipif(not MODELS, reason="no shipped .bnn models")
@pytest.mark.parametrize("name", ["avx512", "avx2", "scalar"])
def test_env_forced_path(monkeypatch, name):
    """``BNNCL_KERNEL`` (read at every call) picks the kernels of the one C call too."""
    from bnncl.device import kernels

    if name not in kernels.available_paths():
        pytest.skip(f"kernel path {name!r} not available here")
    dm = DeviceModel.load(MODELS[-1])
    images = _images(dm, 2, seed=7)
    eng = FrozenEngine(dm)
    with kernels.kernel_path(name):
        ref = FrozenEngine(dm, fused=False).latents(images, packed=True)
    monkeypatch.setenv("BNNCL_KERNEL", name)
    assert kernels.active_path() == name
    assert np.array_equal(eng.latents(images, packed=True), ref)
