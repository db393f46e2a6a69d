"""Latent replay buffer: a fixed-capacity store of LR-layer latents and labels, at 1, 8 or 32 bits.

Storage (one row per pattern, arrays sized to the patterns held, never above ``capacity``):

* ``bits=32``: float32, exact.
* ``bits=8``: uint8 codes with ONE affine map for the whole buffer,
  ``code = round((clip(x, lo, hi) - lo) * 255 / (hi - lo))``, ``x' = lo + code * (hi - lo) / 255``.
  ``(lo, hi)`` is ``value_range`` if given, else the min/max of the first batch added (fixed
  afterwards: later values outside it are clipped). ±1 latents with range (-1, 1) round-trip exactly.
* ``bits=1``: the signs, packed along the last axis (channels) with
  :func:`bnncl.device.bitpack.pack_signs` (bit 1 = -1); decoding gives ±1 (sign(0) = +1). Meant for
  ±1 latents (a binary LR layer); real latents are binarised on the way in.

Policies (the RNG is the buffer's own, seeded, and part of its state: NumPy's ``Generator``, or the portable
stream of :mod:`bnncl.cl.portable_rng` after :meth:`LatentReplayBuffer.set_rng`):

* ``class_balanced``: every class seen so far gets an equal share of ``capacity`` (water-filled:
  a class with fewer patterns than its share leaves the rest to the others). When a new class
  arrives, over-quota classes lose random patterns. Within a class the buffer is a reservoir
  sample: it stays a uniform random sample of all that class's patterns offered so far.
* ``random`` (AR1 style): after experience ``i`` (0-based ``experience_index``), ``capacity //
  (i + 1)`` random new patterns enter (free slots first), replacing random stored ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bnncl.cl.portable_rng import BUFFER_STREAM, make_rng, rng_from_state, rng_kind
from bnncl.device.bitpack import pack_signs, unpack_signs, words_for

POLICIES = ("class_balanced", "random")
BITS = (1, 8, 32)


class LatentReplayBuffer:
    """Fixed-capacity latent replay memory (see module docstring)."""

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        capacity: int = 1500,
        bits: int = 1,
        policy: str = "class_balanced",
        seed: int = 0,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if not self.latent_shape or any(s < 1 for s in self.latent_shape):
            raise ValueError(f"latent_shape must be non-empty positive dims, got {latent_shape}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if value_range is not None and not float(value_range[0]) < float(value_range[1]):
            raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range}")
        self.capacity = int(capacity)
        self.bits = int(bits)
        self.policy = policy
        self.seed = int(seed)
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self._rng = np.random.default_rng(seed)
        self._store = np.zeros((0,) + self._row_shape(), dtype=self._store_dtype())
        self._labels = np.zeros(0, dtype=np.int64)
        self._experience = np.zeros(0, dtype=np.int32)
        self._seen: dict[int, int] = {}

    def set_rng(self, kind: str, stream: int = BUFFER_STREAM) -> None:
        """Draw from ``kind`` (``numpy`` or ``portable``, :func:`bnncl.cl.portable_rng.make_rng`) seeded with
        ``seed`` from now on; nothing happens when the buffer already draws from that kind."""
        if rng_kind(self._rng) != kind:
            self._rng = make_rng(kind, self.seed, stream)

    # -- encoding ------------------------------------------------------------------------------
    def _row_shape(self) -> tuple[int, ...]:
        if self.bits == 1:
            return self.latent_shape[:-1] + (words_for(self.latent_shape[-1]),)
        return self.latent_shape

    def _store_dtype(self) -> np.dtype:
        return np.dtype({1: np.uint64, 8: np.uint8, 32: np.float32}[self.bits])

    def _encode(self, x: np.ndarray) -> np.ndarray:
        if self.bits == 32:
            return x.astype(np.float32, copy=True)
        if self.bits == 1:
            return pack_signs(x)
        if self.value_range is None:
            lo, hi = float(x.min()), float(x.max())
            self.value_range = (lo, hi if hi > lo else lo + 1.0)
        lo, hi = self.value_range
        codes = np.rint((np.clip(x.astype(np.float64), lo, hi) - lo) * (255.0 / (hi - lo)))
        return codes.astype(np.uint8)

    def _decode(self, stored: np.ndarray) -> np.ndarray:
        if self.bits == 32:
            return stored.astype(np.float32, copy=True)
        if self.bits == 1:
            return unpack_signs(stored, self.latent_shape[-1], dtype=np.float32)
        assert self.value_range is not None
        lo, hi = self.value_range
        return (lo + stored.astype(np.float64) * (hi - lo) / 255.0).astype(np.float32)

    # -- queries -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the stored patterns, ``(len,)`` int64 (a copy)."""
        return self._labels.copy()

    @property
    def experience_indices(self) -> np.ndarray:
        """Experience each stored pattern came from, ``(len,)`` int32 (a copy)."""
        return self._experience.copy()

    def latents(self) -> np.ndarray:
        """All stored latents decoded to float32 ``(len, *latent_shape)`` (±1 for ``bits=1``)."""
        return self._decode(self._store)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded latents and labels of the stored patterns at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(f"indices must lie in [0, {len(self)}), got [{idx.min()}, {idx.max()}]")
        return self._decode(self._store[idx]), self._labels[idx].copy()

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` distinct random stored patterns (buffer RNG): decoded latents and labels."""
        if not 0 <= n <= len(self):
            raise ValueError(f"n must be in [0, {len(self)}], got {n}")
        return self.get(self._rng.choice(len(self), size=n, replace=False))

    def class_counts(self) -> dict[int, int]:
        """Stored patterns per class, ``{class: count}`` sorted by class."""
        classes, counts = np.unique(self._labels, return_counts=True)
        return {int(c): int(n) for c, n in zip(classes, counts)}

    def classes(self) -> tuple[int, ...]:
        """Sorted classes with at least one stored pattern."""
        return tuple(int(c) for c in np.unique(self._labels))

    @property
    def latent_nbytes(self) -> int:
        """Bytes of the stored latent codes only."""
        return int(self._store.nbytes)

    @property
    def nbytes(self) -> int:
        """Real storage bytes: latent codes + labels (int64) + experience indices (int32)."""
        return int(self._store.nbytes + self._labels.nbytes + self._experience.nbytes)

    # -- updates -------------------------------------------------------------------------------
    def add(self, latents: np.ndarray, labels: np.ndarray, experience_index: int) -> None:
        """Offer an experience's patterns to the buffer; the policy decides what stays."""
        latents, labels = self._check_batch(latents, labels)
        if experience_index < 0:
            raise ValueError(f"experience_index must be >= 0, got {experience_index}")
        self._insert(latents, labels, experience_index)

    def _insert(self, latents: np.ndarray, labels: np.ndarray, experience_index: int) -> None:
        """:meth:`add` without its checks, for a caller that has made them (the learner): ``latents``
        finite ``(N, *latent_shape)``, ``labels`` int64 ``(N,)`` >= 0, ``experience_index`` >= 0."""
        if len(labels) == 0:
            return
        if self.policy == "class_balanced":
            self._add_balanced(latents, labels, int(experience_index))
        else:
            self._add_random(latents, labels, int(experience_index))
        for c, n in zip(*np.unique(labels, return_counts=True)):
            self._seen[int(c)] = self._seen.get(int(c), 0) + int(n)

    def _check_batch(self, latents: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        latents = np.asarray(latents)
        labels = np.asarray(labels)
        if latents.ndim != len(self.latent_shape) + 1 or latents.shape[1:] != self.latent_shape:
            want = ", ".join(map(str, self.latent_shape))
            raise ValueError(f"latents must have shape (N, {want}), got {latents.shape}")
        if labels.shape != (len(latents),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integer with shape ({len(latents)},), got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {labels.min()}")
        if not np.all(np.isfinite(latents)):
            raise ValueError("latents contain NaN or inf")
        return latents, labels.astype(np.int64)

    def _rebuild(
        self, keep_slots: np.ndarray, new_rows: np.ndarray, latents: np.ndarray, labels: np.ndarray, exp: int
    ) -> None:
        """Keep the stored rows ``keep_slots``, append the encoded ``latents[new_rows]``."""
        keep_slots = np.asarray(keep_slots, dtype=np.int64)
        new_rows = np.asarray(new_rows, dtype=np.int64)
        self._store = np.concatenate([self._store[keep_slots], self._encode(latents[new_rows])])
        self._labels = np.concatenate([self._labels[keep_slots], labels[new_rows]])
        self._experience = np.concatenate(
            [self._experience[keep_slots], np.full(len(new_rows), exp, dtype=np.int32)]
        )

    def _quotas(self, available: dict[int, int]) -> dict[int, int]:
        """Water-filling: equal shares of ``capacity``; a class with fewer patterns keeps them all
        and leaves the rest to the others; the last ``capacity % n`` slots go to the lowest classes."""
        quota: dict[int, int] = {}
        remaining = self.capacity
        by_size = sorted(available, key=lambda c: (available[c], c))
        for i, c in enumerate(by_size):
            if available[c] > remaining // (len(by_size) - i):
                break
            quota[c] = available[c]
            remaining -= available[c]
        rest = sorted(c for c in available if c not in quota)
        if rest:
            share, extra = divmod(remaining, len(rest))
            for i, c in enumerate(rest):
                quota[c] = share + (1 if i < extra else 0)
        return quota

    def _add_balanced(self, latents: np.ndarray, labels: np.ndarray, exp: int) -> None:
        new_by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        old_by_class = {int(c): np.flatnonzero(self._labels == c) for c in np.unique(self._labels)}
        classes = sorted(set(self._seen) | set(new_by_class) | set(old_by_class))
        available = {c: len(old_by_class.get(c, ())) + len(new_by_class.get(c, ())) for c in classes}
        quota = self._quotas(available)
        keep_slots: list[np.ndarray] = []
        new_rows: list[np.ndarray] = []
        for c in classes:
            old = old_by_class.get(c, np.zeros(0, dtype=np.int64))
            if len(old) > quota[c]:  # evict at random from an over-quota class
                old = np.sort(self._rng.choice(old, size=quota[c], replace=False))
            members: list[tuple[bool, int]] = [(False, int(s)) for s in old]
            seen = self._seen.get(c, 0)
            for j in self._rng.permutation(new_by_class.get(c, np.zeros(0, dtype=np.int64))):
                seen += 1
                if len(members) < quota[c]:
                    members.append((True, int(j)))
                elif quota[c] > 0 and self._rng.random() < quota[c] / seen:
                    members[int(self._rng.integers(len(members)))] = (True, int(j))
            keep_slots.append(np.array([i for is_new, i in members if not is_new], dtype=np.int64))
            new_rows.append(np.array([i for is_new, i in members if is_new], dtype=np.int64))
        self._rebuild(np.concatenate(keep_slots), np.concatenate(new_rows), latents, labels, exp)

    def _add_random(self, latents: np.ndarray, labels: np.ndarray, exp: int) -> None:
        free = self.capacity - len(self)
        take = min(len(labels), max(self.capacity // (exp + 1), free))
        chosen = self._rng.choice(len(labels), size=take, replace=False)
        n_replace = max(0, take - free)
        evict = self._rng.choice(len(self), size=n_replace, replace=False) if n_replace else np.zeros(0, np.int64)
        keep = np.setdiff1d(np.arange(len(self)), evict)
        self._rebuild(keep, chosen, latents, labels, exp)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: stored codes, labels, experience indices, seen counts; config + RNG state."""
        seen_classes = np.array(sorted(self._seen), dtype=np.int64)
        arrays = {
            "latents": self._store.copy(),
            "labels": self._labels.copy(),
            "experience": self._experience.copy(),
            "seen_classes": seen_classes,
            "seen_counts": np.array([self._seen[int(c)] for c in seen_classes], dtype=np.int64),
        }
        meta = {
            "kind": "latent_replay",
            "latent_shape": list(self.latent_shape),
            "capacity": self.capacity,
            "bits": self.bits,
            "policy": self.policy,
            "seed": self.seed,
            "value_range": None if self.value_range is None else list(self.value_range),
            "rng_state": self._rng.bit_generator.state,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> LatentReplayBuffer:
        """A buffer rebuilt from :meth:`state_dict` output."""
        buf = cls(
            tuple(meta["latent_shape"]),
            int(meta["capacity"]),
            int(meta["bits"]),
            str(meta["policy"]),
            int(meta["seed"]),
        )
        buf.load_state_dict(arrays, meta)
        return buf

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore contents and RNG state; the config in ``meta`` must match this buffer's."""
        for key in ("latent_shape", "bits"):
            if (tuple(meta[key]) if key == "latent_shape" else meta[key]) != getattr(self, key):
                raise ValueError(f"buffer state {key}={meta[key]} does not match this buffer's {getattr(self, key)}")
        missing = [k for k in ("latents", "labels", "experience", "seen_classes", "seen_counts") if k not in arrays]
        if missing:
            raise ValueError(f"buffer state is missing arrays {missing}")
        store = np.asarray(arrays["latents"])
        if store.shape[1:] != self._row_shape() or store.dtype != self._store_dtype():
            raise ValueError(
                f"buffer state latents {store.dtype} {store.shape} do not match "
                f"{self._store_dtype()} (N, {self._row_shape()})"
            )
        if len(store) > int(meta["capacity"]) or len(arrays["labels"]) != len(store):
            raise ValueError(
                f"buffer state holds {len(store)} latents and {len(arrays['labels'])} labels "
                f"for capacity {meta['capacity']}"
            )
        self.capacity = int(meta["capacity"])
        self.policy = str(meta["policy"])
        self.seed = int(meta["seed"])
        vr = meta.get("value_range")
        self.value_range = None if vr is None else (float(vr[0]), float(vr[1]))
        self._store = store.copy()
        self._labels = np.asarray(arrays["labels"], dtype=np.int64).copy()
        self._experience = np.asarray(arrays["experience"], dtype=np.int32).copy()
        self._seen = {int(c): int(n) for c, n in zip(arrays["seen_classes"], arrays["seen_counts"])}
        self._rng = rng_from_state(meta["rng_state"])

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.latent_shape))
        return (f"LatentReplayBuffer({len(self)}/{self.capacity} latents {shape} at {self.bits} bit, "
                f"{len(self.classes())} classes, {self.nbytes / 1e3:.1f} kB, {self.policy})")
