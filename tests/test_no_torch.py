"""bnncl.device, bnncl.cl and bnncl.service must import without torch (the device install has no torch)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bnncl
from no_torch import BLOCK_TORCH

SCRIPT = BLOCK_TORCH + textwrap.dedent(
    """
    import importlib, pkgutil, sys
    imported = []
    for pkg_name in ("bnncl.device", "bnncl.cl", "bnncl.service"):
        pkg = importlib.import_module(pkg_name)
        imported.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if any(part.startswith("_") for part in info.name.split(".")[2:]):
                continue
            importlib.import_module(info.name)
            imported.append(info.name)
    assert "torch" not in sys.modules
    print("\\n".join(imported))
    """
)


def test_device_and_cl_import_without_torch():
    src = str(Path(bnncl.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:] or proc.stderr
    modules = set(proc.stdout.split())
    assert {"bnncl.device.bitpack", "bnncl.cl.cwr", "bnncl.cl.learner"} <= modules
