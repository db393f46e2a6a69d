"""Shared pieces of the service tests: the shipped model, a fast setting, streams of real PNG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnncl.assets import model_path as shipped_model_path
from bnncl.data.embedded import load_embedded

# CWR* (it exercises the replay buffer and the tail in the state), K = 0, 8-bit replay, small buffer, one
# epoch: fast enough for many runs on 2 shared cores. A head of the model's 10 names and no free row.
FAST = {"strategy": "cwr_star", "tail_blocks": 0, "lr_bits": 8, "buffer": 200, "epochs": 1, "capacity": 10}


def fast_flags(settings: dict | None = None) -> list[str]:
    out: list[str] = []
    for k, v in (settings or FAST).items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def write_stream(incoming: Path, n: int, seed: int = 0, classes=(5, 6, 7, 8, 9), start: int = 0) -> list[str]:
    """``n`` embedded train images of ``classes`` as ``incoming/<class folder>/<NNNNNN>.png``; returns ids."""
    train = load_embedded("train")
    rng = np.random.default_rng(seed)
    idx = rng.choice(np.flatnonzero(np.isin(train.labels, classes)), n, replace=False)
    ids = []
    for j, i in enumerate(idx, start=start):
        folder = incoming / train.class_names[int(train.labels[i])].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(train.images[i, :, :, 0]).save(folder / f"{j:06d}.png")
        ids.append(f"{folder.name}/{j:06d}.png")
    return ids


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (but the learner's lock) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "LEARNER.lock"}


@pytest.fixture(scope="session")
def model() -> Path:
    return shipped_model_path("fmnist-b5", ".bnn")


@pytest.fixture(scope="session")
def deployed_template(tmp_path_factory, model) -> Path:
    """A state deployed once with :data:`FAST` (copy it with :func:`fresh_state`)."""
    from bnncl.service.session import LearnerSession

    path = tmp_path_factory.mktemp("template") / "state"
    LearnerSession.open(model, path, FAST)
    return path


@pytest.fixture
def state(tmp_path, deployed_template) -> Path:
    """A private copy of the deployed FAST state."""
    dst = tmp_path / "state"
    shutil.copytree(deployed_template, dst)
    return dst


@pytest.fixture(scope="session")
def kit():
    """The helper functions above, for the test modules (conftest modules are not importable)."""
    from types import SimpleNamespace

    return SimpleNamespace(FAST=FAST, fast_flags=fast_flags, write_stream=write_stream, snapshot=snapshot)
