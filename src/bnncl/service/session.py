"""The device learner behind ``bnncl learn`` / ``predict`` as a Python API: one model file + one state.

:meth:`LearnerSession.open` loads the committed state of ``STATE_DIR`` (checked against the model
file's sha256), or, on a fresh device, *deploys*: builds the engine from the model file, prefills
the latent replay buffer from base-class images (the embedded Fashion-MNIST subset for the shipped
``fmnist-b5`` model, or an ImageFolder given as ``base``), seeds CWR* from the pretrained head, and
commits generation 1. :meth:`LearnerSession.learn` learns one experience and commits it together
with the caller's record of what it learned, so the learner state and the record never disagree.

Class names are the model's ``class_names`` (head row ``i`` = name ``i``); a new name takes the
next free row, up to the head's capacity (``Settings.capacity``, default: the number of names in
the model). The names, the settings and the record live in the state's ``position``::

    {"service": 1, "experience": E, "classes": [...], "settings": {...},
     "images_learned": N, "learned_per_class": [...], "last_files": [{"id", "sha256", "bytes"}, ...]}

Every error is a one-line :class:`~bnncl.errors.BnnclError`; a failed call leaves the state on disk
as it was (and the session's memory consistent with it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.assemble import build_learner
from bnncl.cl.learner import grow_classes
from bnncl.cl.state import (
    LoadedState,
    NoStateError,
    StateError,
    StateStore,
    sha256_file,
)
from bnncl.errors import BnnclError
from bnncl.settings import BY_NAME, LearningSettings

SERVICE_VERSION = 1


class InputError(BnnclError):
    """Images or labels given to the learner are not usable (shape, values, labels)."""


class HeadFullError(InputError):
    """More class names than the head has rows."""


@dataclass(frozen=True)
class Settings(LearningSettings):
    """What a device is deployed with (recorded in the state; fixed for its life)."""

    capacity: int | None = None  # head rows; None: the number of class names in the model

    def validate(self) -> None:
        super().validate()
        if self.capacity is not None and not (isinstance(self.capacity, int) and self.capacity >= 1):
            raise BnnclError(f"--capacity: expected an integer >= 1, got {self.capacity!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Settings:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if "qw" in values and "qw_rounding" not in values:
            values["qw_rounding"] = "nearest"  # a state deployed before the setting existed rounded to nearest
        if "qw" in values and "strategy" not in values:
            values["strategy"] = "cwr_star"  # the only strategy of a state deployed before the setting existed
        return cls(**values)


def check_images(images: Any, image_shape: Sequence[int], what: str = "images") -> np.ndarray:
    """``images`` as uint8 ``(N, H, W, C)`` of the model's input shape, or one :class:`InputError` line.

    Accepted: uint8 arrays; integer or float arrays whose values are finite and lie in [0, 255]
    (floats are rounded); ``(N, H, W)`` for a one-channel model. Not resized: arrays must have the
    model's size (files go through the documented resize policy instead)."""
    arr = np.asarray(images)
    shape = tuple(int(v) for v in image_shape)
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[1:] != shape:
        want = "(N, {}, {}, {})".format(*shape)
        raise InputError(f"{what}: expected an array of shape {want}, got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what}: expected numbers (uint8 pixels), got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
            raise InputError(f"{what}: contains NaN or Inf (first in image {first}); expected pixel values in [0, 255]")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise InputError(f"{what}: pixel values must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
    return np.rint(arr).astype(np.uint8)


FREE_ROWS = 16
"""Head rows a deployment leaves free beyond the model's class names, for the classes a user adds."""

REPORT_SAMPLE = 512
"""At most this many replayed patterns are scored in the report after each experience."""


@dataclass(frozen=True)
class LearnReport:
    """What one :meth:`LearnerSession.learn` did (``bnncl learn`` prints it)."""

    images: int
    accuracy_new: float
    """Accuracy on the experience's own images, after learning them."""
    replay: tuple[int, float] | None
    """``(patterns, accuracy)`` on a sample of the replay buffer, or None without one."""
    seconds: float

    def line(self) -> str:
        out = f"accuracy on them {100 * self.accuracy_new:.0f}%"
        if self.replay is not None:
            out += f", on {self.replay[0]} replayed patterns {100 * self.replay[1]:.0f}%"
        return out


class LearnerSession:
    """A deployed learner bound to one model file and one state directory (module docstring)."""

    def __init__(self, model_path: Path, store: StateStore, settings: Settings, model: Any, model_sha: str,
                 threads: int = 1) -> None:
        self.model_path = Path(model_path)
        self.store = store
        self.settings = settings
        self.model_sha = model_sha
        self.model_class_names = list(model.class_names)
        capacity = settings.capacity or len(self.model_class_names)
        if capacity < len(model.pretrained_classes) or capacity < max(model.pretrained_classes) + 1:
            raise BnnclError(f"--capacity {capacity} is smaller than the pretrained head "
                             f"({max(model.pretrained_classes) + 1} rows)")
        try:
            self.learner = build_learner(model, settings, threads=threads, num_classes=capacity)
        except ValueError as exc:
            raise BnnclError(f"{model_path}: cannot build the device engine ({exc})") from None
        self.engine = self.learner.engine
        self.buffer = self.learner.buffer
        self.image_shape = tuple(self.engine.image_shape)
        self.classes: list[str] = list(self.model_class_names[:capacity])
        self.position: dict[str, Any] = {}
        self.generation = 0
        self.fell_back = False
        self.last_report: LearnReport | None = None

    # -- open -------------------------------------------------------------------------------
    @classmethod
    def open(cls, model: str | Path, state_dir: str | Path, settings: Mapping[str, Any] | None = None, *,
             base: str | Path | None = None, threads: int = 1, deploy: bool = True) -> LearnerSession:
        """Resume from ``state_dir``, or deploy there if it holds no state (``deploy=False``: raise
        :class:`NoStateError` instead). ``settings`` (:class:`Settings` field -> value, the options
        the user gave) apply to a deployment; a resumed state keeps the settings it was deployed
        with (:class:`BnnclError` if ``settings`` contradict them)."""
        from bnncl.device.modelfile import DeviceModel

        given = dict(settings or {})
        unknown = sorted(set(given) - {f.name for f in fields(Settings)})
        if unknown:
            raise BnnclError(
                f"settings: unknown name(s) {unknown}; expected among {[f.name for f in fields(Settings)]}"
            )
        for name, value in given.items():  # each in its range (also those a resumed state will override)
            if name in BY_NAME:
                BY_NAME[name].check(value)
        model_path = Path(model)
        dm = DeviceModel.load(model_path)
        sha = sha256_file(model_path)
        store = StateStore(state_dir)
        try:
            state = store.load(model_sha256=sha)
        except NoStateError:
            if not deploy:
                raise
            if given.get("capacity") is None:
                given["capacity"] = len(dm.class_names) + FREE_ROWS
            chosen = Settings(**given)  # and together (e.g. a strategy that trains no tail with --tail-blocks)
            session = cls(model_path, store, chosen, dm, sha, threads)
            session._deploy(base)
            return session
        saved = Settings.from_dict(state.position.get("settings", {}))
        grew = False
        if given.get("capacity") is not None:
            state, saved, grew = cls._grown(state, saved, given.pop("capacity"), len(dm.class_names), state_dir)
        diff = [f"--{k.replace('_', '-')} {getattr(saved, k)}" for k, v in given.items() if getattr(saved, k) != v]
        if diff:
            raise BnnclError(f"{state_dir}: state was deployed with {', '.join(diff)}; drop the conflicting "
                             f"option(s) or deploy into a new state directory")
        session = cls(model_path, store, saved, dm, sha, threads)
        session._restore(state)
        if grew:
            session._commit(session.position)  # the grown head, committed before anything is learned
        return session

    @staticmethod
    def _grown(state: LoadedState, saved: Settings, capacity: int, names: int, where: str | Path
               ) -> tuple[LoadedState, Settings, bool]:
        """``state`` and its settings with ``capacity`` head rows (more than it has: zero rows added), and
        whether it grew."""
        have = saved.capacity or names
        Settings(**(asdict(saved) | {"capacity": capacity}))  # checks the value
        if capacity == have:
            return state, saved, False
        if capacity < have:
            raise BnnclError(f"{where}: --capacity {capacity} is smaller than the deployed head ({have} rows); "
                             f"a head can grow, not shrink")
        arrays, meta = grow_classes(state.arrays, state.meta, capacity)
        position = json.loads(json.dumps(state.position))
        position["settings"]["capacity"] = capacity
        return replace(state, arrays=arrays, meta=meta, position=position), replace(saved, capacity=capacity), True

    def _restore(self, state: LoadedState) -> None:
        if state.position.get("service") != SERVICE_VERSION:
            raise StateError(f"{self.store.directory}: not a bnncl learn state (no service record)")
        try:
            self.learner.load_state_dict(state.arrays, state.meta)
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.store.directory}: state does not fit this model/settings ({exc})") from None
        # The head at rest is quantize(cw). The saved copy is de-quantized, and quantizing it again
        # can move a code by one step; rebuilding it from cw gives exactly the uninterrupted head.
        if self.learner.consolidator is not None:
            self.engine.set_head(self.learner.consolidator.consolidated_head())
        self.position = json.loads(json.dumps(state.position))
        self.classes = list(self.position["classes"])
        self.generation = state.generation
        self.fell_back = state.fell_back

    def reload(self) -> None:
        """Drop what is in memory and load the committed state again."""
        self._restore(self.store.load(model_sha256=self.model_sha))

    # -- deployment -------------------------------------------------------------------------
    def _base_images(self, base: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
        from bnncl.service.folders import deployment_images

        images, names = deployment_images(self.model_sha, base, self.image_shape, str(self.model_path))
        what = f"--base {base}" if base is not None else "embedded base images"
        return images, self.label_indices(names, allow_new=False, what=what)

    def _deploy(self, base: str | Path | None) -> None:
        images, labels = self._base_images(base)
        self.learner.deploy_images(images, labels, 0)
        self.engine.mark_deployed()
        counts = np.bincount(labels, minlength=len(self.classes))
        self.position = {
            "service": SERVICE_VERSION,
            "experience": 0,
            "classes": list(self.classes),
            "settings": asdict(self.settings),
            "images_learned": 0,
            "base_images": int(len(labels)),
            "learned_per_class": [0] * len(self.classes),
            "base_per_class": [int(c) for c in counts[: len(self.classes)]],
            "last_files": [],
        }
        self._commit(self.position)

    # -- labels -----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.engine.num_classes)

    def label_indices(self, names: Sequence[str], *, allow_new: bool = True, what: str = "labels") -> np.ndarray:
        """Head rows of ``names`` (class names or their folder form); new names take free rows.

        Adds the new names to :attr:`classes` only in memory; they are committed with the next
        :meth:`learn`. :class:`HeadFullError` when they do not fit (nothing is added then)."""
        from bnncl.service.inbox import folder_name

        index = {n: i for i, n in enumerate(self.classes)}
        index.update({folder_name(n): i for i, n in enumerate(self.classes)})
        new = [n for n in dict.fromkeys(names) if n not in index]
        if new and not allow_new:
            raise InputError(f"{what}: unknown class name(s) {new[:5]}; expected among {self.classes}")
        if len(self.classes) + len(new) > self.capacity:
            raise HeadFullError(f"{what}: {len(new)} new class name(s) {new[:5]} do not fit: the head holds "
                                f"{self.capacity} classes and {len(self.classes)} are named")
        classes = self.classes + new
        index.update({n: len(self.classes) + i for i, n in enumerate(new)})
        self.classes = classes
        return np.array([index[n] for n in names], dtype=np.int64)

    def lookup(self, name: str) -> int | None:
        """Head row of a known class name (or its folder form), else None."""
        from bnncl.service.inbox import folder_name

        for i, n in enumerate(self.classes):
            if name in (n, folder_name(n)):
                return i
        return None

    # -- learning ---------------------------------------------------------------------------
    def learn(self, images: Any, labels: Sequence[str], files: Sequence[Mapping[str, Any]] = ()) -> int:
        """Learn one experience (images + class names) and commit it; returns the new generation.

        ``files`` (JSON-able records of the inputs) become ``position["last_files"]``. On any error
        the state on disk is unchanged and the session is rolled back to it."""
        x = check_images(images, self.image_shape)
        names = list(labels)
        if len(names) != len(x):
            raise InputError(f"labels: expected one label per image ({len(x)}), got {len(names)}")
        if not len(x):
            raise InputError("empty experience: no images to learn")
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise InputError(f"labels: expected non-empty class names, got {bad[0]!r}")
        before = list(self.classes)
        try:
            y = self.label_indices(names)
        except InputError:
            self.classes = before
            raise
        try:
            exp = int(self.position["experience"]) + 1
            latents = self.learner.extract(x)
            stats = self.learner.train_experience(latents, y, exp)
            self.last_report = self._report(latents, y, stats.seconds)
            pos = dict(self.position)
            per_class = list(pos["learned_per_class"]) + [0] * (len(self.classes) - len(pos["learned_per_class"]))
            base = list(pos["base_per_class"]) + [0] * (len(self.classes) - len(pos["base_per_class"]))
            for c, n in zip(*np.unique(y, return_counts=True)):
                per_class[int(c)] += int(n)
            pos.update(experience=exp, classes=list(self.classes), images_learned=int(pos["images_learned"]) + len(y),
                       learned_per_class=per_class, base_per_class=base, last_files=[dict(f) for f in files])
            self._commit(pos)
        except BaseException:
            self.classes = before
            if self.store.exists():
                self.reload()
            raise
        return self.generation

    def _report(self, latents: np.ndarray, y: np.ndarray, seconds: float) -> LearnReport:
        """How the learner now does on what it just learned and, where it keeps a replay buffer, on a sample
        of it (every k-th stored pattern, at most :data:`REPORT_SAMPLE`)."""
        new_acc = float(np.mean(self.learner.predict(latents) == y))
        held: tuple[int, float] | None = None
        if self.buffer is not None and len(self.buffer):
            idx = np.arange(0, len(self.buffer), max(1, -(-len(self.buffer) // REPORT_SAMPLE)))
            pred = self.learner.predict(self.buffer.latents()[idx])
            held = (len(idx), float(np.mean(pred == self.buffer.labels[idx])))
        return LearnReport(len(y), new_acc, held, seconds)

    def _commit(self, position: Mapping[str, Any]) -> None:
        arrays, meta = self.learner.state_dict()
        self.generation = self.store.save(arrays, meta, position=position, model_sha256=self.model_sha)
        self.position = json.loads(json.dumps(position))

    # -- inference --------------------------------------------------------------------------
    def predict(self, images: Any) -> list[tuple[str, float]]:
        """``(class name, score)`` per image: the best seen class and its softmax probability over
        the seen classes."""
        x = check_images(images, self.image_shape)
        if not len(x):
            return []
        latents = self.learner.extract(x)
        logits = self.learner.logits(latents)
        seen = np.array(sorted(self.learner.seen_classes), dtype=np.int64)
        z = logits[:, seen].astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        best = p.argmax(axis=1)
        return [(self.classes[int(seen[b])], float(p[i, b])) for i, b in enumerate(best)]

    # -- reporting --------------------------------------------------------------------------
    def deployment_summary(self) -> str:
        """What the deployment put in the learner, in words (``bnncl learn`` prints it)."""
        base = int(self.position.get("base_images", 0))
        if self.buffer is not None:
            return f"{len(self.buffer)} base patterns in the replay buffer"
        return f"{self.settings.strategy} initialised from {base} base images"

    def memory_bytes(self) -> dict[str, int]:
        mem = {k: int(v) for k, v in self.engine.memory_bytes().items()}
        if not self.learner.uses_engine_head:  # slda predicts with its own state ("strategy")
            mem["head"] = 0
        return mem | self.learner.memory_bytes()

    def __repr__(self) -> str:
        return (f"LearnerSession({self.model_path.name!r}, state {str(self.store.directory)!r}, generation "
                f"{self.generation}, {len(self.classes)} of {self.capacity} classes, "
                f"{int(self.position.get('images_learned', 0))} images learned)")
