"""libbnncl (the device engine as a C library) predicts bit-identically to the Python frozen engine.

``bnncl export-c`` writes a shipped model as C arrays; ``libbnncl/Makefile`` builds the library (the C core's
own sources, no Python) and ``libbnncl/tests/predict_main.c`` with the system gcc; the program's logits must
equal ``FrozenEngine.logits`` bit for bit on the scalar kernel path, and its classes ``FrozenEngine.predict``:
fmnist-b5 on 64 embedded test images, cifar10-b5 (3 channels, 8 blocks) on 16 random images.  The fmnist-b5
program cross-built for AArch64 runs under qemu-user when ``gcc-aarch64-linux-gnu`` and ``qemu-user`` are
installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnncl import assets
from bnncl.data.embedded import load_embedded
from bnncl.device.export_c import arena_bytes, conv_panels, export_c
from bnncl.device.frozen import FrozenEngine
from bnncl.device.kernels import kernel_path
from bnncl.device.modelfile import DeviceModel

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "libbnncl"
CROSS_CC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")
ERRORS = {"null_model": -1, "foreign_model": -2, "small_arena": -3, "misaligned": -4, "uninit_ctx": -5,
          "wrong_image_size": -6, "short_scores": -6}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("libbnncl is built with gcc and make; not found")
    return tmp_path_factory.mktemp("libbnncl")


def _export(tmp: Path, name: str, images: np.ndarray) -> tuple[DeviceModel, dict[str, int], Path]:
    model = DeviceModel.load(assets.model_path(name, ".bnn"))
    figures = export_c(model, tmp / name)
    np.ascontiguousarray(images).tofile(tmp / f"{name}.u8")
    return model, figures, tmp / name


def _build_and_run(tmp: Path, name: str, cc: str, runner: list[str]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    prog = tmp / f"predict-{name}-{cc}"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), f"BUILD={tmp / ('build-' + cc)}", f"MODEL={tmp / name}", f"CC={cc}",
           f"PROG={prog}", "predict"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"
    r = subprocess.run([*runner, str(prog), str(tmp / f"{name}.u8")], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    info, classes, bits = {}, [], []
    for line in r.stdout.splitlines():
        head, *rest = line.split()
        if head in ("arena", "check"):
            info[rest[0] if head == "check" else "arena"] = int(rest[-1])
        else:
            classes.append(int(head))
            bits.append([int(v, 16) for v in rest])
    return info, np.array(classes), np.array(bits, np.uint32)


def _check(model: DeviceModel, figures: dict[str, int], images: np.ndarray,
           result: tuple[dict[str, int], np.ndarray, np.ndarray]) -> None:
    info, classes, bits = result
    assert info.pop("arena") == figures["arena_bytes"] == arena_bytes(model)
    assert info == ERRORS
    with kernel_path("scalar"):
        engine = FrozenEngine(model)
        logits, predicted = engine.logits(images), engine.predict(images)
    assert bits.shape == logits.shape == (len(images), len(model.pretrained_classes))
    assert np.array_equal(bits, logits.view(np.uint32)), "libbnncl logits differ from FrozenEngine (scalar path)"
    assert np.array_equal(classes, predicted)


def _fmnist_images() -> np.ndarray:
    return load_embedded("test").images[:64]


def test_host_predict_fmnist_b5_is_bit_identical_to_the_frozen_engine(tmp):
    images = _fmnist_images()
    model, figures, out = _export(tmp, "fmnist-b5", images)
    _check(model, figures, images, _build_and_run(tmp, "fmnist-b5", "gcc", []))
    config = (out / "model_config.h").read_text()
    assert f"#define BNNCL_ARENA_BYTES {figures['arena_bytes']} " in config
    assert f"#define BNNCL_MODEL_ARRAY_BYTES {figures['array_bytes']} " in config
    assert "stem_addmap[288]" in (out / "model.c").read_text()  # 3 x 3 border classes x 32 channels, not 28 x 28


def test_host_predict_cifar10_b5_is_bit_identical_to_the_frozen_engine(tmp):
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    model, figures, _ = _export(tmp, "cifar10-b5", images)
    _check(model, figures, images, _build_and_run(tmp, "cifar10-b5", "gcc", []))


def test_aarch64_predict_under_qemu_is_bit_identical(tmp):
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing or not SYSROOT.is_dir():
        pytest.skip(f"{', '.join(missing) or SYSROOT} not found (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    images = _fmnist_images()
    model, figures, _ = _export(tmp, "fmnist-b5", images)
    _check(model, figures, images, _build_and_run(tmp, "fmnist-b5", CROSS_CC, [QEMU, "-L", str(SYSROOT)]))


def test_conv_panels_layout():
    w = np.zeros((33, 3, 3, 1), np.uint64)
    w[32, 1, 2, 0] = 0b101  # channel 32 (panel 1, column 0), tap 5, input channels 0 and 2 of 3
    p = conv_panels(w, in_channels=3)
    assert p.shape == (2, 1, 32) and np.count_nonzero(p) == 1
    assert p[1, 0, 0] == 0b101 << 15
