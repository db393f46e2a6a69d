import numpy as np
import pytest
import torch

from bnncl.data.dataset import ImageDataset
from bnncl.errors import BnnclError, ModelFileError
from bnncl.nn.backbones import BackboneConfig
from bnncl.nn.checkpoint import load_model
from bnncl.nn.pretrain import PretrainSettings, pretrain

TINY = BackboneConfig("tiny", (12, 12, 1), 8, ((8, 1), (16, 2)), 3, binary_latents=("block1",))


def _toy(n: int, seed: int) -> ImageDataset:
    """Three classes told apart by which third of the image is bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 60, (n, 12, 12, 1)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 4 * c:4 * c + 4] += 150
    return ImageDataset(images, labels, ("a", "b", "c"))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pretrain_learns_and_saves(tmp_path):
    train, test = _toy(600, 0), _toy(150, 1)
    s = PretrainSettings(classes=[0, 1, 2], epochs=3, batch_size=32, lr=5e-3, seed=1, crop_pad=1, threads=1)
    model, record = pretrain(train, test, TINY, s, tmp_path / "m.safetensors", progress=False, log=lambda m: None)
    assert record["test_accuracy"] > 0.9
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    loaded, info = load_model(tmp_path / "m.safetensors")
    assert info["classes"] == [0, 1, 2] and info["settings"]["seed"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_resume_is_bit_identical(tmp_path):
    train, test = _toy(200, 0), _toy(60, 1)
    s = PretrainSettings(classes=[0, 2], epochs=2, batch_size=32, seed=3, crop_pad=1, threads=1)
    full, _ = pretrain(train, test, TINY, s, tmp_path / "full.safetensors", progress=False, log=lambda m: None)
    one_epoch = -(-int(np.isin(train.labels, [0, 2]).sum()) // 32)
    first = PretrainSettings(**{**s.__dict__, "max_steps": one_epoch})  # stop (as if killed) after epoch 1
    pretrain(train, test, TINY, first, tmp_path / "part.safetensors", progress=False, log=lambda m: None)
    resumed, record = pretrain(train, test, TINY, s, tmp_path / "part.safetensors", resume=True,
                               progress=False, log=lambda m: None)
    assert len(record["history"]) == 2
    for k, v in _weights(full).items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_pretrain_rejects_wrong_input_shape(tmp_path):
    ds = ImageDataset(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]), ("a", "b"))
    with pytest.raises(BnnclError, match="expects"):
        pretrain(ds, ds, TINY, PretrainSettings(classes=[0, 1], epochs=1), tmp_path / "x.safetensors", progress=False)


def test_load_model_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(bad)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")
