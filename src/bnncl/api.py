"""The public Python API: what ``import bnncl`` exposes (docs/python-api.md).

A thin layer over the modules that do the work; nothing here re-implements them:

* :func:`load_model` -- a device model (``.bnn``) by shipped name or path;
* :class:`Learner` -- an in-memory continual learner on a device model, Avalanche style
  (``train(experience)`` / ``eval(stream)``), or from plain arrays (``deploy`` / ``learn`` / ``predict``);
* :func:`open_session` -- the persistent, crash-safe learner of ``bnncl learn`` (a
  :class:`~bnncl.service.session.LearnerSession`);
* :func:`scenario_from_arrays` / :func:`scenario_from_folder` -- a :class:`Scenario` (a stream of
  experiences bound to the user's images, and a test stream);
* :func:`run_protocol` -- ``bnncl run`` from Python, returning a :class:`RunResult`;
* :func:`summary` -- a model's layers, bits and memory (host models need torch, imported only then).

This module never imports torch at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.cl.learner import TrainStats
from bnncl.cl.metrics import CLResults, ExperienceResult
from bnncl.data.dataset import ImageDataset
from bnncl.data.scenarios import Experience, Stream, nc_stream, ni_stream, nic_stream
from bnncl.device.modelfile import DeviceModel
from bnncl.errors import BnnclError
from bnncl.settings import LearningSettings

__all__ = [
    "Learner", "RunResult", "Scenario", "ScenarioExperience", "load_model", "open_session", "run_protocol",
    "scenario_from_arrays", "scenario_from_folder", "summary",
]

ModelLike = str | os.PathLike | DeviceModel


# ---------------------------------------------------------------------------------------------
# Models


def load_model(model: str | os.PathLike) -> DeviceModel:
    """Load and check a device model: a shipped name (``"fmnist-b5"``, ``"cifar10-b5"``) or a ``.bnn`` path."""
    from bnncl.assets import resolve_model

    if isinstance(model, DeviceModel):
        return model
    return DeviceModel.load(resolve_model(model, ".bnn"))


def _model_label(model: DeviceModel) -> str:
    return Path(model.path).stem if model.path != "<memory>" else model.architecture["name"]


# ---------------------------------------------------------------------------------------------
# Scenarios over the user's data


@dataclass(frozen=True, eq=False)
class ScenarioExperience:
    """One experience together with the dataset it indexes: ``images`` (shift applied) and ``labels``."""

    experience: Experience
    dataset: ImageDataset

    @property
    def index(self) -> int:
        return self.experience.index

    @property
    def is_base(self) -> bool:
        """The base experience: the classes the model was pretrained on (deployed, not trained)."""
        return self.experience.is_base

    @property
    def classes_in_experience(self) -> tuple[int, ...]:
        return self.experience.classes_in_experience

    @property
    def labels(self) -> np.ndarray:
        return self.experience.labels

    @property
    def images(self) -> np.ndarray:
        """uint8 ``(N, H, W, C)``, gathered from the dataset on each access."""
        return self.experience.images(self.dataset.images)

    def __len__(self) -> int:
        return len(self.experience)

    def __repr__(self) -> str:
        base = ", base" if self.is_base else ""
        return (f"ScenarioExperience(#{self.index}, {len(self)} images, "
                f"classes {list(self.classes_in_experience)}{base})")


def _test_experiences(stream: Stream, test: ImageDataset) -> tuple[Experience, ...]:
    """One test experience per training experience that brings classes not seen before: the test
    images of those classes (experiences of only known classes, e.g. new instances, add none)."""
    out: list[Experience] = []
    seen: set[int] = set()
    for exp in stream:
        new = [c for c in exp.classes_in_experience if c not in seen]
        seen.update(new)
        rows = np.flatnonzero(np.isin(test.labels, new))
        if len(rows):
            out.append(Experience(len(out), rows, test.labels[rows], tuple(new), is_base=exp.is_base))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Scenario:
    """A continual-learning scenario over the user's data: ``stream`` (experience indices into
    ``train``) and an optional ``test`` set. Iterate :attr:`train_stream` and :attr:`test_stream`."""

    stream: Stream
    train: ImageDataset
    test: ImageDataset | None = None

    @cached_property
    def train_stream(self) -> tuple[ScenarioExperience, ...]:
        """The training experiences, in order, each with its images."""
        return tuple(ScenarioExperience(e, self.train) for e in self.stream)

    @cached_property
    def test_stream(self) -> tuple[ScenarioExperience, ...]:
        """Test experiences: experience ``i`` holds the test images of the classes that training
        experience ``i`` introduced (so ``test_stream[:t + 1]`` covers the classes seen so far in a
        new-classes scenario). Empty without a test set."""
        if self.test is None:
            return ()
        return tuple(ScenarioExperience(e, self.test) for e in _test_experiences(self.stream, self.test))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    def __len__(self) -> int:
        return len(self.stream)

    def __repr__(self) -> str:
        test = f", {len(self.test)} test images" if self.test is not None else ""
        return (f"Scenario({self.stream.name!r}, {len(self.stream)} experiences, {len(self.train)} train images"
                f"{test}, {len(self.train.class_names)} classes, seed {self.stream.seed})")


_STREAMS: dict[str, Callable[..., Stream]] = {"nc": nc_stream, "ni": ni_stream, "nic": nic_stream}


def _dataset(images: Any, labels: Any, class_names: Sequence[str] | None, source: str) -> ImageDataset:
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W): one channel
        images = images[..., None]
    labels = np.asarray(labels)
    if class_names is None:
        n = int(labels.max()) + 1 if labels.size else 0
        class_names = tuple(str(c) for c in range(n))
    return ImageDataset(images, labels, tuple(class_names), source)


def _scenario(
    train: ImageDataset, test: ImageDataset | None, kind: str, seed: int, options: Mapping[str, Any]
) -> Scenario:
    if kind not in _STREAMS:
        raise BnnclError(f"kind must be one of {sorted(_STREAMS)}, got {kind!r}")
    try:
        stream = _STREAMS[kind](train.labels, seed=seed, **options)
    except ValueError as exc:
        raise BnnclError(f"scenario: {exc}") from None
    return Scenario(stream, train, test)


def scenario_from_arrays(images: Any, labels: Any, test_images: Any = None, test_labels: Any = None, *,
                         class_names: Sequence[str] | None = None, kind: str = "nc", seed: int = 0,
                         **options: Any) -> Scenario:
    """A :class:`Scenario` over NumPy arrays: uint8 ``(N, H, W, C)`` (or ``(N, H, W)``) images and
    integer labels (class ``i`` = ``class_names[i]``; with a pretrained model, its head rows).

    ``kind``: ``"nc"`` new classes (:func:`~bnncl.data.scenarios.nc_stream`: ``base_classes``,
    ``classes_per_experience``, ``class_order``), ``"ni"`` new instances (``n_experiences``,
    ``shifts``) or ``"nic"`` (``parts_per_class``, ``units_per_experience``, ...); ``options`` go to
    that builder. ``seed`` fixes the stream."""
    train = _dataset(images, labels, class_names, "arrays:train")
    test = None
    if test_images is not None or test_labels is not None:
        if test_images is None or test_labels is None:
            raise BnnclError("scenario_from_arrays: give both test_images and test_labels, or neither")
        test = _dataset(test_images, test_labels, train.class_names, "arrays:test")
    return _scenario(train, test, kind, seed, options)


def scenario_from_folder(root: str | os.PathLike, test_root: str | os.PathLike | None = None, *,
                         size: tuple[int, int] | None = None, channels: int = 3,
                         class_names: Sequence[str] | None = None, kind: str = "nc", seed: int = 0,
                         **options: Any) -> Scenario:
    """A :class:`Scenario` over ImageFolders ``root/<class>/<image>`` (and ``test_root``): images
    converted to ``channels`` and resized to ``size`` (H, W) by the documented resize policy; labels
    by ``class_names`` (e.g. ``model.class_names``), else the sorted folder names. ``kind``,
    ``seed`` and ``options`` as in :func:`scenario_from_arrays`."""
    from bnncl.data.imagefolder import load_image_folder

    train = load_image_folder(root, size, channels, class_names)
    test = load_image_folder(test_root, size, channels, train.class_names) if test_root is not None else None
    return _scenario(train, test, kind, seed, options)


# ---------------------------------------------------------------------------------------------
# The in-memory learner


def _labelled(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a Scenario (its test stream), an ImageDataset, a ScenarioExperience, an
    iterable of them, or an ``(images, labels)`` pair."""
    if isinstance(data, Scenario):
        if data.test is None:
            raise BnnclError("this scenario has no test set (give test_images/test_labels or test_root)")
        data = data.test_stream
    if isinstance(data, (ImageDataset, ScenarioExperience)):
        return data.images, data.labels
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], ScenarioExperience):
        return np.asarray(data[0]), np.asarray(data[1])
    parts = list(data)
    if not parts:
        raise BnnclError("eval: empty stream")
    if not all(isinstance(p, ScenarioExperience) for p in parts):
        raise BnnclError("eval: expected a Scenario, an ImageDataset, (images, labels) or experiences")
    return np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])


