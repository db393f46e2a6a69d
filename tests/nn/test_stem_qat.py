"""Quantization-aware int8 stem: one quantizer for host and export, ``stem_bits`` config, ``--init``."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bnncl.assets import model_path
from bnncl.device.frozen import FrozenEngine
from bnncl.device.modelfile import DeviceModel
from bnncl.errors import BnnclError
from bnncl.nn.augment import to_input
from bnncl.nn.backbones import Backbone, BackboneConfig
from bnncl.nn.checkpoint import load_model, save_model
from bnncl.nn.export import build_device_model, export_model
from bnncl.nn.pretrain import PretrainSettings, pretrain
from bnncl.nn.quantizers import (
    dequantize_per_channel,
    fake_int8_stem_weight,
    fold_stem_weight,
    int8_per_channel,
    stem_int8,
)
from bnncl.nn.record import record_markdown
from nn.test_pretrain import _toy  # tests/ is on the pytest pythonpath

TINY = BackboneConfig("tiny", (12, 12, 1), 8, ((8, 1), (16, 2)), 3, binary_latents=("block1",))


def _numpy_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The export's former inline NumPy quantizer (per output channel, dim 0)."""
    wmax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    scale = np.where(wmax > 0, wmax / 127.0, 1.0)
    q = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
    return q, scale


@pytest.mark.parametrize("dtype,half_step", [(torch.float32, 0.501), (torch.float64, 0.5 + 1e-9),
                                             (torch.float16, 0.6)])
def test_int8_per_channel_round_trip(dtype, half_step):
    torch.manual_seed(0)
    w = (torch.randn(6, 3, 3, 3) * torch.logspace(-2, 1, 6).view(-1, 1, 1, 1)).to(dtype)
    w[2] = 0
    q, scale = int8_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == dtype and scale.shape == (6,)
    assert scale[2] == 1 and not q[2].any()
    nz = [0, 1, 3, 4, 5]
    assert (q[nz].abs().reshape(5, -1).amax(1) == 127).all()  # the largest weight maps to +-127
    deq = dequantize_per_channel(q, scale, torch.float64)
    err = (deq - w.double()).abs().reshape(6, -1).amax(1)
    assert (err <= scale.double() * half_step).all()  # half a step (+ the dtype's own rounding)
    q2, _ = int8_per_channel(deq)  # quantizing the dequantized weights is a fixed point
    assert torch.equal(q2, q)


def test_int8_per_channel_equals_former_numpy_quantizer():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 3, 3, 3)) * rng.uniform(0.01, 3, (16, 1, 1, 1))
    w[0, 0, 0, 0] = 0.5 * np.abs(w[0]).max() / 127 * 2  # a tie: round half to even in both
    q, scale = int8_per_channel(torch.from_numpy(w))
    qn, sn = _numpy_int8(w)
    assert np.array_equal(q.numpy(), qn) and np.array_equal(scale.numpy(), sn)


def test_fake_int8_stem_weight_forward_and_straight_through_gradient():
    torch.manual_seed(0)
    std = (0.25, 0.2, 0.3)
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    w_eff = fake_int8_stem_weight(w, std)
    q, scale = stem_int8(w, std)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) * 255
    assert torch.equal(w_eff, (dequantize_per_channel(q, scale, torch.float64) * s).float())
    assert not torch.equal(w_eff, w) and torch.allclose(w_eff, w, atol=float(scale.max() * s.max()))
    g = torch.randn_like(w)
    (w_eff * g).sum().backward()
    assert torch.equal(w.grad, g)  # straight through
    assert torch.equal(fold_stem_weight(w, std), w.detach().double() / s)


def test_stem_bits_8_forward_is_the_dequantized_stem():
    cfg = replace(TINY, mean=(0.4,), std=(0.3,), stem_bits=8)
    torch.manual_seed(0)
    qat = Backbone(cfg).eval()
    ref = Backbone(replace(cfg, stem_bits=32)).eval()
    ref.load_state_dict(qat.state_dict())
    q, scale = stem_int8(qat.stem[0].weight, cfg.std)
    with torch.no_grad():
        ref.stem[0].weight.copy_((dequantize_per_channel(q, scale, torch.float64) * 0.3 * 255).float())
    flt = Backbone(replace(cfg, stem_bits=32)).eval()
    flt.load_state_dict(qat.state_dict())
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(qat.stem(x), ref.stem(x)) and torch.equal(qat(x), ref(x))
        assert not torch.equal(qat.stem(x), flt.stem(x))  # the float stem differs
    out = qat(x).sum()
    out.backward()
    assert qat.stem[0].weight.grad is not None and qat.stem[0].weight.grad.abs().sum() > 0


def test_stem_bits_config_round_trip(tmp_path):
    cfg = replace(TINY, mean=(0.4,), std=(0.3,), stem_bits=8)
    assert BackboneConfig.from_json(cfg.to_json()) == cfg
    old = json.loads(TINY.to_json())
    del old["stem_bits"]  # a file written before the field existed
    assert BackboneConfig.from_json(json.dumps(old)).stem_bits == 32
    with pytest.raises(ValueError, match="stem_bits"):
        replace(TINY, stem_bits=4)
    save_model(Backbone(cfg), tmp_path / "m.safetensors", {"classes": [0, 1, 2]})
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert loaded.config.stem_bits == 8 and loaded.stem[0].bits == 8
    dm = export_model(loaded, {"classes": [0, 1, 2]}, tmp_path / "m.bnn")
    assert DeviceModel.load(tmp_path / "m.bnn").architecture["stem_bits"] == 8
    # the float32 copy of a quantization-aware stem is the dequantized int8 stem
    t = dm.tensors
    deq = t["stem.weight"].astype(np.float64) * t["stem.weight_scale"].astype(np.float64)[:, None, None, None]
    np.testing.assert_allclose(t["stem.weight_float"], deq, rtol=1e-6)


