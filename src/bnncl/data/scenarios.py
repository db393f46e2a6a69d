"""Continual-learning scenarios: seeded streams of experiences over any labelled dataset.

A :class:`Stream` is a sequence of :class:`Experience` objects. An experience holds *indices* into
the dataset (never copies of the images), their labels, ``classes_in_experience`` and an optional
deterministic shift (see :mod:`bnncl.data.shifts`) applied when its images are gathered.

* :func:`nc_stream` -- new classes: an optional base experience, then experiences of new classes.
* :func:`ni_stream` -- new instances: every experience holds all classes (disjoint, stratified
  instance splits), each under its own shift.
* :func:`nic_stream` -- new instances and classes: each class is cut into disjoint parts; the
  experiences are a seeded sequence of (class, part) units, so classes reappear with new instances.
* :func:`fewshot_stream` -- a base experience, then new classes with only ``shots`` examples each.
* :func:`domain_stream` -- new instances by domain: one experience per domain (e.g. a CORe50 session).
* :func:`unit_nic_stream` -- new instances and classes over given (class, domain) units (CORe50-NIC).

Same arguments and seed -> the same stream, on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnncl.data.shifts import SHIFTS, apply_shift, default_ni_shifts

ShiftSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True, eq=False)
class Experience:
    """One step of a stream: dataset rows ``indices`` with their ``labels``.

    ``transform``/``transform_params`` name a deterministic shift applied by :meth:`images`.
    ``is_base`` marks the base experience that the device ships with (pretrained on the host).
    """

    index: int
    indices: np.ndarray
    labels: np.ndarray
    classes_in_experience: tuple[int, ...]
    transform: str | None = None
    transform_params: dict[str, Any] = field(default_factory=dict)
    is_base: bool = False

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, images: np.ndarray) -> np.ndarray:
        """This experience's images gathered from the dataset's ``images`` with the shift applied."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if len(self.indices) and int(self.indices.max()) >= len(images):
            raise ValueError(
                f"images has {len(images)} rows but experience {self.index} indexes row {int(self.indices.max())}"
            )
        batch = images[self.indices]
        if self.transform in (None, "none"):
            return batch
        return apply_shift(batch, self.transform, self.transform_params)

    def __repr__(self) -> str:
        shift = f", shift {self.transform}" if self.transform not in (None, "none") else ""
        base = ", base" if self.is_base else ""
        return (f"Experience(#{self.index}, {len(self)} patterns, "
                f"classes {list(self.classes_in_experience)}{shift}{base})")


@dataclass(frozen=True, eq=False)
class Stream:
    """An ordered sequence of experiences over a dataset of ``num_classes`` classes."""

    name: str
    experiences: tuple[Experience, ...]
    num_classes: int
    seed: int

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    def seen_classes(self, upto: int) -> tuple[int, ...]:
        """Sorted classes in experiences ``0..upto`` (inclusive)."""
        seen: set[int] = set()
        for exp in self.experiences[: upto + 1]:
            seen.update(exp.classes_in_experience)
        return tuple(sorted(seen))

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, {len(self)} experiences, {self.num_classes} classes, seed {self.seed})"


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got min {labels.min()}")
    return labels.astype(np.int64, copy=False)


def _check_classes(name: str, classes: Sequence[int], present: set[int]) -> list[int]:
    out = [int(c) for c in classes]
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated classes: {out}")
    missing = [c for c in out if c not in present]
    if missing:
        raise ValueError(f"{name} names classes {missing} that have no labelled example")
    return out


def _num_classes(labels: np.ndarray) -> int:
    return int(labels.max()) + 1


def _make_experience(
    index: int, idx: np.ndarray, labels: np.ndarray, rng: np.random.Generator, shift: ShiftSpec | None = None,
    is_base: bool = False,
) -> Experience:
    idx = np.sort(idx.astype(np.int64))
    idx = idx[rng.permutation(len(idx))]
    name, params = shift if shift is not None else (None, {})
    return Experience(
        index=index,
        indices=idx,
        labels=labels[idx],
        classes_in_experience=tuple(int(c) for c in np.unique(labels[idx])),
        transform=name,
        transform_params=dict(params),
        is_base=is_base,
    )


def _normalise_shifts(shifts: Sequence[ShiftSpec | str] | None, n: int) -> list[ShiftSpec]:
    if shifts is None:
        return default_ni_shifts(n)
    out: list[ShiftSpec] = []
    for s in shifts:
        name, params = (s, {}) if isinstance(s, str) else (s[0], dict(s[1]))
        if name not in SHIFTS:
            raise ValueError(f"shifts: unknown shift {name!r}; expected one of {sorted(SHIFTS)}")
        out.append((name, params))
    if len(out) != n:
        raise ValueError(f"shifts has {len(out)} entries, expected one per experience ({n})")
    return out


