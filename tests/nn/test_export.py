"""Export of host backbones to the device model file: what is stored, fused and quantized."""

import json

import numpy as np
import pytest
import torch

from bnncl.device.bitpack import pack_signs
from bnncl.device.modelfile import FORMAT, DeviceModel
from bnncl.errors import BnnclError, ModelFileError
from bnncl.nn.backbones import Backbone, BackboneConfig
from bnncl.nn.checkpoint import atomic_save, save_model
from bnncl.nn.export import build_device_model, export_model, load_host_model, main
from bnncl.nn.quantizers import uniform_quantize

TINY = BackboneConfig("tiny", (8, 8, 3), 8, ((8, 1), (16, 2), (16, 1), (32, 2)), 3,
                      binary_latents=("block2",), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def randomized(cfg: BackboneConfig = TINY, seed: int = 0) -> Backbone:
    """A backbone with random (non-default) BN statistics, biases and RPReLU parameters."""
    torch.manual_seed(seed)
    model = Backbone(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "shift_in", "shift_out")):
                p.uniform_(-0.3, 0.3)
            elif name.endswith("slope"):
                p.uniform_(0.05, 0.5)
            elif "bn.weight" in name or name == "stem.1.weight":
                p.uniform_(0.5, 1.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_export_fuses_packs_and_quantizes(tmp_path):
    model = randomized()
    info = {"classes": [2, 5, 7], "all_class_names": [f"c{i}" for i in range(10)], "dataset": "toy"}
    dm = export_model(model, info, tmp_path / "m.bnn")
    loaded = DeviceModel.load(tmp_path / "m.bnn")
    assert loaded.manifest == dm.manifest
    assert loaded.lr_split == "block2" and loaded.pretrained_classes == [2, 5, 7]
    assert loaded.class_names[5] == "c5" and loaded.architecture == json.loads(TINY.to_json())
    assert [layer["weight_bits"] for layer in loaded.manifest["layers"]] == [8, 1, 1, 1, 1, 32]
    t = loaded.tensors
    for i, block in enumerate(model.blocks):
        w = block.conv.weight.detach().numpy()
        assert np.array_equal(t[f"fused.blocks.{i}.weight"], pack_signs(w.transpose(0, 2, 3, 1)))
        bn = block.bn
        alpha = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        np.testing.assert_allclose(t[f"fused.blocks.{i}.scale"], np.abs(w).mean(axis=(1, 2, 3)) * alpha, rtol=1e-6)
        beta = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        np.testing.assert_allclose(t[f"fused.blocks.{i}.bias"], beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t["head.weight"], model.head.weight.detach().numpy())
    # int8 stem: per-output-channel symmetric, reproduces the folded float weights to half a step
    deq = t["stem.weight"].astype(np.float32) * t["stem.weight_scale"][:, None, None, None]
    assert np.all(np.abs(deq - t["stem.weight_float"]) <= t["stem.weight_scale"][:, None, None, None] * 0.5001)
    assert np.abs(t["stem.weight"]).max() == 127


def test_raw_tail_parameters_match_the_uniform_quantizer():
    model = randomized()
    dm = build_device_model(model, {"classes": [0, 1, 2]})
    params = dm.tail_parameters(3)
    state = model.state_dict()
    assert set(params) == {k for k in state if k.startswith(("blocks.1.", "blocks.2.", "blocks.3.", "head."))
                           and not k.endswith("num_batches_tracked")}
    for name, value in params.items():
        assert value.dtype == np.float32 and value.shape == tuple(state[name].shape), name
        if name.endswith("conv.weight"):
            expected = uniform_quantize(state[name], 8).numpy()
            np.testing.assert_allclose(value, expected, atol=1e-6)
        else:
            np.testing.assert_array_equal(value, state[name].numpy())
    assert set(dm.tail_parameters(0)) == {"head.weight"}
    with pytest.raises(ValueError, match="tail_blocks"):
        dm.tail_parameters(4)


def test_main_exports_a_saved_model_and_a_checkpoint(tmp_path, capsys):
    model = randomized()
    save_model(model, tmp_path / "m.safetensors", {"classes": [0, 1, 2], "all_class_names": ["a", "b", "c"]})
    assert main([str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.bnn"), "--split", "block3"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert DeviceModel.load(tmp_path / "m.bnn").lr_split == "block3"
    # a pretraining checkpoint (keys model.*, metadata config + settings)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    atomic_save(tensors, {"config": TINY.to_json(), "settings": json.dumps({"classes": [4, 5, 6]})},
                tmp_path / "m.ckpt")
    loaded, info = load_host_model(tmp_path / "m.ckpt")
    assert info["classes"] == [4, 5, 6]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(BnnclError, match="--split"):
        main([str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "x.bnn"), "--split", "block9"])
    with pytest.raises(ModelFileError, match="already a device model"):
        load_host_model(tmp_path / "m.bnn")


def test_float_twin_is_refused():
    with pytest.raises(BnnclError, match="binary"):
        build_device_model(Backbone(TINY.float_twin()), {})
    assert FORMAT == "bnncl-device-model"