class Learner:
    """An in-memory continual learner on a device model (the engine of ``bnncl run``): by default streaming
    LDA on the frozen binary backbone's features; ``strategy="cwr_star"`` is CWR* with a trainable binary
    tail, hybrid quantization and latent replay.

    ``settings`` are :class:`~bnncl.settings.LearningSettings` fields (``strategy``, ``tail_blocks``,
    ``qf``, ``qb``, ``qw``, ``qw_rounding``, ``lr_bits``, ``buffer``, ``epochs``, ``lr``, ``minibatch``,
    ``seed``, ``new_per_class``, ``shrinkage``, ``cov_bits``). Labels are head rows: class ``i`` is
    ``class_names[i]``; the head holds ``num_classes`` rows (default: the model's class names).
    ``strategy``: ``slda`` (default), ``cwr_star``, ``cwr``, ``naive`` or ``joint`` (only the CWR ones
    replay).

    Nothing is written to disk; for a device that must survive restarts use :func:`open_session`.
    """

    def __init__(self, model: ModelLike = "fmnist-b5", *, num_classes: int | None = None,
                 threads: int = 1, **settings: Any) -> None:
        from bnncl.assemble import build_learner

        names = {f.name for f in fields(LearningSettings)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise BnnclError(f"Learner: unknown setting(s) {unknown}; expected among {sorted(names)}")
        self.settings = s = LearningSettings(**settings)  # checks every value
        self.model = load_model(model)
        capacity = num_classes or len(self.model.class_names)
        try:
            self.learner = build_learner(self.model, s, threads=threads, num_classes=capacity)
        except ValueError as exc:
            raise BnnclError(f"Learner: {exc}") from None
        self.engine = self.learner.engine
        self.buffer = self.learner.buffer  # None for slda / naive / joint
        self.class_names = list(self.model.class_names[:capacity]) + [str(c) for c in range(
            len(self.model.class_names), capacity)]
        self._next = 0  # index of the next experience learned from arrays
        self._last: tuple[int, tuple[int, ...], TrainStats | None] = (0, (), None)

    # -- learning ---------------------------------------------------------------------------
    def _images(self, images: Any) -> np.ndarray:
        from bnncl.service.session import check_images

        return check_images(images, self.engine.image_shape)

    def deploy(self, images: Any, labels: Any) -> None:
        """Deploy on the base classes the model was pretrained on: their latents fill the replay
        buffer and CWR* starts from the pretrained head rows. Call once, before learning."""
        labels = np.asarray(labels)
        bad = sorted(set(np.unique(labels).tolist()) - set(self.model.pretrained_classes))
        if bad:
            raise BnnclError(f"deploy: classes {bad} are not pretrained in this model (pretrained: "
                             f"{self.model.pretrained_classes}); learn them with learn() or train()")
        latents = self.learner.extract(self._images(images))
        index = self._next
        self.learner.deploy(latents, labels, index)
        self.engine.mark_deployed()
        self._next = index + 1
        self._last = (index, tuple(int(c) for c in np.unique(labels)), None)

    def learn(self, images: Any, labels: Any, *, on_batch: Callable[[Any], None] | None = None) -> TrainStats:
        """Learn one experience from arrays: uint8 ``(N, H, W, C)`` images and integer labels."""
        return self._train(self._images(images), np.asarray(labels), self._next, on_batch)

    def _train(self, images: np.ndarray, labels: np.ndarray, index: int, on_batch: Any) -> TrainStats:
        if not len(images):
            raise BnnclError("empty experience: no images to learn")
        try:
            stats = self.learner.train_experience(self.learner.extract(images), labels, index, on_batch)
        except ValueError as exc:
            raise BnnclError(f"learn: {exc}") from None
        self._next = max(self._next, index) + 1
        self._last = (index, tuple(int(c) for c in np.unique(labels)), stats)
        return stats

    def train(
        self, experience: ScenarioExperience, *, on_batch: Callable[[Any], None] | None = None
    ) -> TrainStats | None:
        """Learn one experience of a :class:`Scenario`'s ``train_stream`` (Avalanche's ``strategy.train``).

        The base experience is deployed (:meth:`deploy`; returns None), any other is trained."""
        if experience.is_base:
            self.deploy(experience.images, experience.labels)
            return None
        return self._train(experience.images, experience.labels, experience.index, on_batch)

    # -- evaluation -------------------------------------------------------------------------
    def predict(self, images: Any) -> np.ndarray:
        """Predicted class (head row, int64) per image, among the classes learned so far."""
        if not self.learner.seen_classes:
            raise BnnclError("predict: nothing learned yet (deploy() or learn() first)")
        return self.learner.predict(self.learner.extract(self._images(images)))

    def eval(self, stream: Any) -> ExperienceResult:
        """Score the learner now (Avalanche's ``strategy.eval``) on ``stream``: a Scenario (its test
        stream), a sequence of test experiences, an ImageDataset or ``(images, labels)``.

        Returns the metrics of the last learned experience: ``accuracy_all`` (all given images),
        ``accuracy_seen`` (those of classes learned so far), ``per_class_accuracy``."""
        images, labels = _labelled(stream)
        if not self.learner.seen_classes:
            raise BnnclError("eval: nothing learned yet (deploy() or train() first)")
        latents = self.learner.extract(self._images(images))
        index, classes, stats = self._last
        return self.learner.evaluate(index, classes, latents, labels.astype(np.int64), stats)

    def run(self, scenario: Scenario, *, on_experience: Callable[[ExperienceResult], None] | None = None) -> CLResults:
        """Every experience of ``scenario``, tested on its test set after each one (a base experience
        first is deployed); returns the run's :class:`~bnncl.cl.metrics.CLResults`."""
        if scenario.test is None:
            raise BnnclError("run: the scenario has no test set")
        stream = scenario.stream
        return self.learner.run(stream, scenario.train.images, scenario.test.images, scenario.test.labels,
                                pretrained_base=bool(len(stream)) and stream[0].is_base, on_experience=on_experience)

    # -- reporting --------------------------------------------------------------------------
    @property
    def seen_classes(self) -> list[int]:
        return sorted(self.learner.seen_classes)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the learning state: ``backbone``, ``tail``, ``head``, ``replay`` and ``strategy`` (CWR*'s
        consolidated rows or SLDA's means and covariance)."""
        mem = {k: int(v) for k, v in self.engine.memory_bytes().items()}
        if not self.learner.uses_engine_head:  # slda predicts with its own state ("strategy")
            mem["head"] = 0
        return mem | self.learner.memory_bytes()

    def __repr__(self) -> str:
        s = self.settings
        if s.strategy == "slda":
            return (f"Learner({_model_label(self.model)!r}, slda, shrinkage {s.shrinkage}, "
                    f"{s.cov_bits}-bit covariance, {len(self.learner.seen_classes)} of {self.engine.num_classes} "
                    f"classes seen)")
        replay = f"{s.lr_bits}-bit replay of {s.buffer}" if self.buffer is not None else "no replay"
        return (f"Learner({_model_label(self.model)!r}, {self.learner.config.strategy}, tail {s.tail_blocks} blocks "
                f"q {s.qf}/{s.qb}/{s.qw}, {replay}, {len(self.learner.seen_classes)} of {self.engine.num_classes} "
                f"classes seen)")


# ---------------------------------------------------------------------------------------------
# The persistent device learner


def open_session(model: str | os.PathLike, state_dir: str | os.PathLike, *, base: str | os.PathLike | None = None,
                 threads: int = 1, **settings: Any):
    """The learner of ``bnncl learn``: resume the committed state in ``state_dir``, or deploy there.

    ``model``: a shipped name or a ``.bnn`` path; ``settings`` (``LearningSettings`` fields and
    ``capacity``) apply to a deployment and must not contradict a saved state; ``base``: an
    ImageFolder of base-class images (the shipped ``fmnist-b5`` deploys from the embedded data).
    Returns a :class:`~bnncl.service.session.LearnerSession`: ``learn(images, class_names)``
    commits each experience, ``predict(images)`` gives ``[(class name, score)]``."""
    from bnncl.assets import resolve_model
    from bnncl.service.session import LearnerSession

    return LearnerSession.open(resolve_model(model, ".bnn"), state_dir, settings or None, base=base, threads=threads)


# ---------------------------------------------------------------------------------------------
# Named protocols


class RunResult:
    """What :func:`run_protocol` returns: the ``results.json`` dict (:meth:`to_dict`) and its metrics."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)
        self.metrics = CLResults(data["strategy"], int(data["num_classes"]),
                                 [ExperienceResult(**e) for e in data["experiences"]], data.get("confusion"),
                                 dict(data.get("config", {})))

    @property
    def protocol(self) -> str:
        return self._data["protocol"]

    @property
    def experiences(self) -> list[ExperienceResult]:
        """One record per experience (base included): ``accuracy_all``, ``accuracy_seen``, ..."""
        return self.metrics.experiences

    @property
    def accuracies(self) -> list[float]:
        """Accuracy on the whole test set after each experience."""
        return [e.accuracy_all for e in self.metrics.experiences]

    @property
    def final_accuracy(self) -> float | None:
        return self.metrics.final_accuracy

    @property
    def average_accuracy(self) -> float | None:
        return self.metrics.average_accuracy

    @property
    def forgetting(self) -> float | None:
        return self.metrics.forgetting

    @property
    def class_names(self) -> list[str]:
        return list(self._data.get("class_names", []))

    @property
    def memory_bytes(self) -> dict[str, int]:
        """``backbone``, ``tail``, ``head``, ``replay``, ``total`` (learning state), ``total_with_backbone``."""
        return dict(self._data.get("memory_bytes", {}))

    @property
    def wall_seconds(self) -> float:
        return float(self._data.get("wall_seconds", 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` dict of ``bnncl run``."""
        return dict(self._data)

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/results.json`` atomically; returns its path."""
        from bnncl.experiment import write_results

        return write_results(self._data, out_dir)

    def __repr__(self) -> str:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.1f}%"

        return (f"RunResult({self.protocol!r}, {self._data.get('engine')}, {len(self.experiences)} experiences, "
                f"final {pct(self.final_accuracy)}, average {pct(self.average_accuracy)}, "
                f"{self.wall_seconds:.1f} s)")


def run_protocol(protocol: str = "fmnist-b5", *, engine: str = "device", model: str | os.PathLike | None = None,
                 on_experience: Callable[[ExperienceResult], None] | None = None, **settings: Any) -> RunResult:
    """Run a named protocol end to end, as ``bnncl run`` does (``fmnist-b5`` on the embedded data,
    ``fmnist-full-b5``, ``cifar10-b5``, ``cifar10-ni``). ``settings`` (``epochs=4``, ``tail_blocks=0``,
    ``strategy="naive"``, ... as the ``bnncl run`` flags) override the protocol's tuned ones;
    ``model`` a shipped name or a file instead of the protocol's shipped model; ``engine="torch"``
    needs torch. ``on_experience`` is called with each experience's result as it completes."""
    from bnncl.experiment import config_for
    from bnncl.experiment import run_protocol as run

    cfg = config_for(protocol, engine=engine, model=model, **settings)
    return RunResult(run(cfg, on_experience=on_experience))


# ---------------------------------------------------------------------------------------------
# Summary


def summary(model: Any, print_fn: Callable[[str], None] | None = print) -> Any:
    """Print a model's layer table (``print_fn=None``: don't print) and return its data.

    A :class:`~bnncl.device.modelfile.DeviceModel` or a ``.bnn`` path: layers, bit widths and memory
    as on the device (``bnncl info``; returns that dict, no torch). A host model -- a torch
    ``Backbone``, a ``.safetensors`` path or a shipped name (``"fmnist-b5"``): parameters and memory by
    bit width, binary vs real MACs (``bnncl summary``; returns a ``ModelSummary``; needs torch)."""
    from bnncl.assets import resolve_model

    if isinstance(model, (str, os.PathLike)) and resolve_model(model, ".safetensors").suffix == ".bnn":
        model = load_model(model)
    if isinstance(model, DeviceModel):
        from bnncl.device.info import describe, format_info

        info = describe(model)
        if print_fn is not None:
            print_fn(format_info(info))
        return info
    try:
        from bnncl.nn.summary import format_summary, summarize
    except ImportError as exc:
        raise BnnclError(f"summary of a host model needs torch (pip install 'bnncl[torch]'): {exc}") from None
    if isinstance(model, (str, os.PathLike)):
        from bnncl.nn.checkpoint import load_model as load_host_model

        model, _ = load_host_model(resolve_model(model, ".safetensors"))
    result = summarize(model)
    if print_fn is not None:
        print_fn(format_summary(result))
    return result
