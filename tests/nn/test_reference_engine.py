"""TorchEngine: the Engine protocol on a torch Backbone, float32 and fake-quantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnncl.cl.engine import Engine
from bnncl.device.quantize import quantize
from bnncl.nn.augment import to_input
from bnncl.nn.backbones import BackboneConfig
from bnncl.nn.checkpoint import save_model
from bnncl.nn.quantizers import uniform_quantize
from bnncl.nn.reference_engine import GradQuantize, TorchEngine
from toy_backbones import CFG, make_model


def images(n: int, cfg: BackboneConfig = CFG, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *cfg.input_shape), dtype=np.uint8)


def test_is_an_engine_and_extract_is_backbone_latent() -> None:
    m = make_model()
    for k in range(4):
        te = TorchEngine(m, k)
        assert isinstance(te, Engine)
        imgs = images(6)
        lat = te.extract(imgs)
        with torch.no_grad():
            ref = m.latent(to_input(torch.from_numpy(imgs), CFG.mean, CFG.std), CFG.split_for_tail(k))
        np.testing.assert_array_equal(lat, (ref.permute(0, 2, 3, 1) if ref.ndim == 4 else ref).numpy())
        assert lat.dtype == np.float32 and lat.shape[1:] == te.latent_shape
        if k == 2:
            assert set(np.unique(lat)) <= {-1.0, 1.0}
    assert te.head_dim == 16 and te.num_classes == 4


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_fp32_step_equals_plain_autograd_sgd(k: int) -> None:
    """Independent reference: autograd through ``Backbone.tail_from_latent``, only conv weights + head."""
    m = make_model()
    te = TorchEngine(m, k)
    lat = te.extract(images(16))
    y = np.random.default_rng(1).integers(0, 4, 16)
    ref = make_model()
    split = CFG.split_for_tail(k)
    params = [b.conv.weight for b in ref.blocks[len(CFG.blocks) - k:]] + [ref.head.weight]
    for p in ref.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=0.5)
    x = torch.from_numpy(lat)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(ref.tail_from_latent(x, split), torch.from_numpy(y))
        loss.backward()
        opt.step()
        assert te.train_batch(lat, y, 0.5) == pytest.approx(loss.detach().item(), abs=1e-5)
    for name, w in te.conv_weights().items():
        np.testing.assert_allclose(w, ref.get_parameter(name).detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(te.get_head(), ref.head.weight.detach().numpy(), atol=1e-6)
    # frozen parts untouched (bias before sign, BN, RPReLU, the frozen blocks)
    for name, p in te.model.named_parameters():
        if "conv.weight" not in name and not name.startswith("head"):
            torch.testing.assert_close(p, m.get_parameter(name))
    torch.testing.assert_close(m.blocks[2].bn.running_mean, te.model.blocks[2].bn.running_mean)


def test_fake_quant_storage_grids_and_clipping() -> None:
    te = TorchEngine(make_model(), 3, qf=8, qb=16, qw=8)
    lat = te.extract(images(16))
    before = {k: (w.min(), w.max()) for k, w in te.conv_weights().items()}
    for _ in range(3):
        te.train_batch(lat, np.arange(16) % 4, 5.0)
    for name, w in te.conv_weights().items():
        assert len(np.unique(w)) <= 256  # on an 8-bit grid
        np.testing.assert_array_equal(quantize(w, 8).dequantize(), uniform_quantize(torch.from_numpy(w), 8).numpy())
        assert w.min() >= before[name][0] - 1e-6 and w.max() <= before[name][1] + 1e-6  # ulp: re-quantization
    assert len(np.unique(te.get_head())) <= 2**16


def test_grad_quantize_is_identity_forward_and_quantizes_backward() -> None:
    x = torch.randn(50, requires_grad=True)
    y = GradQuantize.apply(x, 4)
    torch.testing.assert_close(y, x)
    g = torch.randn(50)
    y.backward(g)
    torch.testing.assert_close(x.grad, uniform_quantize(g, 4))
    assert len(torch.unique(x.grad)) <= 16


def test_quantized_forward_differs_but_stays_close() -> None:
    m = make_model()
    lat = TorchEngine(m, 2).extract(images(16))
    l32 = TorchEngine(m, 2).logits(lat)
    l8 = TorchEngine(m, 2, qf=8, qb=16, qw=8).logits(lat)
    assert not np.array_equal(l32, l8)
    assert np.abs(l32 - l8).max() < 0.2 * np.abs(l32).max()


def test_head_expansion_state_reset(tmp_path) -> None:
    m = make_model()
    save_model(m, tmp_path / "m.safetensors")
    te = TorchEngine.from_checkpoint(tmp_path / "m.safetensors", 2, qf=8, qb=16, qw=8, num_classes=7,
                                     head_classes=[6, 0, 2, 4])
    assert te.num_classes == 7 and te.get_head().shape == (7, 16)
    np.testing.assert_allclose(te.get_head()[[6, 0, 2, 4]], m.head.weight.detach().numpy(), atol=1e-4)
    lat = te.extract(images(16))
    deployed = te.logits(lat)
    state0 = te.tail_state()
    te.train_batch(lat, np.arange(16) % 7, 1.0)
    state1, head1 = te.tail_state(), te.get_head()
    trained = te.logits(lat)
    assert not np.array_equal(trained, deployed)
    te.reset_tail()
    np.testing.assert_array_equal(te.logits(lat), deployed)
    te.load_tail_state(state1)
    te.set_head(head1)
    np.testing.assert_allclose(te.logits(lat), trained, atol=1e-5)
    te.load_tail_state(state0)
    with pytest.raises(ValueError, match="missing"):
        te.load_tail_state({})
    with pytest.raises(ValueError, match="head"):
        te.set_head(np.zeros((4, 16)))
    with pytest.raises(ValueError, match="images"):
        te.extract(np.zeros((2, 12, 12, 1), np.float32))
    with pytest.raises(ValueError, match="latents"):
        te.logits(np.zeros((2, 3, 3, 8), np.float32))
    mem = te.memory_bytes()
    assert set(mem) == {"backbone", "tail", "head"} and mem["head"] == 7 * 16 * 4


def test_float_twin_and_momentum() -> None:
    cfg = CFG.float_twin()
    te = TorchEngine(make_model(cfg), 2, momentum=0.9)
    lat = te.extract(images(16, cfg))
    losses = [te.train_batch(lat, np.arange(16) % 4, 0.05) for _ in range(30)]
    assert losses[-1] < losses[0]
