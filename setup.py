"""Build of the bnncl C core (``bnncl.device._bnncl_core``).

Portable flags only (no -march=native): the ISA variants are selected per function with
``__attribute__((target(...)))`` and dispatched at run time.  OpenMP is used when the compiler
accepts ``-fopenmp``; otherwise the core builds single-threaded.  The extension is optional:
without a compiler the package installs and the kernels fall back to NumPy.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("src/bnncl/device/csrc")
BASE_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-strict-aliasing", "-Wno-unknown-pragmas"]


def _accepts(compiler, flag: str) -> bool:
    """Whether the C compiler compiles and links a tiny OpenMP program with ``flag``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        try:
            objs = compiler.compile([str(src)], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=[flag])
        except Exception:  # noqa: BLE001 - any failure means "no OpenMP"
            return False
    return True


class BuildCore(build_ext):
    """``build_ext`` that adds OpenMP flags when the compiler supports them."""

    def build_extensions(self) -> None:
        use_omp = os.environ.get("BNNCL_NO_OPENMP") is None and self.compiler.compiler_type == "unix"
        if use_omp and _accepts(self.compiler, "-fopenmp"):
            for ext in self.extensions:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        if _strip(self.compiler):
            for ext in self.extensions:
                ext.extra_link_args.append("-s")
        super().build_extensions()


def _strip(compiler) -> bool:
    """Strip the core at link time (2.9 MB with the debug info Python's CFLAGS add, ~0.4 MB without; the
    exported entry points that ctypes binds stay in the dynamic symbol table). gcc/clang on Linux only
    (Apple's ld calls ``-s`` obsolete); ``BNNCL_NO_STRIP=1`` keeps the symbols for debugging."""
    return (compiler.compiler_type == "unix" and sys.platform.startswith("linux")
            and os.environ.get("BNNCL_NO_STRIP") is None)


core = Extension(
    "bnncl.device._bnncl_core",
    sources=sorted(str(p) for p in CSRC.glob("*.c")),
    depends=sorted(str(p) for p in CSRC.glob("*.h")),
    include_dirs=[str(CSRC)],
    extra_compile_args=list(BASE_FLAGS) if sys.platform != "win32" else [],
    optional=True,
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildCore})
