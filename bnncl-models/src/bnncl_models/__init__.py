"""The host models of bnncl (``*.safetensors`` beside this file); bnncl finds them with
:func:`bnncl.assets.resolve_model` / :func:`bnncl.assets.model_path`."""

from pathlib import Path

__version__ = "0.1.0"


def models_dir() -> Path:
    """The folder holding the ``.safetensors`` files."""
    return Path(__file__).resolve().parent
