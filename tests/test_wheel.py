"""The device wheel: built from the tracked sources, it stays under 5 MB, carries the stripped C core,
the default device model and the embedded data, and no host (.safetensors) model."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WHEEL_LIMIT = 5_000_000  # bytes


@pytest.mark.slow
def test_device_wheel_is_small_and_complete(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (the wheel is built from the tracked files)")
    missing = [m for m in ("setuptools", "wheel") if importlib.util.find_spec(m) is None]
    if missing or shutil.which("gcc") is None:
        pytest.skip(f"building the wheel needs {', '.join(missing) or 'gcc'} (make setup installs them)")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    src = tmp_path / "src-tree"
    for name in files:
        if name and not name.startswith("bnncl-models/") and (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(out), str(src)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("bnncl-*.whl")
    size = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        core = [n for n in names if "_bnncl_core" in n]
        assert len(core) == 1
        # stripped: no symbol table beside the dynamic one
        assert b".symtab" not in z.read(core[0])
    assert not [n for n in names if n.endswith(".safetensors")]
    assert "bnncl/assets/models/fmnist-b5.bnn" in names
    assert sum(n.startswith("bnncl/assets/data/fmnist-subset/") and n.endswith(".xz") for n in names) == 4
    assert size <= WHEEL_LIMIT, f"device wheel {size:,} bytes > {WHEEL_LIMIT:,}"
