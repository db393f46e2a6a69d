"""Running libbnncl's test programs (tests/native): reading their output lines, and a bare-metal program under
qemu-system-arm with semihosting."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

QEMU_ARM = "qemu-system-arm"


def program_lines(text: str) -> dict[str, list[list[str]]]:
    """A test program's output: for each first word, the rest of each line it starts, in order."""
    out: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        head, *rest = line.split()
        out.setdefault(head, []).append(rest)
    return out


def run_semihosted(elf: Path, machine: str, cpu: str, log: Path, timeout: float, icount: bool = True,
                   cwd: Path | None = None) -> tuple[str, float]:
    """Runs ``elf`` under ``qemu-system-arm -M machine -cpu cpu`` (semihosting output to ``log``; with ``icount``,
    ``-icount shift=0``: one instruction per nanosecond) in ``cwd``; asserts qemu exited with status 0 and returns
    the program's output and the wall seconds of the run."""
    cmd = [QEMU_ARM, "-M", machine, "-cpu", cpu, "-nographic", "-monitor", "none", "-serial", "none"]
    cmd += ["-icount", "shift=0"] if icount else []
    cmd += ["-chardev", f"file,id=sh,path={log}", "-semihosting-config", "enable=on,target=native,chardev=sh",
            "-kernel", str(elf)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    text = log.read_text() if log.exists() else ""
    assert r.returncode == 0, f"qemu exit {r.returncode}:\n{r.stderr[-2000:]}\n{text[-2000:]}"
    return text, seconds
