"""CWR* and CWR+ head consolidation (Maltoni & Lomonaco 2019) on NumPy arrays.

:class:`CWRStar` keeps consolidated weights ``cw`` ``(num_classes, D)`` float32 and per-class
pattern counters ``past`` ``(num_classes,)``. Per experience:

1. :meth:`~CWRStar.begin_experience` -> a head of zeros with ``cw`` copied into the rows of the
   present classes (new classes plus the classes in the replay buffer); the engine trains it.
2. :meth:`~CWRStar.end_experience` with the trained head: ``avg`` is ONE scalar, the mean of all
   weights in the trained rows of the present classes (as in the reference ar1-pytorch code);
   for each present class ``w' = w[c] - avg``; if ``past[c] > 0``: ``k = sqrt(past[c] / cur[c])``
   and ``cw[c] = (cw[c] * k + w') / (k + 1)``, else ``cw[c] = w'``; then ``past[c] += cur[c]``.
   A present class with ``cur[c] == 0`` saw no pattern, so its ``cw``/``past`` stay unchanged.
3. :meth:`~CWRStar.consolidated_head` -> ``cw`` for inference.

:class:`CWR` is plain CWR+ (Maltoni & Lomonaco 2019, §CWR+): the head starts from zeros (no copy
of ``cw``) and ``cw[c] = w[c] - avg`` overwrites, with no count weighting (``past`` is still kept).

``max_k`` (default None: the paper's rule) caps the merge weight ``k`` of a class seen before: with
latent replay, the trained row of an old class already started from ``cw`` and saw the class's replayed
patterns, so the count ratio weighs the past twice and keeps old rows where they were while the new
classes' rows are taken whole (docs/design.md §1.6).

:class:`FeatureStandardizer`: per-feature ``(x - shift) / scale`` of the pooled features that a head-only
CWR* head sees, with statistics fixed once (at deployment or at the first experience learned), so the
consolidated rows keep meaning the same thing.

State for safetensors: :meth:`~CWRStar.state_dict` -> ``(arrays, meta)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _classes(name: str, classes: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    arr = np.asarray(classes, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name}: classes must lie in [0, {num_classes}), got {sorted(set(arr.tolist()))}")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{name}: repeated classes {arr.tolist()}")
    return np.sort(arr)


class CWRStar:
    """CWR* consolidated head (see module docstring)."""

    kind = "cwr_star"

    def __init__(self, num_classes: int, dim: int, max_k: float | None = None) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        if max_k is not None and not (np.isfinite(max_k) and max_k >= 0):
            raise ValueError(f"max_k must be None or a number >= 0, got {max_k!r}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.max_k = None if max_k is None else float(max_k)
        self.cw = np.zeros((self.num_classes, self.dim), dtype=np.float32)
        self.past = np.zeros(self.num_classes, dtype=np.int64)

    # -- consolidation -------------------------------------------------------------------------
    def begin_experience(self, present_classes: Sequence[int]) -> np.ndarray:
        """Head to train: zeros, with ``cw`` copied into the present classes' rows."""
        present = _classes("present_classes", present_classes, self.num_classes)
        head = np.zeros_like(self.cw)
        head[present] = self.cw[present]
        return head

    def end_experience(
        self, trained_head: np.ndarray, present_classes: Sequence[int], cur_counts: np.ndarray | Mapping[int, int]
    ) -> None:
        """Consolidate the present classes' trained rows into ``cw`` (``cur_counts``: patterns per class)."""
        present = _classes("present_classes", present_classes, self.num_classes)
        w = self._check_head("trained_head", trained_head)
        cur = self._counts(cur_counts)
        if present.size == 0:
            return
        avg = float(w[present].astype(np.float64).mean())
        for c in present:
            if cur[c] <= 0:
                continue
            w_prime = w[c].astype(np.float64) - avg
            self.cw[c] = self._merge(int(c), w_prime, int(cur[c])).astype(np.float32)
            self.past[c] += cur[c]

    def _merge(self, c: int, w_prime: np.ndarray, cur: int) -> np.ndarray:
        if self.past[c] == 0:
            return w_prime
        k = np.sqrt(self.past[c] / cur)
        if self.max_k is not None:
            k = min(k, self.max_k)
        return (self.cw[c].astype(np.float64) * k + w_prime) / (k + 1.0)

    def align_rows(self, new_classes: Sequence[int], old_classes: Sequence[int]) -> None:
        """Weight aligning (Zhao et al. 2020): scale the ``cw`` rows of ``new_classes`` so their mean L2 norm
        is that of the rows of ``old_classes``; nothing happens when either is empty or a norm is zero."""
        new = _classes("new_classes", new_classes, self.num_classes)
        old = _classes("old_classes", old_classes, self.num_classes)
        if not new.size or not old.size:
            return
        norm_new = float(np.linalg.norm(self.cw[new].astype(np.float64), axis=1).mean())
        norm_old = float(np.linalg.norm(self.cw[old].astype(np.float64), axis=1).mean())
        if norm_new > 0 and norm_old > 0:
            self.cw[new] = (self.cw[new].astype(np.float64) * (norm_old / norm_new)).astype(np.float32)

    def consolidated_head(self) -> np.ndarray:
        """A copy of ``cw`` (the inference head)."""
        return self.cw.copy()

    def init_from_head(self, head: np.ndarray, classes: Sequence[int], counts: np.ndarray | Mapping[int, int]) -> None:
        """Seed ``cw``/``past`` from a pretrained head: rows of ``classes`` and their training counts.

        Used at deployment: the host-pretrained head's base-class rows become ``cw`` as they are (no
        mean shift; on standardized features, :meth:`FeatureStandardizer.head_rows` of them) and
        ``past[c]`` is the number of base patterns the host trained class ``c`` on.
        """
        cls = _classes("classes", classes, self.num_classes)
        w = self._check_head("head", head)
        cnt = self._counts(counts, "counts")
        if np.any(cnt[cls] <= 0):
            raise ValueError(f"counts must be > 0 for every class in classes, got {cnt[cls].tolist()}")
        self.cw[cls] = w[cls]
        self.past[cls] = cnt[cls]

    # -- validation ----------------------------------------------------------------------------
    def _check_head(self, name: str, head: np.ndarray) -> np.ndarray:
        head = np.asarray(head)
        if head.shape != self.cw.shape:
            raise ValueError(f"{name} must have shape {self.cw.shape}, got {head.shape}")
        if not np.all(np.isfinite(head)):
            raise ValueError(f"{name} contains NaN or inf")
        return head.astype(np.float32, copy=False)

    def _counts(self, counts: np.ndarray | Mapping[int, int], name: str = "cur_counts") -> np.ndarray:
        if isinstance(counts, Mapping):
            arr = np.zeros(self.num_classes, dtype=np.int64)
            for c, n in counts.items():
                if not 0 <= int(c) < self.num_classes:
                    raise ValueError(f"{name}: class {c} not in [0, {self.num_classes})")
                arr[int(c)] = int(n)
        else:
            arr = np.asarray(counts)
            if arr.shape != (self.num_classes,):
                raise ValueError(f"{name} must have shape ({self.num_classes},), got {arr.shape}")
            arr = arr.astype(np.int64)
        if np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0")
        return arr

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``({"cw", "past"} arrays, JSON-able meta)`` for safetensors."""
        meta = {"kind": self.kind, "num_classes": self.num_classes, "dim": self.dim}
        return {"cw": self.cw.copy(), "past": self.past.copy()}, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Restore from :meth:`state_dict` output (shapes and kind must match)."""
        if meta is not None and meta.get("kind", self.kind) != self.kind:
            raise ValueError(f"state kind {meta.get('kind')!r} does not match {self.kind!r}")
        for key in ("cw", "past"):
            if key not in arrays:
                raise ValueError(f"state is missing array {key!r}")
        cw, past = np.asarray(arrays["cw"]), np.asarray(arrays["past"])
        if cw.shape != self.cw.shape or past.shape != self.past.shape:
            raise ValueError(
                f"state shapes cw {cw.shape}, past {past.shape} do not match {self.cw.shape}, {self.past.shape}"
            )
        self.cw = cw.astype(np.float32).copy()
        self.past = past.astype(np.int64).copy()


