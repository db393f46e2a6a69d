"""Frozen engine vs the torch model it was exported from, on every kernel path."""

import numpy as np
import pytest

from bnncl.device.bitpack import pack_signs
from bnncl.device.frozen import FrozenEngine
from bnncl.device.modelfile import DeviceModel

torch = pytest.importorskip("torch")
from bnncl.assets import model_path  # noqa: E402
from bnncl.nn.augment import to_input  # noqa: E402
from bnncl.nn.checkpoint import load_model  # noqa: E402
from bnncl.nn.export import build_device_model  # noqa: E402
from data_available import needs_cifar, needs_fmnist  # noqa: E402
from nn.test_export import TINY, randomized  # noqa: E402  (tests/ is on the pytest pythonpath)


def _torch(model, images, split=None):
    with torch.no_grad():
        x = to_input(torch.from_numpy(images), model.config.mean, model.config.std)
        if split is None:
            return model(x).numpy()
        z = model.latent(x, split)
        return (z.permute(0, 2, 3, 1) if z.ndim == 4 else z).numpy()


@pytest.fixture(scope="module")
def toy():
    model = randomized(TINY, seed=3)
    images = np.random.default_rng(0).integers(0, 256, (40, *TINY.input_shape), dtype=np.uint8)
    return model, build_device_model(model, {"classes": [0, 1, 2]}), images


def test_engine_matches_torch_on_every_path(toy, path):
    model, dm, images = toy
    eng = FrozenEngine(dm, threads=2, chunk=16)
    np.testing.assert_allclose(eng.logits(images), _torch(model, images), rtol=1e-4, atol=1e-4)
    for split in ("block1", "block2", "gap"):
        np.testing.assert_allclose(eng.latents(images, split), _torch(model, images, split), rtol=1e-4, atol=1e-4)
    lat = eng.latents(images)  # the LR split block2 is binary: exactly ±1
    assert set(np.unique(lat)) <= {-1.0, 1.0}
    assert np.array_equal(lat, _torch(model, images, "block2"))
    assert np.array_equal(eng.latents(images, packed=True), pack_signs(lat))


def test_outputs_do_not_depend_on_chunk_size_or_threads(toy, path):
    """The same image gives bit-identical logits and latents (binary LR split, real split, pooled
    features) whether it is processed alone, in chunks of 7 or in one chunk, on 1 or 2 threads."""
    _, dm, images = toy
    ref = FrozenEngine(dm, threads=1, chunk=256)
    want = {"logits": ref.logits(images), "lr": ref.latents(images, packed=True),
            "block1": ref.latents(images, "block1"), "gap": ref.latents(images, "gap")}
    for threads, chunk in ((2, 7), (1, 1), (2, 256)):
        eng = FrozenEngine(dm, threads=threads, chunk=chunk)
        got = {"logits": eng.logits(images), "lr": eng.latents(images, packed=True),
               "block1": eng.latents(images, "block1"), "gap": eng.latents(images, "gap")}
        for key in want:
            assert np.array_equal(got[key], want[key]), (key, threads, chunk)
    assert np.array_equal(FrozenEngine(dm).logits(images[3:4]), want["logits"][3:4])


def test_empty_batch_and_int8_stem(toy):
    _, dm, images = toy
    ref = FrozenEngine(dm).logits(images)
    assert FrozenEngine(dm).logits(images[:0]).shape == (0, 3)
    int8 = FrozenEngine(dm, stem="int8")
    stem_err = np.abs(int8.stem(images) - FrozenEngine(dm).stem(images)).max()
    assert 0 < stem_err < 0.05 * np.abs(FrozenEngine(dm).stem(images)).max()
    np.testing.assert_array_equal(FrozenEngine(dm).predict(images), np.argmax(ref, axis=1))


