"""Streaming linear discriminant analysis (SLDA) on the frozen features: a head that learns in closed
form, with no backward pass and no replay (docs/design.md §1.6; Hayes & Kanan, CVPRW 2020).

State: a running mean per class ``mu[c]``, its count ``n[c]`` and ONE covariance ``Sigma`` shared by
all classes (the pooled within-class covariance of every feature seen so far). Prediction is the LDA
rule with shrinkage ``eps`` toward the identity::

    Lambda = ((1 - eps) * Sigma + eps * I)^-1,   W = mu @ Lambda
    b[c] = -0.5 * (mu[c] . W[c] - tr(Lambda Sigma) / (n[c] + n0))
    logits = x @ W.T + b

``eps`` is the ``shrinkage`` setting, raised while some class has few features. A class mean from a
handful of features is noisy, and the LDA metric amplifies that noise along the directions of small
variance; moving the metric toward the Euclidean one while a class is that rare keeps it in check. How
far to move depends on the backbone and the data (on the shipped CIFAR-10 features the best value for
five images per class is about 0.3, on the Fashion-MNIST ones about 0.01), so the learner measures it on
what it learns: **leave-one-out selection**. Whenever an update brings a class to at most
:data:`LOO_MAX_COUNT` features (and at least 2), each of that update's features of the class is scored
against every seen class with its own class mean computed without it, for every value of
:data:`SHRINKAGE_GRID`, and the right answers are counted per value (``loo_correct``, kept in the state
and summed over the updates). While the rarest seen class has at most :data:`LOO_MAX_COUNT` features,
``eps`` is the value with the most right answers (ties go to the value nearest, on a log scale, to the
fallback rule below); with no count yet (a class seen once) or once every class is larger, it is the
fallback rule ``0.05 * 5 / (n_min + 5)`` (:data:`RARE_CLASS_SHRINKAGE`, :data:`RARE_CLASS_COUNT`),
``n_min`` the count of the rarest class seen, which fades as the class grows (for 300 features it is
below 1e-3). The setting is a floor in every case.

The last term of ``b`` corrects the bias of a class estimated from few features: a mean of ``n`` samples lies
farther from the centre than the true mean (``E[mu^ Lambda mu^] = mu Lambda mu + tr(Lambda Sigma) / n``), so
without it a class shown once or five times loses to classes seen thousands of times. ``n0``
(:data:`SMALL_SAMPLE_PRIOR`, chosen on validation splits of the few-shot protocols) tempers it for n = 1;
for a class of hundreds of features it vanishes.

``W`` and ``b`` are solved once (Cholesky factor, two triangular solves) after each update and cached;
prediction is a matrix product.

The statistics are exact and order-free: a batch of a class is merged into the running mean and the within-class
scatter with the parallel-variance formula (Chan et al. 1979), so learning an experience at once, sample by
sample or split across a crash and a resume gives the same state (up to the float rounding of the stored
arrays). Hayes & Kanan's sample update approximates the same quantity; this one is exact for any batch.
(The leave-one-out counts do depend on how rare classes arrive in batches, as the choice they make should.)

What is stored (and counted as the head's memory): ``mu`` ``(C, D)`` float32, ``n`` ``(C,)`` int64, the
upper triangle of ``Sigma`` packed row by row (``D (D + 1) / 2`` values) at ``cov_bits`` = 32 (float32) or
16 (float16), and the leave-one-out counts (``len(SHRINKAGE_GRID)`` int64). The cached ``W``/``b`` are
derived and not saved. Every update starts from the stored values and rounds back to them, so a state
reloaded from disk predicts and learns exactly as the one in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

COV_BITS = (32, 16)
_COV_DTYPE = {32: np.float32, 16: np.float16}
DEFAULT_SHRINKAGE = 1e-4
SMALL_SAMPLE_PRIOR = 2.0
"""``n0`` of the small-sample bias correction (module docstring)."""
RARE_CLASS_SHRINKAGE = 0.05
RARE_CLASS_COUNT = 5
"""The fallback rule of the shrinkage: ``RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (n_min + RARE_CLASS_COUNT)``,
``n_min`` the count of the rarest class seen (module docstring)."""
SHRINKAGE_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 4e-2, 8e-2, 0.15, 0.3, 0.5)
"""The shrinkage values the leave-one-out selection compares (module docstring)."""
LOO_MAX_COUNT = 100
"""Classes of at most this many features are counted by, and keep choosing with, the leave-one-out selection."""


def check_shrinkage(eps: float) -> float:
    """``eps`` as a float in [0, 1); ValueError otherwise."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"shrinkage must be a number in [0, 1), got {eps!r}")
    return float(eps)


def check_cov_bits(bits: int) -> int:
    """``bits`` if it is a supported covariance storage width (:data:`COV_BITS`); ValueError otherwise."""
    if isinstance(bits, bool) or bits not in COV_BITS:
        raise ValueError(f"cov_bits must be one of {COV_BITS}, got {bits!r}")
    return int(bits)


