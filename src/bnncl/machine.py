"""Facts about the machine a figure was measured on (recorded beside every benchmark and run)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpuinfo_field(key: str) -> str | None:
    """The first value of ``key`` (e.g. ``"model name"``, ``"cpu MHz"``) in /proc/cpuinfo, or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else the platform's machine string."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """CPU model, core count, Python version."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def _git(root: Path, *args: str) -> str | None:
    import subprocess

    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def source_commit() -> dict[str, object] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout bnncl runs from, or None (an installed wheel,
    or no git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    sha = _git(root, "rev-parse", "HEAD")
    if not sha:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": bool(status)}


def software_info() -> dict[str, object]:
    """What produced a result: bnncl's version and git commit (when run from a checkout), the versions of
    NumPy and PyTorch (None when not installed), and the kernel path of the C core."""
    from importlib import metadata

    import numpy as np

    import bnncl
    from bnncl.device import kernels

    try:
        torch_version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"bnncl": bnncl.__version__, "git": source_commit(), "numpy": np.__version__, "torch": torch_version,
            "kernel_path": kernels.active_path()}
