"""The user cache folder (decoded datasets, compiled kernels): ``$BNNCL_CACHE`` or ``$XDG_CACHE_HOME/bnncl``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder inside the bnncl cache; never beside the data, which may be read-only."""
    root = os.environ.get("BNNCL_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = Path(xdg) / "bnncl"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