def test_argument_errors(toy):
    _, dm, images = toy
    eng = FrozenEngine(dm)
    with pytest.raises(ValueError, match="uint8"):
        eng.logits(images.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        eng.logits(images[:, :4])
    with pytest.raises(ValueError, match="split"):
        eng.latents(images, "block7")
    with pytest.raises(ValueError, match="binary latent"):
        eng.latents(images, "block1", packed=True)
    with pytest.raises(ValueError, match="threads"):
        FrozenEngine(dm, threads=0)
    with pytest.raises(ValueError, match="stem"):
        FrozenEngine(dm, stem="int4")


def _real(name: str, images: np.ndarray, tmp_path, paths=("auto",)) -> None:
    model, info = load_model(model_path(name, ".safetensors"))  # bnncl_models (pip install ./bnncl-models)
    build_device_model(model, info).save(tmp_path / "m.bnn")
    dm = DeviceModel.load(tmp_path / "m.bnn")
    ref_logits, ref_lat = _torch(model, images), _torch(model, images, dm.lr_split)
    from bnncl.device import kernels

    for p in paths:
        with kernels.kernel_path(None if p == "auto" else p):
            eng = FrozenEngine(dm, threads=2)
            assert (eng.logits(images).argmax(1) == ref_logits.argmax(1)).mean() >= 0.999
            assert (eng.latents(images) == ref_lat).mean() >= 0.999


@needs_fmnist
def test_fmnist_model_agrees_with_torch(tmp_path):
    from bnncl.data import load_fashion_mnist

    _real("fmnist-b5", load_fashion_mnist("test").images[:1000], tmp_path, ("auto", "scalar"))


@needs_cifar
def test_cifar10_model_agrees_with_torch(tmp_path):
    from bnncl.data import default_cifar10_path, load_cifar10

    _real("cifar10-b5", load_cifar10(default_cifar10_path(), "test").images[:500], tmp_path)


@pytest.mark.parametrize("stride,repeat,binary_src,affine", [(1, 1, False, False), (2, 2, False, False),
                                                              (2, 2, True, False), (1, 3, True, False),
                                                              (1, 1, False, True)])
def test_fused_epilogue_equals_its_numpy_oracle(path, stride, repeat, binary_src, affine):
    from bnncl.device.kernels.epilogue import block_epilogue, reference_block_epilogue

    rng = np.random.default_rng(stride * 10 + repeat)
    cin, ho, wo = 5 if repeat == 3 else 70, 3, 4
    o = cin * repeat
    src = rng.normal(size=(2, ho * stride, wo * stride, cin)).astype(np.float32)
    y = rng.normal(size=(2, ho, wo, o)).astype(np.float32)
    act = tuple(rng.normal(size=o).astype(np.float32) for _ in range(3))
    mul, addmap = (rng.normal(size=o).astype(np.float32), rng.normal(size=(ho, wo, o)).astype(np.float32)) \
        if affine else (None, None)
    sb = rng.normal(size=cin).astype(np.float32) if binary_src else None
    nb = rng.normal(size=o).astype(np.float32)
    y_ref = y.copy()
    bits_ref = reference_block_epilogue(y_ref, act, mul, addmap, None if affine else src, stride, sb, nb)
    bits = block_epilogue(y, act, mul, addmap, None if affine else src, stride, sb, nb, threads=2)
    assert np.array_equal(y, y_ref) and np.array_equal(bits, bits_ref)
    assert block_epilogue(y, act) is None
    with pytest.raises(ValueError, match="src"):
        block_epilogue(y, act, src=src[:, :1], stride=stride)


def test_stem_im2col_equals_its_numpy_oracle(path):
    from bnncl.device.kernels.im2col import im2col3x3_u8, reference_im2col3x3

    x = np.random.default_rng(5).integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    assert np.array_equal(im2col3x3_u8(x, threads=2), reference_im2col3x3(x))


@pytest.mark.parametrize("n,h,w,c,o", [(2, 5, 7, 3, 32), (1, 28, 28, 1, 32), (3, 4, 9, 3, 48), (2, 6, 5, 2, 8),
                                       (1, 3, 3, 3, 64), (1, 4, 4, 1, 80), (2, 9, 10, 3, 16)])
def test_stem_conv_equals_its_numpy_oracle(path, n, h, w, c, o):
    """Fixed summation order: every path (AVX-512 tiles, generic C, NumPy) gives the same floats, and
    they are close to the GEMM of the patch matrix."""
    from bnncl.device.kernels.im2col import reference_im2col3x3, reference_stem_conv3x3, stem_conv3x3_u8

    rng = np.random.default_rng(n * 100 + o)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    wt = rng.normal(size=(9 * c, o)).astype(np.float32)
    ref = reference_stem_conv3x3(x, wt)
    assert np.array_equal(stem_conv3x3_u8(x, wt, threads=2), ref)
    assert np.array_equal(stem_conv3x3_u8(x[:1], wt), ref[:1])  # batch-independent
    gemm = (reference_im2col3x3(x, np.float64) @ wt.astype(np.float64)).reshape(ref.shape)
    np.testing.assert_allclose(ref, gemm, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="w:"):
        stem_conv3x3_u8(x, wt[1:])


@pytest.mark.parametrize("call", ["fast", "ctypes"])
def test_prepacked_conv_equals_binary_conv2d(path, call, monkeypatch):
    """Both ways into the C call agree with binary_conv2d: the extension module's fast call and the
    ctypes binding (used where the module lacks it)."""
    from bnncl.device import kernels
    from bnncl.device.kernels import prepacked
    from bnncl.device.kernels.prepacked import PackedBinaryConv

    if call == "ctypes":
        monkeypatch.setattr(prepacked, "_fast_call", lambda: None)
    rng = np.random.default_rng(9)
    for cin, o, stride, b in [(70, 33, 1, 1), (64, 40, 2, 3), (3, 5, 1, 2), (32, 32, 2, 1)]:
        w = pack_signs(rng.normal(size=(o, 3, 3, cin)))
        x = pack_signs(rng.normal(size=(b, 6, 8, cin)))
        scale, bias = rng.normal(size=o).astype(np.float32), rng.normal(size=o).astype(np.float32)
        conv = PackedBinaryConv(w, cin, stride, 1, scale, bias)
        assert np.array_equal(conv(x, threads=2), kernels.binary_conv2d(x, w, cin, stride, 1, scale, bias))
        assert np.array_equal(conv(np.asfortranarray(x)), conv(x))  # any layout in, C-contiguous to the kernel
    with pytest.raises(ValueError, match="x_packed"):
        conv(x[..., :0])


def test_prepacked_fast_call_checks_its_buffers():
    from bnncl.device.kernels import prepacked

    fast = prepacked._fast_call()
    if fast is None:
        pytest.skip("the C core's extension module has no conv2d_prepacked")
    conv = prepacked.PackedBinaryConv(np.zeros((8, 3, 3, 1), np.uint64), 8, 1, 1, np.ones(8, np.float32),
                                      np.zeros(8, np.float32))
    x, out = np.zeros((1, 4, 4, 1), np.uint64), np.zeros((1, 4, 4, 8), np.float32)
    args = (1, 4, 4, 1, 8, 3, 3, 8, 1, 1, conv._scale_p, conv._bias_p, 1, 0)
    assert fast(conv._panels, x, out, *args) == 0 and np.all(out == 9 * 8)  # all +1: dot = K
    assert fast(conv._panels, x, out[:, :2], *args) == 3  # output buffer too small: refused
    with pytest.raises(ValueError, match="geometry"):
        fast(conv._panels, x, out, *args[:1], 0, *args[2:])
    with pytest.raises(TypeError):
        fast(conv._panels, x, out)
    with pytest.raises(ValueError, match="contiguous"):
        fast(conv._panels, x, out[..., ::2], *args)
