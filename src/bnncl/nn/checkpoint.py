"""Model and training-checkpoint files: safetensors tensors + JSON metadata, written atomically, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from bnncl.atomic import replace_file
from bnncl.errors import ModelFileError
from bnncl.nn.backbones import Backbone, BackboneConfig

FORMAT = "bnncl-torch-model"
FORMAT_VERSION = 1


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike) -> None:
    """Write a safetensors file via a temp file, fsync and rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    replace_file(path, data)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None


def save_model(model: Backbone, path: str | os.PathLike, info: dict[str, Any] | None = None) -> None:
    """Save weights + ``config`` + free-form ``info`` (classes, training record) as JSON metadata."""
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "info": json.dumps(info or {}, sort_keys=True),
    }
    atomic_save(dict(model.state_dict()), meta, path)


def load_model(path: str | os.PathLike) -> tuple[Backbone, dict[str, Any]]:
    """Load a model saved by :func:`save_model`; returns ``(model in eval mode, info)``."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {meta.get('format_version')} is newer than {FORMAT_VERSION}")
    try:
        config = BackboneConfig.from_json(meta["config"])
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid model metadata ({exc})") from None
    model = Backbone(config)
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise ModelFileError(
            f"{path}: weights do not match the {config.name} architecture ({str(exc).splitlines()[0]})"
        ) from None
    model.eval()
    return model, info
