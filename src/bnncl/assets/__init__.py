"""Shipped files: pretrained models and the embedded Fashion-MNIST subset, and the one resolver that
turns a model argument (a path, or the name of a shipped model) into a file.

Where the shipped models live:

* the default device model (``fmnist-b5.bnn``) inside the bnncl package (``bnncl/assets/models``), so a
  device install (``pip install bnncl``, no torch) runs the default job;
* the host models (``.safetensors``, torch: the BNNs and their fp32 twins) and the ``cifar10-b5`` device
  model in the separate ``bnncl_models`` distribution of the source tree (``pip install ./bnncl-models``;
  ``make setup`` installs it), which keeps 19 MB out of the bnncl wheel;
* any folder named by ``$BNNCL_MODELS`` (several separated by ``os.pathsep``), searched last.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from bnncl.errors import ModelFileError

#: Shipped host models (torch, safetensors): BNNs and their float twins, pretrained on classes 0-4.
SHIPPED_MODELS = ("fmnist-b5", "fmnist-b5-fp32", "cifar10-b5", "cifar10-b5-fp32")
#: Shipped device models (``.bnn``, exports of the BNNs above).
DEVICE_MODELS = ("fmnist-b5", "cifar10-b5")
#: Device models that live in the bnncl_models distribution, not in the bnncl package.
EXTRA_DEVICE_MODELS = ("cifar10-b5",)
#: Distribution (in this repository's ``bnncl-models/``) that holds the host models.
HOST_MODELS_PACKAGE = "bnncl_models"
HOST_MODELS_HINT = ("pip install ./bnncl-models from a bnncl source checkout (make setup does it), "
                    "or set $BNNCL_MODELS to a folder holding it")


def models_dir() -> Path:
    """The bnncl package's own model folder (the device models)."""
    return Path(str(resources.files("bnncl") / "assets" / "models"))


def host_models_dir() -> Path | None:
    """Folder of the ``bnncl_models`` package, or ``None`` when it is not installed."""
    try:
        return Path(str(resources.files(HOST_MODELS_PACKAGE)))
    except (ImportError, TypeError):  # not installed (TypeError: a namespace stub without files)
        return None


def model_dirs() -> list[Path]:
    """Where shipped models are looked for, in order: bnncl, ``bnncl_models``, ``$BNNCL_MODELS``."""
    dirs = [models_dir()]
    host = host_models_dir()
    if host is not None:
        dirs.append(host)
    dirs += [Path(p) for p in os.environ.get("BNNCL_MODELS", "").split(os.pathsep) if p]
    return dirs


def find_model(name: str, suffix: str = ".safetensors") -> Path | None:
    """The first ``name + suffix`` in :func:`model_dirs`, or ``None``."""
    for folder in model_dirs():
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def shipped_names(suffix: str = ".safetensors") -> list[str]:
    """Names of the shipped models of one kind: the known ones plus any found in :func:`model_dirs`."""
    names = set(DEVICE_MODELS if suffix == ".bnn" else SHIPPED_MODELS if suffix == ".safetensors" else ())
    for folder in model_dirs():
        if folder.is_dir():
            names.update(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    return sorted(names)


def _missing(name: str, suffix: str) -> ModelFileError:
    where = ", ".join(str(d) for d in model_dirs())
    if suffix == ".safetensors" or name in EXTRA_DEVICE_MODELS:
        return ModelFileError(f"model {name}{suffix} is not installed (looked in {where}); {HOST_MODELS_HINT}")
    return ModelFileError(f"shipped model {name}{suffix} missing from the installation (looked in {where}); "
                          "reinstall bnncl")


def model_path(name: str, suffix: str = ".safetensors") -> Path:
    """Path of the shipped model ``name`` (``.safetensors`` host model or ``.bnn`` device model), or one
    :class:`ModelFileError` line saying where it was looked for and how to get it."""
    path = find_model(name, suffix)
    if path is None:
        raise _missing(name, suffix)
    return path


def resolve_model(spec: str | os.PathLike, suffix: str = ".bnn") -> Path:
    """A model argument as a file: a path that exists wins; else the name of a shipped model
    (``fmnist-b5``, or ``fmnist-b5.bnn``) is its shipped ``suffix`` file (``.bnn`` for the device
    commands, ``.safetensors`` for the host ones); else one :class:`ModelFileError` line listing the
    shipped names."""
    path = Path(spec)
    if path.exists():
        return path
    text = str(spec)
    name = text.removesuffix(suffix)
    if name and os.sep not in name and "/" not in name:
        found = find_model(name, suffix)
        if found is not None:
            return found
        if name in shipped_names(suffix):
            raise _missing(name, suffix)
    kind = "device (.bnn)" if suffix == ".bnn" else "host (.safetensors)" if suffix == ".safetensors" else suffix
    raise ModelFileError(f"{text}: no such model file, and not the name of a shipped model; shipped {kind} models: "
                         f"{', '.join(shipped_names(suffix))}")