class StreamingLDA:
    """Class means + shared covariance of ``dim``-feature vectors over ``num_classes`` rows (module docstring)."""

    kind = "slda"

    def __init__(self, num_classes: int, dim: int, shrinkage: float = DEFAULT_SHRINKAGE, cov_bits: int = 32) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.shrinkage = check_shrinkage(shrinkage)
        self.cov_bits = check_cov_bits(cov_bits)
        self.means = np.zeros((self.num_classes, self.dim), dtype=np.float32)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self._iu = np.triu_indices(self.dim)
        self.cov_packed = np.zeros(len(self._iu[0]), dtype=_COV_DTYPE[self.cov_bits])
        self.loo_correct = np.zeros(len(SHRINKAGE_GRID), dtype=np.int64)
        """Right answers of the leave-one-out test per :data:`SHRINKAGE_GRID` value (module docstring)."""
        self._w: np.ndarray | None = None
        self._b: np.ndarray | None = None

    # -- the state as numbers --------------------------------------------------------------
    @property
    def total(self) -> int:
        """Features seen so far (all classes)."""
        return int(self.counts.sum())

    def covariance(self) -> np.ndarray:
        """The shared covariance ``Sigma`` as a full symmetric float64 ``(D, D)`` matrix."""
        full = np.zeros((self.dim, self.dim), dtype=np.float64)
        full[self._iu] = self.cov_packed
        return full + np.triu(full, 1).T

    @property
    def nbytes(self) -> int:
        """Bytes of the stored state (means, counts, packed covariance, leave-one-out counts); the cached solve
        is not counted."""
        return int(self.means.nbytes + self.counts.nbytes + self.cov_packed.nbytes + self.loo_correct.nbytes)

    # -- learning --------------------------------------------------------------------------
    def update(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Merge ``features`` ``(N, D)`` with integer ``labels`` ``(N,)`` into the means and covariance."""
        x, y = self._check(features, labels)
        if not len(y):
            return
        n_old = self.total
        scatter = self.covariance() * n_old  # within-class scatter so far
        means = self.means.astype(np.float64)
        counts = self.counts.copy()
        for c in np.unique(y):
            xc = x[y == c]
            nb = len(xc)
            mb = xc.mean(axis=0)
            centred = xc - mb
            scatter += centred.T @ centred
            na = int(counts[c])
            if na:
                delta = mb - means[c]
                scatter += np.outer(delta, delta) * (na * nb / (na + nb))
                means[c] += delta * (nb / (na + nb))
            else:
                means[c] = mb
            counts[c] = na + nb
        total = int(counts.sum())
        self.means = means.astype(np.float32)
        self.counts = counts
        self.cov_packed = (scatter / total)[self._iu].astype(_COV_DTYPE[self.cov_bits])
        self._w = self._b = None
        self._count_leave_one_out(x, y)

    def _count_leave_one_out(self, x: np.ndarray, y: np.ndarray) -> None:
        """Adds to :attr:`loo_correct` the right answers of the features ``x`` (float64, just merged) of the classes
        that now hold 2 .. :data:`LOO_MAX_COUNT` features, each scored with its class mean taken without it."""
        rare = (self.counts >= 2) & (self.counts <= LOO_MAX_COUNT)
        keep = rare[y]
        if not keep.any():
            return
        x, y = x[keep], y[keep]
        seen = np.flatnonzero(self.counts > 0)
        lam, vec = np.linalg.eigh(self.covariance())
        lam = np.clip(lam, 0.0, None)
        m = self.means[seen].astype(np.float64) @ vec  # class means in the eigenbasis of Sigma
        xs = x @ vec
        n = self.counts[seen].astype(np.float64)
        own = np.searchsorted(seen, y)  # column of each feature's class among the seen ones
        n_own = self.counts[y].astype(np.float64)
        m_loo = (n_own[:, None] * m[own] - xs) / (n_own - 1.0)[:, None]  # own mean without the feature
        rows = np.arange(len(y))
        for j, eps in enumerate(SHRINKAGE_GRID):
            d = (1.0 - eps) * lam + eps  # eigenvalues of (1 - eps) Sigma + eps I
            spread = float(np.sum(lam / d))
            scores = xs @ (m / d).T - 0.5 * np.sum(m * m / d, axis=1) + 0.5 * spread / (n + SMALL_SAMPLE_PRIOR)
            scores[rows, own] = (np.sum(xs * m_loo / d, axis=1) - 0.5 * np.sum(m_loo * m_loo / d, axis=1)
                                 + 0.5 * spread / (n_own - 1.0 + SMALL_SAMPLE_PRIOR))
            self.loo_correct[j] += int(np.count_nonzero(scores[rows, own] >= scores.max(axis=1)))

    def _check(self, features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf")
        y = np.asarray(labels)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integer with shape ({len(x)},), got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{y.min()}, {y.max()}]")
        return x.astype(np.float64), y.astype(np.int64)

    # -- prediction ------------------------------------------------------------------------
    @property
    def effective_shrinkage(self) -> float:
        """The shrinkage the classifier uses: the setting, raised while the rarest seen class is small, by the
        leave-one-out selection or the fallback rule (module docstring)."""
        seen = self.counts[self.counts > 0]
        if not seen.size:
            return self.shrinkage
        n_min = int(seen.min())
        rule = RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (n_min + RARE_CLASS_COUNT)
        if n_min <= LOO_MAX_COUNT and self.loo_correct.any():
            grid = np.asarray(SHRINKAGE_GRID)
            best = np.flatnonzero(self.loo_correct == self.loo_correct.max())
            rule = float(grid[best[np.argmin(np.abs(np.log(grid[best]) - np.log(rule)))]])
        return max(self.shrinkage, rule)

    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """The cached ``(W (C, D), b (C,))`` float64 of the LDA rule, solved again after an update."""
        if self._w is None or self._b is None:
            eps = self.effective_shrinkage
            cov = self.covariance()
            a = (1.0 - eps) * cov + eps * np.eye(self.dim)
            try:
                chol = np.linalg.cholesky(a)
            except np.linalg.LinAlgError:  # singular without shrinkage: fall back to the pseudo-inverse
                w = self.means.astype(np.float64) @ np.linalg.pinv(a, hermitian=True)
            else:
                z = np.linalg.solve(chol, self.means.astype(np.float64).T)  # L z = mu^T
                w = np.linalg.solve(chol.T, z).T  # L^T W^T = z
            spread = float(np.trace(np.linalg.lstsq(a, cov, rcond=None)[0]))  # tr(Lambda Sigma)
            self._w = w
            self._b = -0.5 * (np.einsum("cd,cd->c", self.means.astype(np.float64), w)
                              - spread / (self.counts + SMALL_SAMPLE_PRIOR))
        return self._w, self._b

    def logits(self, features: np.ndarray) -> np.ndarray:
        """LDA scores ``(N, C)`` float32 of ``features`` ``(N, D)``; each row is computed on its own, in a fixed
        order, so a score does not depend on the batch it came in."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {x.shape}")
        w, b = self.classifier()
        return (np.einsum("nd,cd->nc", x, w, optimize=False) + b).astype(np.float32)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``({"means", "counts", "cov_packed", "loo_correct"}, meta)`` for safetensors + JSON."""
        meta = {"kind": self.kind, "num_classes": self.num_classes, "dim": self.dim, "shrinkage": self.shrinkage,
                "cov_bits": self.cov_bits}
        return {"means": self.means.copy(), "counts": self.counts.copy(), "cov_packed": self.cov_packed.copy(),
                "loo_correct": self.loo_correct.copy()}, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Restore from :meth:`state_dict` output (shapes, kind and storage width must match); a state saved
        before the leave-one-out counts existed loads with them at zero."""
        if meta is not None:
            if meta.get("kind", self.kind) != self.kind:
                raise ValueError(f"state kind {meta.get('kind')!r} does not match {self.kind!r}")
            if int(meta.get("cov_bits", self.cov_bits)) != self.cov_bits:
                raise ValueError(f"state cov_bits {meta.get('cov_bits')} does not match {self.cov_bits}")
        for key in ("means", "counts", "cov_packed"):
            if key not in arrays:
                raise ValueError(f"state is missing array {key!r}")
        means, counts, cov = (np.asarray(arrays[k]) for k in ("means", "counts", "cov_packed"))
        if means.shape != self.means.shape or counts.shape != self.counts.shape or cov.shape != self.cov_packed.shape:
            raise ValueError(f"state shapes means {means.shape}, counts {counts.shape}, cov {cov.shape} do not match "
                             f"{self.means.shape}, {self.counts.shape}, {self.cov_packed.shape}")
        if np.any(counts < 0) or not (np.all(np.isfinite(means)) and np.all(np.isfinite(cov))):
            raise ValueError("state holds negative counts or non-finite means/covariance")
        self.means = means.astype(np.float32).copy()
        self.counts = counts.astype(np.int64).copy()
        self.cov_packed = cov.astype(_COV_DTYPE[self.cov_bits]).copy()
        loo = np.asarray(arrays.get("loo_correct", np.zeros(len(SHRINKAGE_GRID), np.int64)))
        if loo.shape != (len(SHRINKAGE_GRID),) or np.any(loo < 0):
            raise ValueError(f"state loo_correct must be {len(SHRINKAGE_GRID)} counts >= 0, got shape {loo.shape}")
        self.loo_correct = loo.astype(np.int64).copy()
        self._w = self._b = None

    def __repr__(self) -> str:
        seen = int(np.count_nonzero(self.counts))
        return (f"StreamingLDA({seen} of {self.num_classes} classes, D={self.dim}, {self.total} features, "
                f"shrinkage {self.shrinkage}, covariance at {self.cov_bits} bits, {self.nbytes} B)")
