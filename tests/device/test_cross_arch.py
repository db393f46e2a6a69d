"""The C core on AArch64: built with the cross compiler, run under qemu-user, bit-identical to x86-64.

``tests/native/crosscheck.c`` (+ ``cross_tail.c``) runs every entry point of the C core on fixed
pseudo-random inputs, on each kernel path its build supports, and prints a hash per (case, path).
This test builds it twice with the package's compile flags (``setup.py``'s ``BASE_FLAGS`` + OpenMP):
for this machine (scalar / AVX2 / AVX-512 paths, which the rest of the suite checks bit-exact
against the NumPy oracle) and for AArch64 (scalar / NEON, run under ``qemu-aarch64``), and requires
one hash per case across all paths of both builds.  Needs ``gcc-aarch64-linux-gnu`` and
``qemu-user`` (Debian packages; ``.ci/run`` installs them); skipped without them.
"""

from __future__ import annotations

import ast
import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "src" / "bnncl" / "device" / "csrc"
NATIVE = ROOT / "tests" / "native"
CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
SYSROOT = Path("/usr/aarch64-linux-gnu")


def _base_flags() -> list[str]:
    """``BASE_FLAGS`` of setup.py (the flags the package is built with), read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BASE_FLAGS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py: BASE_FLAGS not found")


def _build(cc: str, out: Path) -> None:
    sources = sorted(str(p) for p in CSRC.glob("*.c")) + sorted(str(p) for p in NATIVE.glob("*.c"))
    cmd = [cc, *_base_flags(), "-fopenmp", "-DBNNCL_NO_PYTHON", f"-I{CSRC}", f"-I{NATIVE}", *sources,
           "-lm", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{cc} failed:\n{r.stderr[-4000:]}"


def _run(cmd: list[str]) -> dict[str, dict[str, str]]:
    env = os.environ | {"OMP_WAIT_POLICY": "passive"}  # idle OpenMP workers must not spin on a shared machine
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-2000:]}"
    cases: dict[str, dict[str, str]] = {}
    for line in r.stdout.splitlines():
        if line.startswith("#"):
            continue
        name, path, *result = line.split()
        cases.setdefault(name, {})[path] = " ".join(result)
    return cases


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    host_cc = shutil.which("gcc") or shutil.which("cc")
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if platform.machine() != "x86_64" or host_cc is None:
        pytest.skip("the cross-architecture check runs on an x86-64 host with gcc")
    if missing or not SYSROOT.is_dir():
        pytest.skip(f"{', '.join(missing) or SYSROOT} not found (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    tmp = tmp_path_factory.mktemp("crosscheck")
    native, arm = tmp / "crosscheck-x86_64", tmp / "crosscheck-aarch64"
    with ThreadPoolExecutor(2) as pool:  # the two builds take most of the time
        list(pool.map(lambda a: _build(*a), [(host_cc, native), (CROSS_CC, arm)]))
    return _run([str(native)]), _run([QEMU, "-L", str(SYSROOT), str(arm)])


def test_both_builds_run_every_case_on_their_kernel_paths(outputs):
    x86, arm = outputs
    assert sorted(x86) == sorted(arm) and len(x86) > 100
    assert {p for c in arm.values() for p in c} == {"scalar", "neon"}
    assert {"scalar", "avx2"} <= {p for c in x86.values() for p in c}
    # cases named *_rejected pass bad arguments on purpose: every path must refuse them
    wrong = [f"{name} {path}: {res}" for out in (x86, arm) for name, c in out.items()
             for path, res in c.items() if res.startswith("rc=") != name.endswith("_rejected")]
    assert not wrong, wrong


def test_aarch64_scalar_and_neon_equal_x86_64_bit_for_bit(outputs):
    x86, arm = outputs
    differ = {}
    for name in x86:
        results = {f"x86_64 {p}": r for p, r in x86[name].items()} | {f"aarch64 {p}": r for p, r in arm[name].items()}
        if len(set(results.values())) != 1:
            differ[name] = results
    assert not differ, differ
