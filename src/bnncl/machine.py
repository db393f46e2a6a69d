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