def nc_stream(
    labels: np.ndarray,
    *,
    base_classes: Sequence[int] = (),
    classes_per_experience: int = 1,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    shots: int | None = None,
    first_experience_classes: int | None = None,
) -> Stream:
    """New-classes stream: a base experience of ``base_classes`` (if any), then new classes.

    ``class_order`` lists the non-base classes in the order they arrive (default: the remaining
    classes in ascending order, so ``fmnist-b5`` is ``nc_stream(labels, base_classes=range(5))``);
    they are grouped ``classes_per_experience`` at a time (the last group may be smaller), the first
    group ``first_experience_classes`` (default ``classes_per_experience``; a trained first
    experience, unlike the base one). ``shots`` (few-shot) keeps that many examples of each new
    class, drawn at random with ``seed``; the base experience keeps all of its examples.
    ``seed`` shuffles the order of patterns inside each experience.
    """
    labels = _check_labels(labels)
    present = set(np.unique(labels).tolist())
    base = _check_classes("base_classes", base_classes, present)
    if class_order is None:
        order = sorted(present - set(base))
    else:
        order = _check_classes("class_order", class_order, present)
        overlap = sorted(set(order) & set(base))
        if overlap:
            raise ValueError(f"class_order repeats base classes {overlap}")
    if classes_per_experience < 1:
        raise ValueError(f"classes_per_experience must be >= 1, got {classes_per_experience}")
    first = classes_per_experience if first_experience_classes is None else first_experience_classes
    if first < 1:
        raise ValueError(f"first_experience_classes must be >= 1, got {first}")
    if not base and not order:
        raise ValueError("nc_stream needs at least one class in base_classes or class_order")
    rng = np.random.default_rng(seed)
    rows = {c: np.flatnonzero(labels == c) for c in order}
    if shots is not None:
        rows = _draw_shots(rows, shots, rng)
    exps: list[Experience] = []
    if base:
        exps.append(_make_experience(0, np.flatnonzero(np.isin(labels, base)), labels, rng, is_base=True))
    groups = [order[:first]]
    groups += [order[i : i + classes_per_experience] for i in range(first, len(order), classes_per_experience)]
    for group in groups:
        if group:
            exps.append(_make_experience(len(exps), np.concatenate([rows[c] for c in group]), labels, rng))
    return Stream("nc", tuple(exps), _num_classes(labels), seed)


