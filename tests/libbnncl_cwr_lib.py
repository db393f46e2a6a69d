"""libbnncl's sources as one shared object for the CWR* tests (ctypes): the build (the flags of libbnncl/Makefile:
-O3 -ffp-contract=off), the typed entry points of the CWR* section of ``bnncl.h`` and its structs."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "libbnncl"
CSRC = ROOT / "src" / "bnncl" / "device" / "csrc"
CORE = ("core", "kern_scalar", "kern_avx2", "kern_avx512", "kern_neon", "epilogue", "im2col_u8", "linear",
        "tail_elementwise")
GLUE = ("cwr", "cwr_learn", "cwr_rng")  # the CWR* glue only: it needs nothing of src/bnncl.c
P = ctypes.c_void_p
I64 = ctypes.c_int64
I32 = ctypes.c_int32
SZ = ctypes.c_size_t


class Rng(ctypes.Structure):
    _fields_ = [("state", ctypes.c_uint64), ("inc", ctypes.c_uint64)]


class Config(ctypes.Structure):
    """bnncl_cwr_config"""

    _fields_ = [("classes", I32), ("features", I32), ("qf", I32), ("qb", I32), ("lr", ctypes.c_float),
                ("minibatch", I32), ("epochs", I32), ("new_per_class", I32), ("mixing", I32), ("standardize", I32),
                ("max_k", ctypes.c_double), ("capacity", I32), ("lr_bits", I32)]


class State(ctypes.Structure):
    """bnncl_cwr_state"""

    _fields_ = [("cw", P), ("past", P), ("shift", P), ("scale", P), ("seen", P), ("store", P), ("labels", P),
                ("experience", P), ("count", I64), ("lo", ctypes.c_double), ("hi", ctypes.c_double),
                ("has_range", I32), ("fitted", I32), ("rng", Rng), ("buffer_rng", Rng)]


def build(out_dir: Path) -> ctypes.CDLL:
    """Compile libbnncl (the C core + the CWR* glue) into ``out_dir/libbnncl_cwr.so`` and type its CWR* entry points."""
    so = Path(out_dir) / "libbnncl_cwr.so"
    srcs = [str(CSRC / f"{n}.c") for n in CORE] + [str(LIB / "src" / f"{n}.c") for n in GLUE]
    subprocess.run(["gcc", "-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-shared", "-DBNNCL_NO_PYTHON",
                    f"-I{LIB / 'include'}", f"-I{CSRC}", *srcs, "-lm", "-o", str(so)], check=True)
    L = ctypes.CDLL(str(so))
    sig = {
        "bnncl_cwr_expf": (ctypes.c_float, [ctypes.c_float]),
        "bnncl_cwr_set_head": (ctypes.c_int, [P, I64, I64, ctypes.c_int]),
        "bnncl_cwr_begin": (ctypes.c_int, [P, P, P, I64, I64, ctypes.c_int]),
        "bnncl_cwr_step_scratch": (SZ, [I64, I64, I64]),
        "bnncl_cwr_head_step": (ctypes.c_int, [P, P, I64, I64, I64, P, ctypes.c_float, ctypes.c_int, ctypes.c_int, P,
                                               SZ]),
        "bnncl_cwr_consolidate": (ctypes.c_int, [P, P, P, P, P, I64, I64, ctypes.c_double, P]),
        "bnncl_replay_encode8": (ctypes.c_int, [P, I64, ctypes.c_double, ctypes.c_double, P]),
        "bnncl_replay_decode8": (ctypes.c_int, [P, I64, ctypes.c_double, ctypes.c_double, P]),
        "bnncl_rng_seed": (None, [ctypes.POINTER(Rng), ctypes.c_uint64, ctypes.c_uint64]),
        "bnncl_rng_next32": (ctypes.c_uint32, [ctypes.POINTER(Rng)]),
        "bnncl_rng_bounded": (ctypes.c_uint32, [ctypes.POINTER(Rng), ctypes.c_uint32]),
        "bnncl_rng_random": (ctypes.c_double, [ctypes.POINTER(Rng)]),
        "bnncl_rng_shuffle": (ctypes.c_int, [ctypes.POINTER(Rng), P, I64, I64]),
        "bnncl_cwr_state_bytes": (SZ, [ctypes.POINTER(Config)]),
        "bnncl_cwr_state_init": (ctypes.c_int, [ctypes.POINTER(Config), ctypes.c_uint64, P, SZ,
                                                ctypes.POINTER(State)]),
        "bnncl_cwr_learn_scratch_bytes": (SZ, [ctypes.POINTER(Config), I64]),
        "bnncl_cwr_deploy": (ctypes.c_int, [ctypes.POINTER(Config), ctypes.POINTER(State), P, P, I64, I32, P, P, SZ]),
        "bnncl_cwr_learn": (ctypes.c_int, [ctypes.POINTER(Config), ctypes.POINTER(State), P, P, I64, I32, P, SZ]),
        "bnncl_cwr_predict_scratch_bytes": (SZ, [ctypes.POINTER(Config), I64]),
        "bnncl_cwr_predict": (ctypes.c_int, [ctypes.POINTER(Config), ctypes.POINTER(State), P, I64, P, P, P, SZ]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(L, name)
        fn.restype, fn.argtypes = restype, argtypes
    return L


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def scratch(nbytes: int) -> np.ndarray:
    """An 8-byte aligned buffer of at least ``nbytes``."""
    return np.zeros(max(1, (nbytes + 7) // 8), np.uint64)
