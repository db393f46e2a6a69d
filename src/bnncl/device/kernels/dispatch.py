"""Which kernel path runs: ``avx512``, ``avx2``, ``scalar`` (C core) or ``numpy`` (oracle).

Priority: :func:`set_kernel_path` / :func:`kernel_path` > ``BNNCL_KERNEL`` environment
variable (read at every call) > the best path this CPU supports.  Without the C core every
call uses NumPy, with a one-time warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from bnncl.device.kernels import native
from bnncl.errors import BnnclError

ENV_VAR = "BNNCL_KERNEL"
ALL_PATHS = ("avx512", "avx2", "neon", "scalar", "numpy")

_forced: str | None = None
_warned = False


class KernelPathError(BnnclError, ValueError):
    """An unknown kernel path, or one this CPU (or this build) cannot run."""


_ordered: dict[tuple[str, ...], tuple[str, ...]] = {}


def available_paths() -> list[str]:
    """Paths this machine can run, best first; ``numpy`` is always available."""
    native_paths = tuple(native.supported_paths())
    best = _ordered.get(native_paths)
    if best is None:  # (every kernel call asks: the ordering is computed once per set of C paths)
        best = _ordered[native_paths] = tuple(p for p in ALL_PATHS if p in native_paths) + ("numpy",)
    return list(best)


def _validate(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in ALL_PATHS:
        raise KernelPathError(f"{source}: expected one of {', '.join(ALL_PATHS)}, got {name!r}")
    if name not in available_paths():
        why = "the C core is not built" if not native.supported_paths() else "this CPU lacks it"
        raise KernelPathError(
            f"{source}: kernel path {name!r} is not available ({why}); available: {', '.join(available_paths())}"
        )
    return name


def set_kernel_path(name: str | None) -> None:
    """Force a kernel path for every later call (``None`` restores automatic selection)."""
    global _forced
    _forced = None if name is None else _validate(name, "set_kernel_path")


@contextmanager
def kernel_path(name: str | None) -> Iterator[str]:
    """Context manager forcing a kernel path inside the block; yields the active path."""
    global _forced
    previous = _forced
    set_kernel_path(name)
    try:
        yield active_path()
    finally:
        _forced = previous


def active_path() -> str:
    """The path the next kernel call will use."""
    global _warned
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env.lower() != "auto":
        return _validate(env, ENV_VAR)
    best = available_paths()[0]
    if best == "numpy" and not _warned:
        _warned = True
        warnings.warn("bnncl C core not built: binary kernels fall back to NumPy (slow)", RuntimeWarning, stacklevel=3)
    return best