def _draw_shots(rows: dict[int, np.ndarray], shots: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """``shots`` random rows of each class (in ascending class order, so the draw depends only on ``rng``)."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
    scarce = {c: len(r) for c, r in rows.items() if len(r) < shots}
    if scarce:
        raise ValueError(f"shots={shots} but classes {sorted(scarce)} have only {sorted(scarce.values())} examples")
    return {c: np.sort(rng.choice(rows[c], int(shots), replace=False)) for c in sorted(rows)}


def fewshot_stream(
    labels: np.ndarray, *, base_classes: Sequence[int], shots: int, classes_per_experience: int = 1, seed: int = 0
) -> Stream:
    """Few-shot new classes: the base experience of ``base_classes`` (all of their examples), then the
    other classes ``classes_per_experience`` at a time with ``shots`` random examples each (drawn with
    ``seed``). :func:`nc_stream` with ``shots``."""
    return nc_stream(labels, base_classes=base_classes, classes_per_experience=classes_per_experience, seed=seed,
                     shots=shots)


def _split_per_class(
    labels: np.ndarray, classes: Sequence[int], parts: int, rng: np.random.Generator
) -> dict[int, list[np.ndarray]]:
    """Each class's rows, shuffled with ``rng`` and cut into ``parts`` near-equal disjoint parts."""
    out: dict[int, list[np.ndarray]] = {}
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if len(rows) < parts:
            raise ValueError(f"class {c} has {len(rows)} examples, fewer than the {parts} parts asked for")
        out[c] = np.array_split(rows[rng.permutation(len(rows))], parts)
    return out


def ni_stream(
    labels: np.ndarray,
    *,
    n_experiences: int = 8,
    seed: int = 0,
    shifts: Sequence[ShiftSpec | str] | None = None,
) -> Stream:
    """New-instances stream: all classes in every experience, disjoint stratified instance splits.

    ``shifts`` gives one ``(name, params)`` (or a bare name) per experience; default
    :func:`bnncl.data.shifts.default_ni_shifts` (experience 0 unshifted).
    """
    labels = _check_labels(labels)
    if n_experiences < 1:
        raise ValueError(f"n_experiences must be >= 1, got {n_experiences}")
    shift_list = _normalise_shifts(shifts, n_experiences)
    rng = np.random.default_rng(seed)
    classes = sorted(np.unique(labels).tolist())
    parts = _split_per_class(labels, classes, n_experiences, rng)
    exps = [
        _make_experience(i, np.concatenate([parts[c][i] for c in classes]), labels, rng, shift_list[i])
        for i in range(n_experiences)
    ]
    return Stream("ni", tuple(exps), _num_classes(labels), seed)


def nic_stream(
    labels: np.ndarray,
    *,
    base_classes: Sequence[int] = (),
    parts_per_class: int = 2,
    units_per_experience: int = 1,
    seed: int = 0,
    shifts: Sequence[ShiftSpec | str] | None = None,
) -> Stream:
    """New-instances-and-classes stream (CORe50-NIC style).

    Every class is cut into ``parts_per_class`` disjoint parts. The base experience (if
    ``base_classes``) holds part 0 of each base class; all remaining (class, part) units are
    shuffled with ``seed`` (a class's parts stay in order) and grouped ``units_per_experience`` at a
    time. ``shifts`` (optional) gives one shift per experience, base included.
    """
    labels = _check_labels(labels)
    if parts_per_class < 1 or units_per_experience < 1:
        raise ValueError(
            f"parts_per_class and units_per_experience must be >= 1, got {parts_per_class}, {units_per_experience}"
        )
    present = set(np.unique(labels).tolist())
    base = _check_classes("base_classes", base_classes, present)
    rng = np.random.default_rng(seed)
    classes = sorted(present)
    parts = _split_per_class(labels, classes, parts_per_class, rng)
    units = [(c, p) for c in classes for p in range(parts_per_class) if not (c in base and p == 0)]
    # Shuffle unit order, then restore each class's part order so part p comes before part p + 1.
    perm = rng.permutation(len(units))
    slots = [units[i][0] for i in perm]
    next_part = {c: (1 if c in base else 0) for c in classes}
    ordered: list[tuple[int, int]] = []
    for c in slots:
        ordered.append((c, next_part[c]))
        next_part[c] += 1
    groups = [ordered[i : i + units_per_experience] for i in range(0, len(ordered), units_per_experience)]
    n_exp = len(groups) + (1 if base else 0)
    shift_list = _normalise_shifts(shifts, n_exp) if shifts is not None else [("none", {})] * n_exp
    exps: list[Experience] = []
    if base:
        idx = np.concatenate([parts[c][0] for c in base])
        exps.append(_make_experience(0, idx, labels, rng, shift_list[0], is_base=True))
    for g in groups:
        idx = np.concatenate([parts[c][p] for c, p in g])
        exps.append(_make_experience(len(exps), idx, labels, rng, shift_list[len(exps)]))
    return Stream("nic", tuple(exps), _num_classes(labels), seed)


def _check_groups(name: str, groups: np.ndarray, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"{name} must be integers, one per label ({n}), got {groups.dtype} {groups.shape}")
    return groups.astype(np.int64, copy=False)


def domain_stream(
    labels: np.ndarray, domains: np.ndarray, *, order: Sequence[int] | None = None, seed: int = 0
) -> Stream:
    """New instances by domain: one experience per value of ``domains`` (each row's domain, e.g. its
    CORe50 session), with every class that domain holds.

    ``order`` lists the domains in the order they arrive (default: a permutation drawn with ``seed``);
    ``seed`` also shuffles the order of patterns inside each experience.
    """
    labels = _check_labels(labels)
    domains = _check_groups("domains", domains, len(labels))
    present = sorted(np.unique(domains).tolist())
    rng = np.random.default_rng(seed)
    if order is None:
        seq = [present[i] for i in rng.permutation(len(present))]
    else:
        seq = [int(d) for d in order]
        if sorted(seq) != present:
            raise ValueError(f"order must list each domain once, {present}, got {seq}")
    exps = [_make_experience(i, np.flatnonzero(domains == d), labels, rng) for i, d in enumerate(seq)]
    return Stream("ni", tuple(exps), _num_classes(labels), seed)


def unit_nic_stream(
    labels: np.ndarray,
    units: np.ndarray,
    *,
    first_classes: int = 10,
    units_per_experience: int = 5,
    seed: int = 0,
) -> Stream:
    """New instances and classes over (class, unit) pairs, ``units`` giving each row's unit (e.g. its
    CORe50 session), in the style of CORe50 NICv2.

    With ``seed``, the (class, unit) pairs are shuffled and ``first_classes`` classes drawn (all of
    them when fewer are present); the first experience holds one pair of each of those classes (its
    first in the shuffled order), then the remaining pairs follow in the shuffled order,
    ``units_per_experience`` per experience. On CORe50's 50 objects x 8 training sessions that is
    1 + 390 / 5 = 79 experiences.
    """
    labels = _check_labels(labels)
    units = _check_groups("units", units, len(labels))
    if first_classes < 1 or units_per_experience < 1:
        raise ValueError(
            f"first_classes and units_per_experience must be >= 1, got {first_classes}, {units_per_experience}"
        )
    if units.min() < 0:
        raise ValueError(f"units must be >= 0, got min {units.min()}")
    width = int(units.max()) + 1
    key = labels * width + units  # one integer per (class, unit) pair
    rng = np.random.default_rng(seed)
    pairs = np.unique(key)
    pairs = pairs[rng.permutation(len(pairs))]
    classes = np.unique(labels)
    first = set(rng.permutation(classes)[:first_classes].tolist())
    head: list[int] = []
    rest: list[int] = []
    for k in pairs.tolist():
        c = k // width
        if c in first:
            first.discard(c)
            head.append(k)
        else:
            rest.append(k)
    groups = [head] + [rest[i : i + units_per_experience] for i in range(0, len(rest), units_per_experience)]
    exps = [_make_experience(i, np.flatnonzero(np.isin(key, g)), labels, rng) for i, g in enumerate(groups)]
    return Stream("nic", tuple(exps), _num_classes(labels), seed)
