"""``bnncl run``: one continual-learning run of a named protocol on the device or torch engine.

Builds the engine from a shipped model, the stream from the protocol, the replay buffer and the
learner; runs it with progress callbacks; returns the ``results.json`` dict (fields:
docs/design.md §5). Torch is imported only for the torch engine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.assemble import build_learner, device_engine
from bnncl.atomic import replace_file
from bnncl.cl.engine import Engine
from bnncl.cl.learner import BatchProgress
from bnncl.cl.metrics import ExperienceResult
from bnncl.cl.strategies import FEATURE_STRATEGIES
from bnncl.data.dataset import ImageDataset
from bnncl.data.protocols import ProtocolSpec, get_protocol
from bnncl.errors import BnnclError
from bnncl.machine import machine_info, software_info
from bnncl.settings import LearningSettings

ENGINES = ("device", "torch")


@dataclass(frozen=True)
class RunConfig(LearningSettings):
    """Everything that defines a run (recorded in results.json): the learning settings plus the
    protocol, the engine and the baseline switches."""

    protocol: str = "fmnist-b5"
    engine: str = "device"
    buffer_policy: str = "class_balanced"
    threads: int = 1
    shots: int | None = None  # images per new class, for the few-shot protocols (None: the protocol's default)
    validation: float = 0.0  # > 0: hold out this fraction of each train class and test on it (for tuning)
    model: str | None = None  # a file path; default: the protocol's shipped model
    float_network: bool = False  # torch engine on the fp32 twin of the backbone

    def validate(self) -> None:
        super().validate()
        if self.engine not in ENGINES:
            raise BnnclError(f"--engine must be one of {ENGINES}, got {self.engine!r}")
        if not 0.0 <= self.validation < 1.0:
            raise BnnclError(f"--validation: expected a fraction in [0, 1), got {self.validation}")
        if self.threads < 1:
            raise BnnclError(f"--threads must be >= 1, got {self.threads}")
        if self.float_network and self.engine != "torch":
            raise BnnclError("the fp32 network baseline runs on the torch engine (--engine torch)")


EngineBuilder = Callable[[RunConfig, ProtocolSpec, int], Engine]

NO_CAP = 0
"""``new_per_class`` value a caller passes to :func:`config_for` to ask for no cap explicitly."""


def config_for(protocol: str = "fmnist-b5", **given: Any) -> RunConfig:
    """The run config of ``protocol``: what the caller gives (``None`` = not given) over the protocol's
    tuned settings (:attr:`ProtocolSpec.settings`) over the :class:`LearningSettings` defaults.

    ``new_per_class=NO_CAP`` asks for all new patterns even where the protocol caps them."""
    values = {k: v for k, v in given.items() if v is not None}
    if values.get("new_per_class") == NO_CAP:
        values["new_per_class"] = None
    return run_config(protocol, values)


def run_config(protocol: str, given: Mapping[str, Any]) -> RunConfig:
    """:func:`config_for` where a key that is present is given (``new_per_class: None`` = no cap), as
    :func:`bnncl.settings.given_settings` returns the options of ``bnncl run``."""
    return RunConfig(protocol=protocol, **(dict(get_protocol(protocol).settings) | dict(given)))


def _model_file(cfg: RunConfig, spec: ProtocolSpec, suffix: str) -> Path:
    from bnncl.assets import model_path, resolve_model

    if cfg.model:  # a path, or the name of a shipped model (its .bnn or .safetensors per engine)
        path = resolve_model(cfg.model, suffix)
        if not path.is_file():
            raise BnnclError(f"--model {cfg.model}: not a file")
        return path
    return model_path(spec.model + ("-fp32" if cfg.float_network else ""), suffix)


def build_engine(cfg: RunConfig, spec: ProtocolSpec, num_classes: int) -> Engine:
    """The engine for ``cfg``: the device engine (NumPy + C, from the ``.bnn`` file) or the torch
    reference (from the host ``.safetensors`` model); the head grows to ``num_classes`` rows with the
    pretrained rows at their dataset classes."""
    if cfg.engine == "device":
        from bnncl.device.modelfile import DeviceModel

        return device_engine(DeviceModel.load(_model_file(cfg, spec, ".bnn")), cfg, threads=cfg.threads,
                             num_classes=num_classes)
    import torch

    from bnncl.nn.checkpoint import load_model
    from bnncl.nn.reference_engine import TorchEngine

    torch.set_num_threads(cfg.threads)
    model, info = load_model(_model_file(cfg, spec, ".safetensors"))
    return TorchEngine(model, cfg.tail_blocks, qf=cfg.qf, qb=cfg.qb, qw=cfg.qw, num_classes=num_classes,
                       head_classes=info.get("classes"), weight_rounding=cfg.qw_rounding, rounding_seed=cfg.seed)


VALIDATION_SEED = 12345


def holdout(train: ImageDataset, fraction: float) -> tuple[ImageDataset, ImageDataset]:
    """``(rest, held_out)``: ``fraction`` of each class's train images (at least one), the same for every run
    seed (:data:`VALIDATION_SEED`)."""
    rng = np.random.default_rng(VALIDATION_SEED)
    held = []
    for c in np.unique(train.labels):
        rows = np.flatnonzero(train.labels == c)
        held.append(rng.permutation(rows)[: max(1, round(fraction * len(rows)))])
    mask = np.zeros(len(train), dtype=bool)
    mask[np.concatenate(held)] = True
    return train.select(np.flatnonzero(~mask)), train.select(np.flatnonzero(mask))


def run_protocol(
    cfg: RunConfig,
    on_batch: Callable[[BatchProgress], None] | None = None,
    on_experience: Callable[[ExperienceResult], None] | None = None,
    engine_builder: EngineBuilder = build_engine,
) -> dict[str, Any]:
    """Run ``cfg`` (checked when it was built) end to end and return the results dict (module docstring)."""
    spec = get_protocol(cfg.protocol)
    t0 = time.perf_counter()
    train, test = spec.load()
    if cfg.validation:  # tune on held-out train images; the test split stays untouched
        train, test = holdout(train, cfg.validation)
    num_classes = len(train.class_names)
    engine = engine_builder(cfg, spec, num_classes)
    if spec.fresh_head:  # another domain's classes: none of the pretrained rows means anything here
        engine.set_head(np.zeros((engine.num_classes, engine.head_dim), dtype=np.float32))
        engine.mark_deployed()
    learner = build_learner(None, cfg, engine=engine, buffer_policy=cfg.buffer_policy)
    stream = spec.stream(train.labels, cfg.seed, cfg.shots)
    results = learner.run(stream, train.images, test.images, test.labels, pretrained_base=spec.pretrained_base,
                          on_batch=on_batch, on_experience=on_experience)
    out = results.to_dict()
    memory = {k: int(v) for k, v in engine.memory_bytes().items()}
    if not learner.uses_engine_head:  # slda predicts with its own state, counted as "strategy"
        memory["head"] = 0
    memory.update(learner.memory_bytes())
    memory["total"] = sum(v for k, v in memory.items() if k in ("tail", "head", "replay", "strategy"))
    memory["total_with_backbone"] = memory["total"] + memory.get("backbone", 0)
    out.update({
        "protocol": cfg.protocol,
        "engine": cfg.engine,
        "config": asdict(cfg) | {"learner": out.get("config", {})},
        "class_names": list(train.class_names),
        "memory_bytes": memory,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "machine": machine_info(),
        "software": software_info(),
    })
    return out


def write_results(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``results.json`` atomically into ``out_dir``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    replace_file(path, json.dumps(result, indent=2).encode())
    return path


COMPARE_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("device BNN, streaming LDA on the frozen features (slda)", {"strategy": "slda"}),
    ("device BNN, hybrid q, 1-bit LR (CWR*)", {"strategy": "cwr_star"}),
    ("torch fp32 tail, fp32 LR (CWR*)", {"strategy": "cwr_star", "engine": "torch", "qf": 32, "qb": 32, "qw": 32,
                                         "lr_bits": 32}),
    ("fp32 network twin (CWR*)", {"strategy": "cwr_star", "engine": "torch", "qf": 32, "qb": 32, "qw": 32,
                                  "lr_bits": 32, "float_network": True}),
    ("naive fine-tuning (device)", {"strategy": "naive"}),
    ("joint training of the tail (device, upper bound)", {"strategy": "joint"}),
    ("joint linear probe on the frozen features (device, head-only upper bound)", {"strategy": "probe"}),
)


def compare_configs(protocol: str, given: Mapping[str, Any]) -> list[tuple[str, RunConfig]]:
    """The runs of ``bnncl run --compare``: each row's changes over what the user gave (the user's strategy
    and, for the head-only rows, tail blocks give way) over the protocol's tuned settings."""
    rows = []
    for label, changes in COMPARE_RUNS:
        values = dict(given) | changes
        if changes["strategy"] in FEATURE_STRATEGIES:
            values.pop("tail_blocks", None)
        rows.append((label, run_config(protocol, values)))
    return rows