class FeatureStandardizer:
    """``(x - shift) / scale`` per feature, the statistics fixed by :meth:`fit` (once) and kept in the state.

    The consolidated rows of CWR* are linear in the features the head sees; statistics that kept moving
    would change what every stored row means, so they are taken once: from the base features at deployment,
    or from the first experience learned. A feature that does not vary there keeps scale 1.
    """

    kind = "standardizer"

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.shift = np.zeros(self.dim, dtype=np.float32)
        self.scale = np.ones(self.dim, dtype=np.float32)
        self.fitted = False

    @property
    def nbytes(self) -> int:
        return int(self.shift.nbytes + self.scale.nbytes)

    def fit(self, features: np.ndarray) -> None:
        """Take the statistics of ``features`` ``(N, dim)`` (N >= 1); ValueError if already fitted."""
        x = np.asarray(features, dtype=np.float64)
        if self.fitted:
            raise ValueError("the standardizer is fitted once (its statistics are fixed)")
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) < 1:
            raise ValueError(f"features must be (N >= 1, {self.dim}), got {x.shape}")
        std = x.std(axis=0)
        self.shift = x.mean(axis=0).astype(np.float32)
        self.scale = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        self.fitted = True

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """The standardized ``features`` (float32); unchanged before :meth:`fit`."""
        x = np.asarray(features, dtype=np.float32)
        if not self.fitted:
            return x
        return ((x - self.shift) / self.scale).astype(np.float32, copy=False)

    def head_rows(self, head: np.ndarray) -> np.ndarray:
        """Rows ``w`` of a head trained on the raw features, for the standardized ones: ``w * scale`` gives the
        same scores up to ``w . shift``, a per-class constant a bias-free head cannot hold (it is dropped)."""
        return (np.asarray(head, dtype=np.float32) * self.scale).astype(np.float32)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"shift": self.shift.copy(), "scale": self.scale.copy()}, {"kind": self.kind, "dim": self.dim,
                                                                          "fitted": self.fitted}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        if meta is not None and meta.get("kind", self.kind) != self.kind:
            raise ValueError(f"state kind {meta.get('kind')!r} does not match {self.kind!r}")
        for key in ("shift", "scale"):
            if key not in arrays:
                raise ValueError(f"state is missing array {key!r}")
            if np.asarray(arrays[key]).shape != (self.dim,):
                raise ValueError(f"state {key} shape {np.asarray(arrays[key]).shape} does not match ({self.dim},)")
        scale = np.asarray(arrays["scale"], dtype=np.float32)
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("state scale must be finite and > 0")
        self.shift = np.asarray(arrays["shift"], dtype=np.float32).copy()
        self.scale = scale.copy()
        self.fitted = bool((meta or {}).get("fitted", True))


class CWR(CWRStar):
    """Plain CWR+: zero-initialised head, mean-shifted rows overwrite ``cw`` (no count weighting)."""

    kind = "cwr"

    def begin_experience(self, present_classes: Sequence[int]) -> np.ndarray:
        """Head to train: all zeros (``present_classes`` is only validated)."""
        _classes("present_classes", present_classes, self.num_classes)
        return np.zeros_like(self.cw)

    def _merge(self, c: int, w_prime: np.ndarray, cur: int) -> np.ndarray:
        return w_prime
