"""Continual-learning metrics and the JSON-able results of a run.

Definitions (``T`` experiences, evaluated after each, ``t = 0..T-1``; the base/deployment
experience counts as experience 0 when the stream has one):

* ``accuracy_all[t]``: accuracy on the whole test set (all classes, seen or not) after experience t.
* ``accuracy_seen[t]``: accuracy on the test patterns whose class was trained on in experiences
  ``0..t``. Predictions are always restricted to seen classes (an unseen class is never predicted).
* ``A[t, c]``: per-class accuracy (recall) of class c after experience t (NaN if c has no test pattern).
* ``final_accuracy = accuracy_all[T-1]``.
* ``average_accuracy = mean_t accuracy_all[t]`` (every evaluated experience, base included).
* ``forgetting``: for each class c first seen at experience ``s_c < T-1`` (i.e. seen before the
  last experience), ``f_c = max_{s_c <= t <= T-2} A[t, c] - A[T-1, c]``; ``forgetting`` is the mean of
  ``f_c`` over those classes (it can be negative: backward transfer), ``None`` when no class qualifies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return y_true, y_pred


def predict(logits: np.ndarray, allowed_classes: Sequence[int] | None = None) -> np.ndarray:
    """Argmax of ``logits`` ``(N, num_classes)``, restricted to ``allowed_classes`` if given."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, num_classes), got {logits.shape}")
    if allowed_classes is None:
        return logits.argmax(axis=1).astype(np.int64)
    allowed = np.asarray(sorted(set(int(c) for c in allowed_classes)), dtype=np.int64)
    if allowed.size == 0 or allowed.min() < 0 or allowed.max() >= logits.shape[1]:
        raise ValueError(f"allowed_classes must be non-empty and in [0, {logits.shape[1]}), got {allowed.tolist()}")
    return allowed[logits[:, allowed].argmax(axis=1)]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of equal entries (0.0 for empty input)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have equal shapes, got {y_true.shape} and {y_pred.shape}")
    return float(np.mean(y_true == y_pred)) if y_true.size else 0.0


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; row = true class, column = predicted class."""
    y_true, y_pred = _check_pair(y_true, y_pred, num_classes)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class, ``(num_classes,)`` float64, NaN for classes without test patterns."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def forgetting(per_class_history: np.ndarray, first_seen: dict[int, int]) -> tuple[float | None, dict[int, float]]:
    """Mean and per-class forgetting from ``A[t, c]`` and each class's first experience (module docstring)."""
    hist = np.asarray(per_class_history, dtype=np.float64)
    if hist.ndim != 2:
        raise ValueError(f"per_class_history must be (T, num_classes), got {hist.shape}")
    last = hist.shape[0] - 1
    per_class: dict[int, float] = {}
    for c, s in sorted(first_seen.items()):
        if not 0 <= c < hist.shape[1] or s >= last:
            continue
        window = hist[s:last, c]
        if np.all(np.isnan(window)) or np.isnan(hist[last, c]):
            continue
        per_class[int(c)] = float(np.nanmax(window) - hist[last, c])
    mean = float(np.mean(list(per_class.values()))) if per_class else None
    return mean, per_class


def nan_to_none(values: np.ndarray) -> list[float | None]:
    """Floats as a JSON-able list, NaN -> None."""
    return [None if np.isnan(v) else float(v) for v in values]


@dataclass
class ExperienceResult:
    """What happened in one experience and how the model scored right after it."""

    index: int
    classes: list[int]
    seen_classes: list[int]
    accuracy_all: float
    accuracy_seen: float
    per_class_accuracy: list[float | None]
    train_seconds: float
    extract_seconds: float = 0.0
    n_new: int = 0
    n_replay: int = 0
    mean_loss: float | None = None

    def __repr__(self) -> str:
        return (f"ExperienceResult(#{self.index}, classes {self.classes}, accuracy {self.accuracy_all:.3f} all / "
                f"{self.accuracy_seen:.3f} seen, {len(self.seen_classes)} classes seen, {self.train_seconds:.2f} s)")


@dataclass
class CLResults:
    """A run's results: per-experience records, final confusion matrix, summary metrics."""

    strategy: str
    num_classes: int
    experiences: list[ExperienceResult] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float | None:
        return self.experiences[-1].accuracy_all if self.experiences else None

    @property
    def average_accuracy(self) -> float | None:
        return float(np.mean([e.accuracy_all for e in self.experiences])) if self.experiences else None

    def _forgetting(self) -> tuple[float | None, dict[int, float]]:
        if not self.experiences:
            return None, {}
        hist = np.array([[np.nan if a is None else a for a in e.per_class_accuracy] for e in self.experiences])
        first: dict[int, int] = {}
        for e in self.experiences:
            for c in e.classes:
                first.setdefault(int(c), e.index)
        # Map experience indices to row positions (they coincide unless a run was resumed).
        rows = {e.index: i for i, e in enumerate(self.experiences)}
        return forgetting(hist, {c: rows[s] for c, s in first.items()})

    @property
    def forgetting(self) -> float | None:
        return self._forgetting()[0]

    @property
    def per_class_forgetting(self) -> dict[int, float]:
        return self._forgetting()[1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (summary metrics included)."""
        return {
            "strategy": self.strategy,
            "num_classes": self.num_classes,
            "config": self.config,
            "experiences": [asdict(e) for e in self.experiences],
            "final_accuracy": self.final_accuracy,
            "average_accuracy": self.average_accuracy,
            "forgetting": self.forgetting,
            "per_class_forgetting": {str(c): f for c, f in self.per_class_forgetting.items()},
            "confusion": self.confusion,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self) -> str:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.1f}%"

        return (f"CLResults({self.strategy}, {len(self.experiences)} experiences, final {pct(self.final_accuracy)}, "
                f"average {pct(self.average_accuracy)}, forgetting {pct(self.forgetting)})")
