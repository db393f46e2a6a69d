"""A random stream defined to the bit, shared with libbnncl (``libbnncl/src/cwr_learn.c``).

NumPy's ``Generator`` cannot be reproduced in C (its bounded integers, shuffles and ``choice`` are its own
algorithms), so a learner that must agree with the C library draws from this stream instead
(``LearnerConfig(rng="portable")``). It is O'Neill's PCG32 (``pcg32_random_r``: a 64-bit LCG, output XSH-RR
64/32) with these draws, each defined here and in C once:

* ``next32``: ``old = state; state = old * 6364136223846793005 + inc (mod 2^64)``;
  ``x = ((old >> 18) ^ old) >> 27`` (low 32 bits), ``r = old >> 59``, output ``rotr32(x, r)``;
* seeding ``(seed, stream)``: ``state = 0; inc = 2 stream + 1; next32; state += seed; next32``
  (``pcg32_srandom_r``; ``seed`` taken mod 2^64);
* ``bounded(n)``, ``1 <= n < 2^32``: Lemire's multiply-shift with rejection: ``m = next32 * n`` (64 bits),
  ``l = m mod 2^32``; while ``l < (2^32 - n) mod n``: draw again; the value is ``m >> 32`` (uniform in
  ``[0, n)``);
* ``random()``: ``(next32 >> 5) * 2^26 + (next32 >> 6)`` divided by ``2^53`` (the first draw is the high
  part), a double in ``[0, 1)``;
* ``choice(a, size, replace=False)`` (``a`` an int n or an array of n items): a partial Fisher-Yates shuffle
  from the front of a copy of ``a`` (``arange(n)``): for ``i = 0 .. min(size, n - 1) - 1``:
  ``j = i + bounded(n - i)``, swap items ``i`` and ``j``; the first ``size`` items;
* ``permutation(a)``: ``choice(a, n, replace=False)`` (n - 1 draws);
* ``integers(n)``: ``bounded(n)``.

:class:`PortableRNG` offers that subset of ``np.random.Generator`` (what :mod:`bnncl.cl.learner` and
:mod:`bnncl.cl.replay` call) and a JSON-safe ``bit_generator.state``; :func:`rng_from_state` rebuilds either
kind of generator from its saved state. The raw outputs are computed in blocks with NumPy (jump-ahead of the
LCG), the shuffles in a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

NAME = "bnncl_pcg32"
"""``bit_generator.state["bit_generator"]`` of the portable stream."""
MULT = 6364136223846793005
MASK64 = (1 << 64) - 1
LEARNER_STREAM = 0
"""PCG32 stream (``inc = 2 stream + 1``) of the learner's draws (minibatch order, epoch subsets)."""
BUFFER_STREAM = 1
"""PCG32 stream of the replay buffer's draws (evictions, reservoir sampling)."""
RNG_KINDS = ("numpy", "portable")
_BLOCK = 1 << 14


def _advance_coeffs(k: int) -> tuple[int, int]:
    """``(A, C)`` with ``state_k = A state_0 + C inc (mod 2^64)`` after ``k`` steps of the LCG."""
    acc_a, acc_c, a, c = 1, 0, MULT, 1
    while k:
        if k & 1:
            acc_a, acc_c = (acc_a * a) & MASK64, (acc_c * a + c) & MASK64
        c = ((a + 1) * c) & MASK64
        a = (a * a) & MASK64
        k >>= 1
    return acc_a, acc_c


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """``A[k] = MULT^k``, ``G[k] = sum_{j<k} MULT^j`` (mod 2^64) for k < _BLOCK, as uint64 (NumPy wraps)."""
    a = np.full(_BLOCK, MULT, dtype=np.uint64)
    a[0] = 1
    pw = np.multiply.accumulate(a)
    g = np.zeros(_BLOCK, dtype=np.uint64)
    g[1:] = np.cumsum(pw[:-1], dtype=np.uint64)
    return pw, g


def _outputs(old: np.ndarray) -> np.ndarray:
    """PCG32's XSH-RR output of the states before each step, as uint64 values < 2^32."""
    x = (((old >> np.uint64(18)) ^ old) >> np.uint64(27)) & np.uint64(0xFFFFFFFF)
    r = old >> np.uint64(59)
    return ((x >> r) | (x << ((np.uint64(32) - r) & np.uint64(31)))) & np.uint64(0xFFFFFFFF)


class _State:
    """``bit_generator`` of :class:`PortableRNG`: its ``state`` dict, as NumPy's bit generators have one."""

    def __init__(self, owner: PortableRNG) -> None:
        self._owner = owner

    @property
    def state(self) -> dict[str, Any]:
        return {"bit_generator": NAME, "state": {"state": self._owner._state, "inc": self._owner._inc}}

    @state.setter
    def state(self, value: Mapping[str, Any]) -> None:
        if value.get("bit_generator") != NAME:
            raise ValueError(f"not a {NAME} state: {value.get('bit_generator')!r}")
        inner = value["state"]
        state, inc = int(inner["state"]), int(inner["inc"])
        if not (0 <= state <= MASK64 and 0 <= inc <= MASK64 and inc & 1):
            raise ValueError(f"{NAME} state out of range: state {state}, inc {inc} (odd)")
        self._owner._state, self._owner._inc = state, inc