def _quiet(msg: str) -> None:
    pass


def test_init_loads_weights_and_checks_architecture(tmp_path):
    train, test = _toy(200, 0), _toy(60, 1)
    s = PretrainSettings(classes=[0, 1, 2], epochs=1, batch_size=32, lr=5e-3, seed=1, crop_pad=1, threads=1)
    base, _ = pretrain(train, test, TINY, s, tmp_path / "base.safetensors", progress=False, log=_quiet)
    # lr 0: the parameters stay those of --init (batch-norm statistics keep moving in train mode)
    s0 = replace(s, lr=0.0, seed=7, init=str(tmp_path / "base.safetensors"))
    tuned, record = pretrain(train, test, replace(TINY, stem_bits=8), s0, tmp_path / "t.safetensors",
                             progress=False, log=_quiet)
    assert tuned.config.stem_bits == 8 and tuned.config.std == base.config.std
    for name, p in base.named_parameters():
        assert torch.equal(dict(tuned.named_parameters())[name], p), name
    assert record["settings"]["init"] == str(tmp_path / "base.safetensors")
    loaded, info = load_model(tmp_path / "t.safetensors")
    assert loaded.config.stem_bits == 8
    # the fine-tuned model carries the base model's record; the record table chains both commands
    assert info["init_record"]["history"] == load_model(tmp_path / "base.safetensors")[1]["history"]
    table = record_markdown([tmp_path / "t.safetensors"])
    assert "| 1 + 1 |" in table
    assert "--epochs 1 --seed 1" in table and "-o base.safetensors" in table
    assert f"--stem-bits 8 --init {tmp_path / 'base.safetensors'} --warmup-epochs 1 -o t.safetensors" in table
    other = BackboneConfig("tiny", (12, 12, 1), 8, ((8, 1), (32, 2)), 3, binary_latents=("block1",))
    with pytest.raises(BnnclError, match="--init .*blocks"):
        pretrain(train, test, other, s0, tmp_path / "x.safetensors", progress=False, log=_quiet)
    with pytest.raises(BnnclError, match="num_classes"):
        pretrain(train, test, TINY, replace(s0, classes=[0, 1]), tmp_path / "x.safetensors", progress=False,
                 log=_quiet)


def test_pretrain_cli_parses_stem_bits_and_init():
    from bnncl.cli import build_parser

    a = build_parser().parse_args(["pretrain", "--data", "fmnist", "--arch", "fmnist", "--stem-bits", "8",
                                   "--init", "m.safetensors", "--warmup-epochs", "0.1", "-o", "x"])
    assert (a.stem_bits, a.init, a.warmup_epochs) == (8, "m.safetensors", 0.1)
    assert build_parser().parse_args(["pretrain", "--data", "fmnist", "--arch", "fmnist", "-o", "x"]).stem_bits == 32


@pytest.mark.parametrize("stem", ["int8", "float32"])
def test_finetuned_int8_stem_matches_torch_on_the_device(tmp_path, stem):
    train, test = _toy(300, 0), _toy(200, 1)
    s = PretrainSettings(classes=[0, 1, 2], epochs=1, batch_size=32, lr=5e-3, seed=1, crop_pad=1, threads=1)
    pretrain(train, test, TINY, s, tmp_path / "base.safetensors", progress=False, log=_quiet)
    pretrain(train, test, replace(TINY, stem_bits=8), replace(s, lr=1e-3, init=str(tmp_path / "base.safetensors")),
             tmp_path / "t.safetensors", progress=False, log=_quiet)
    model, info = load_model(tmp_path / "t.safetensors")
    eng = FrozenEngine(build_device_model(model, info), threads=1, stem=stem)
    with torch.no_grad():
        x = to_input(torch.from_numpy(test.images), model.config.mean, model.config.std)
        ref, ref_lat = model(x).numpy(), model.latent(x, "block1").permute(0, 2, 3, 1).numpy()
    lg = eng.logits(test.images)
    assert (lg.argmax(1) == ref.argmax(1)).all()
    assert (eng.latents(test.images) == ref_lat).mean() > 0.999
    np.testing.assert_allclose(lg, ref, atol=1e-3 * np.abs(ref).max() + 1e-4)


@pytest.mark.parametrize("name", ["fmnist-b5", "cifar10-b5"])
def test_shipped_bnn_is_the_export_of_the_shipped_int8_stem_model(name):
    """The shipped BNNs are trained with the int8 device stem, and each shipped ``.bnn`` is ``bnncl
    export`` of its host model, tensor for tensor, byte for byte."""
    src, shipped = model_path(name, ".safetensors"), model_path(name, ".bnn")
    model, info = load_model(src)
    assert model.config.stem_bits == 8
    dm, ship = build_device_model(model, info), DeviceModel.load(shipped)
    assert ship.architecture["stem_bits"] == 8 and sorted(dm.tensors) == sorted(ship.tensors)
    for k, a in dm.tensors.items():
        b = ship.tensors[k]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
