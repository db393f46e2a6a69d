"""The shipped pretrained models load and reach their recorded base-class accuracy on the real test split."""

import pytest

from bnncl.assets import SHIPPED_MODELS, model_path
from bnncl.nn.checkpoint import load_model
from bnncl.nn.pretrain import _remap, evaluate
from data_available import cifar_available, fmnist_available


def _test_split(dataset: str):
    from bnncl.data import load_dataset

    return load_dataset(dataset, "test")


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_model_reaches_recorded_accuracy(name, tmp_path, monkeypatch):
    model, info = load_model(model_path(name))
    dataset = info["dataset"]
    if dataset == "fmnist" and not fmnist_available():
        pytest.skip("Fashion-MNIST IDX files not found (apt-get install dataset-fashion-mnist)")
    if dataset == "cifar10" and not cifar_available():
        pytest.skip("CIFAR-10 archive not found (set BNNCL_CIFAR10)")
    assert info["classes"] == [0, 1, 2, 3, 4]
    assert model.config.binary == (not name.endswith("-fp32"))
    test = _test_split(dataset).with_classes(info["classes"])
    acc = evaluate(model, test.images, _remap(test.labels, info["classes"]))
    assert abs(acc - info["test_accuracy"]) <= 0.005, (acc, info["test_accuracy"])
    floor = {"fmnist": 0.90, "cifar10": 0.80}[dataset]
    assert acc >= floor