class PortableRNG:
    """PCG32 with the draws of the module docstring; ``seed`` >= 0, ``stream`` selects the sequence."""

    def __init__(self, seed: int = 0, stream: int = LEARNER_STREAM) -> None:
        self._state, self._inc = 0, ((int(stream) << 1) | 1) & MASK64
        self._raw(1)
        self._state = (self._state + int(seed)) & MASK64
        self._raw(1)
        self.bit_generator = _State(self)

    # -- raw 32-bit outputs ----------------------------------------------------------------------
    def _raw(self, k: int) -> np.ndarray:
        """The next ``k`` outputs (uint64 < 2^32); the state moves ``k`` steps."""
        out = np.empty(k, dtype=np.uint64)
        pw, g = _tables()
        done = 0
        while done < k:
            m = min(_BLOCK, k - done)
            s0, inc = np.uint64(self._state), np.uint64(self._inc)
            out[done:done + m] = _outputs(pw[:m] * s0 + g[:m] * inc)
            a, c = _advance_coeffs(m)
            self._state = (a * self._state + c * self._inc) & MASK64
            done += m
        return out

    def _skip(self, k: int) -> None:
        """Move the state back by ``k`` steps (``k`` outputs drawn ahead and not used)."""
        a, c = _advance_coeffs((1 << 64) - k)
        self._state = (a * self._state + c * self._inc) & MASK64

    def next32(self) -> int:
        """One raw 32-bit output."""
        return int(self._raw(1)[0])

    def _bounded(self, bounds: np.ndarray) -> np.ndarray:
        """``bounded(n)`` for each ``n`` of ``bounds`` (uint64, 1 <= n < 2^32) in order."""
        bounds = np.asarray(bounds, dtype=np.uint64)
        out = np.empty(len(bounds), dtype=np.int64)
        d = 0
        while d < len(bounds):
            b = bounds[d:]
            raw = self._raw(len(b))
            m = raw * b
            low = m & np.uint64(0xFFFFFFFF)
            reject = low < ((np.uint64(1 << 32) - b) % b)
            bad = np.flatnonzero(reject)
            f = int(bad[0]) if len(bad) else len(b)
            out[d:d + f] = (m[:f] >> np.uint64(32)).astype(np.int64)
            if f < len(b):  # the draw at f takes the next output instead: the rest is drawn again
                self._skip(len(b) - f - 1)
            d += f
        return out

    # -- the Generator subset -----------------------------------------------------------------------
    def integers(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (``1 <= n < 2^32``)."""
        n = int(n)
        if not 1 <= n < (1 << 32):
            raise ValueError(f"integers: n must be in [1, 2^32), got {n}")
        return int(self._bounded(np.array([n], dtype=np.uint64))[0])

    def random(self) -> float:
        """A uniform double in ``[0, 1)`` with 53 random bits."""
        hi, lo = (int(v) for v in self._raw(2))
        return ((hi >> 5) * 67108864 + (lo >> 6)) / 9007199254740992.0

    def choice(self, a: int | np.ndarray, size: int, replace: bool = False) -> np.ndarray:
        """``size`` distinct items of ``a`` (an int n: ``arange(n)``) by a partial Fisher-Yates shuffle."""
        if replace:
            raise ValueError("PortableRNG.choice draws without replacement only")
        items = np.arange(int(a), dtype=np.int64) if np.ndim(a) == 0 else np.array(a, copy=True)
        n, size = len(items), int(size)
        if not 0 <= size <= n:
            raise ValueError(f"choice: size must be in [0, {n}], got {size}")
        steps = min(size, n - 1)
        if steps > 0:
            js = (self._bounded(np.arange(n, n - steps, -1, dtype=np.uint64))
                  + np.arange(steps, dtype=np.int64)).tolist()
            order = list(range(n))
            for i, j in enumerate(js):
                order[i], order[j] = order[j], order[i]
            items = items[np.asarray(order[:size], dtype=np.int64)]
        return items[:size]

    def permutation(self, a: int | np.ndarray) -> np.ndarray:
        """A shuffled ``arange(a)`` (int) or shuffled copy of the array ``a``."""
        n = int(a) if np.ndim(a) == 0 else len(a)
        return self.choice(a, n)

    def __repr__(self) -> str:
        return f"PortableRNG({NAME}, state {self._state:#x}, inc {self._inc:#x})"


def make_rng(kind: str, seed: int, stream: int = LEARNER_STREAM) -> np.random.Generator | PortableRNG:
    """The generator of ``kind``: ``numpy`` (``np.random.default_rng(seed)``) or ``portable``."""
    if kind == "numpy":
        return np.random.default_rng(seed)
    if kind == "portable":
        return PortableRNG(seed, stream)
    raise ValueError(f"rng must be one of {RNG_KINDS}, got {kind!r}")


def rng_kind(rng: Any) -> str:
    """``portable`` for a :class:`PortableRNG`, else ``numpy``."""
    return "portable" if isinstance(rng, PortableRNG) else "numpy"


def rng_from_state(state: Mapping[str, Any]) -> np.random.Generator | PortableRNG:
    """A generator restored from its ``bit_generator.state`` (NumPy's or the portable stream's)."""
    rng: np.random.Generator | PortableRNG
    rng = PortableRNG() if state.get("bit_generator") == NAME else np.random.default_rng()
    rng.bit_generator.state = state
    return rng
