"""Accuracy plots (matplotlib is an optional extra: ``pip install bnncl[plot]``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_accuracy(runs: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Accuracy on all classes after each experience, one line per run; returns the path, or None
    when matplotlib is missing."""
    if not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, res in runs:
        xs = [e["index"] for e in res["experiences"]]
        ys = [100 * e["accuracy_all"] for e in res["experiences"]]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("experience")
    ax.set_ylabel("accuracy on all classes (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
