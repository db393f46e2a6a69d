"""Files shipped inside the package: pretrained models and the embedded Fashion-MNIST subset."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bnncl.errors import ModelFileError

#: Shipped host models (torch, safetensors): BNNs and their float twins, pretrained on classes 0-4.
SHIPPED_MODELS = ("fmnist-b5", "fmnist-b5-fp32", "cifar10-b5", "cifar10-b5-fp32")


def models_dir() -> Path:
    return Path(str(resources.files("bnncl") / "assets" / "models"))


def model_path(name: str, suffix: str = ".safetensors") -> Path:
    """Path of the shipped model ``name`` (``.safetensors`` host model or ``.bnn`` device model)."""
    path = models_dir() / f"{name}{suffix}"
    if not path.is_file():
        known = sorted({p.stem for p in models_dir().glob("*")}) if models_dir().is_dir() else []
        raise ModelFileError(f"no shipped model {name!r} ({path} missing); shipped: {known}")
    return path
