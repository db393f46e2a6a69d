"""libbnncl (the device engine as a C library) predicts bit-identically to the Python frozen engine.

``bnncl export-c`` writes a shipped model as C arrays; ``libbnncl/Makefile`` builds the library (the C core's
own sources, no Python) and ``libbnncl/tests/predict_main.c`` with the system gcc; the program's logits must
equal ``FrozenEngine.logits`` bit for bit on the scalar kernel path, and its classes ``FrozenEngine.predict``:
fmnist-b5 on 64 embedded test images, cifar10-b5 (3 channels, 8 blocks) on 16 random images.  The fmnist-b5
program cross-built for AArch64 runs under qemu-user when ``gcc-aarch64-linux-gnu`` and ``qemu-user`` are
installed.

Learning (``libbnncl/tests/learn_main.c``): fmnist-b5 exported with the streaming-LDA state that
``bnncl.api.Learner`` deploys on the embedded base images; the program learns Fashion classes 5 and 7 (50
embedded training images each) and must agree with the same Learner learning the same images: pooled features
bit for bit, counts exactly, means and covariance within rtol 1e-5, the 200 test predictions identically; a
saved state reloads to the same predictions; a state with one flipped byte, a short one and one of another
model (cifar10-b5) are refused with their error codes.  The library merges ``bnncl_learn_chunk`` images at a
time (20 for fmnist-b5 over 10 classes), so the 100 images are 5 merges, the float32 state rounded between
them: against ``StreamingLDA.update`` fed the same chunks in turn the state is bit-identical, against one
update of all 100 within the rtol above.  In an arena of ``bnncl_arena_size_learn(model, 100)`` bytes the 100 images
are one merge: the state is bit-identical to the Learner's one update.

The leave-one-out selection of the shrinkage (``StreamingLDA._count_leave_one_out``, ``effective_shrinkage``): the
library tallies the images of a learn call whose class ends with 2 .. 100 features on the statistics after the
whole call, as ``Learner.learn`` (one update) does; its scores come from a Householder reduction of the
covariance to tridiagonal form (O(D) per grid value) where Python uses an eigendecomposition, so a near-tie could
in principle come out the other way; on these inputs the tallies are asserted equal, and so is the shrinkage
chosen (``bnncl_slda_selection``).  The fmnist-b5 test also
loads a state of format version 1 (no leave-one-out counts: they load as zeros); the cifar10-b5 test learns one
class from 5 images, where the selection moves the shrinkage far from the fallback rule (0.025 -> 1e-4).
"""

from __future__ import annotations

import copy
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from bnncl import assets
from bnncl.api import Learner
from bnncl.cl.slda import SHRINKAGE_GRID, StreamingLDA
from bnncl.data.embedded import load_embedded
from bnncl.device.export_c import STATE_HEADER, arena_bytes, arena_plan, conv_panels, export_c, state_bytes
from bnncl.device.frozen import FrozenEngine
from bnncl.device.kernels import kernel_path
from bnncl.device.kernels.dispatch import available_paths
from bnncl.device.modelfile import DeviceModel
from libbnncl_inputs import learning_inputs
from libbnncl_programs import program_lines

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "libbnncl"
CROSS_CC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")
ERRORS = {"null_model": -1, "foreign_model": -2, "small_arena": -3, "misaligned": -4, "uninit_ctx": -5,
          "wrong_image_size": -6, "short_scores": -6}
LEARN_CHECKS = {"bad_label": -11, "learn_wrong_size": -6, "corrupt_payload": -8, "corrupt_header": -8,
                "short_state": -7, "foreign_state": -9, "unchanged_after_refusals": 0}
NEW_CLASSES, NEW_PER_CLASS, NTEST = (5, 7), 50, 200


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


def _make(tmp: Path, model_dir: Path, cc: str, target: str) -> Path:
    prog = tmp / f"{target}-{model_dir.name}-{cc}"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), f"BUILD={tmp / ('build-' + cc)}", f"MODEL={model_dir}", f"CC={cc}",
           f"PROG={prog}", target]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"
    return prog


def _build_and_run(tmp: Path, name: str, cc: str, runner: list[str],
                   kernel: int | None = None) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    prog = _make(tmp, tmp / name, cc, "predict")
    env = {**os.environ, "BNNCL_KERNEL": str(kernel)} if kernel is not None else None
    r = subprocess.run([*runner, str(prog), str(tmp / f"{name}.u8")], capture_output=True, text=True, timeout=120,
                       check=False, env=env)
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


KERNELS = {"scalar": 0, "avx2": 1, "avx512": 2}  # BNNCL_KERNEL_* (include/bnncl.h)


@pytest.mark.parametrize("path", sorted(KERNELS))
def test_host_predict_on_each_kernel_path_is_bit_identical(tmp, path):
    """The library picks the fastest kernel path at run time; each one, forced, gives the scalar path's logits."""
    if path not in available_paths():
        pytest.skip(f"this CPU does not run the {path} kernels")
    images = _fmnist_images()[:16]
    model, figures, _ = _export(tmp, "fmnist-b5", images)
    _check(model, figures, images, _build_and_run(tmp, "fmnist-b5", "gcc", [], KERNELS[path]))


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


def _run_learn(prog: Path, tmp: Path, test: np.ndarray, train: np.ndarray, labels: np.ndarray, state: Path,
               other: Path | None = None, v1: Path | None = None,
               arena_images: int | None = None) -> dict[str, list[list[str]]]:
    """learn_main's output lines by tag; ``arena_images``: its arena of ``bnncl_arena_size_learn(model, N)`` bytes."""
    for name, a in (("test.u8", test), ("train.u8", train), ("labels.i32", labels.astype(np.int32))):
        np.ascontiguousarray(a).tofile(tmp / name)
    args = [str(prog), str(tmp / "test.u8"), str(tmp / "train.u8"), str(tmp / "labels.i32"), str(state)]
    args += [str(a) for a in (other, v1) if a is not None]
    env = None if arena_images is None else {**os.environ, "BNNCL_ARENA_IMAGES": str(arena_images)}
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = program_lines(r.stdout)
    return out


def _selection(out: dict[str, list[list[str]]], tag: str) -> tuple[float, np.ndarray]:
    """(shrinkage, leave-one-out counts) of a ``selN RC HEX LOO...`` line of learn_main."""
    (rc, bits, *loo), = out[tag]
    assert int(rc) == 0
    return struct.unpack("<d", int(bits, 16).to_bytes(8, "little"))[0], np.array([int(v) for v in loo], np.int64)


def _same(selection: tuple[float, np.ndarray], eps: float, loo: np.ndarray) -> bool:
    return selection[0] == eps and np.array_equal(selection[1], loo)


def _write_state_v1(path: Path, fingerprint: int, slda: StreamingLDA) -> None:
    """``slda`` in the state format of version 1 (no leave-one-out counts), as bnncl_state_save wrote it before."""
    payload = (slda.counts.astype("<i8").tobytes() + slda.means.astype("<f4").tobytes()
               + slda.cov_packed.astype("<f4").tobytes())
    head = struct.pack("<7I", 0x54534C42, 1, fingerprint, 1, slda.num_classes, slda.dim, len(payload))
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + payload + struct.pack("<I", zlib.crc32(payload)))


def _read_state(path: Path, classes: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(header uint32 x 8, counts, means, packed covariance) of a state written by bnncl_state_save; the
    leave-one-out counts after them are :func:`_read_loo`'s."""
    b = path.read_bytes()
    assert len(b) == state_bytes(classes, dim)
    p = np.frombuffer(b, np.uint8)
    header = p[:STATE_HEADER].view("<u4")
    at = STATE_HEADER
    counts = p[at:at + 8 * classes].view("<i8")
    at += 8 * classes
    means = p[at:at + 4 * classes * dim].view("<f4").reshape(classes, dim)
    at += 4 * classes * dim
    cov = p[at:len(b) - 4 - 8 * len(SHRINKAGE_GRID)].view("<f4")
    return header, counts, means, cov


def _read_loo(path: Path) -> np.ndarray:
    b = path.read_bytes()
    return np.frombuffer(b[len(b) - 4 - 8 * len(SHRINKAGE_GRID):len(b) - 4], "<i8")


def test_host_learn_fmnist_b5_agrees_with_the_python_learner(tmp):
    model, base_images, base_labels, images, labels, test = learning_inputs(NEW_CLASSES, NEW_PER_CLASS, NTEST)
    with kernel_path("scalar"):
        learner = Learner(model)
        learner.deploy(base_images, base_labels)
        figures = export_c(model, tmp / "fmnist-b5-slda", slda=learner.learner.feature_head)
        test_latents = learner.learner.extract(test)
        first_features = learner.learner.extract(images[:4])
        before = learner.learner.predict(test_latents)
        chunked = copy.deepcopy(learner.learner.feature_head)  # the library's merges: chunks of learn_chunk images
        chunk = arena_plan(model, 10)["learn_chunk"]
        train_latents = learner.learner.extract(images)
        for at in range(0, len(images), chunk):
            chunked.update(train_latents[at:at + chunk], labels[at:at + chunk])
        eps_before = learner.learner.feature_head.effective_shrinkage
        learner.learn(images, labels)
        logits, after = learner.learner.logits(test_latents), learner.learner.predict(test_latents)
    slda = learner.learner.feature_head
    assert slda.loo_correct.any(), "the learned classes (50 features each) are tallied"
    # a version-1 state of the learned statistics: no leave-one-out counts, so the fallback rule
    old = StreamingLDA(slda.num_classes, slda.dim, slda.shrinkage)
    old.load_state_dict({k: v for k, v in slda.state_dict()[0].items() if k != "loo_correct"})
    v1_logits = old.logits(test_latents)
    v1_classes = np.argmax(np.where(old.counts > 0, v1_logits, -np.inf), axis=1)
    _write_state_v1(tmp / "fmnist-v1.state", figures["fingerprint"], slda)

    # a state of another model: cifar10-b5 exported without a state, nothing learned
    cifar = DeviceModel.load(assets.model_path("cifar10-b5", ".bnn"))
    export_c(cifar, tmp / "cifar10-b5-learn")
    cifar_dir = tmp / "cifar-run"
    cifar_dir.mkdir()
    cifar_images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    _run_learn(_make(tmp, tmp / "cifar10-b5-learn", "gcc", "learn"), cifar_dir, cifar_images, cifar_images[:0],
               np.zeros(0, np.int32), tmp / "cifar.state")

    state = tmp / "fmnist.state"
    prog = _make(tmp, tmp / "fmnist-b5-slda", "gcc", "learn")
    out = _run_learn(prog, tmp, test, images, labels, state, tmp / "cifar.state", tmp / "fmnist-v1.state")
    assert int(out["arena"][0][0]) == figures["arena_bytes"] == arena_bytes(model)
    assert int(out["state_size"][0][0]) == figures["state_bytes"] == state_bytes(10, slda.dim)
    assert int(out["chunk"][0][0]) == figures["learn_chunk"] == chunk == 20
    assert {k: int(v) for k, v in out["check"]} == LEARN_CHECKS
    assert [int(out[k][0][0]) for k in ("learn", "save", "load")] == [0, 0, 0]
    feats = np.array([[int(v, 16) for v in row] for row in out["feat"]], np.uint32)
    assert np.array_equal(feats, first_features.view(np.uint32)), "pooled features differ from the Python engine"
    assert np.array_equal([int(r[0]) for r in out["p0"]], before), "predictions with the deployed state differ"

    header, counts, means, cov = _read_state(state, slda.num_classes, slda.dim)
    assert header[:7].tolist() == [0x54534C42, 2, figures["fingerprint"], 1, 10, slda.dim,
                                   state_bytes(10, slda.dim) - STATE_HEADER - 4]
    # the leave-one-out tally (5 holds of 20 features) and the shrinkage it selects: as Python's
    assert _same(_selection(out, "sel0"), eps_before, slda.loo_correct * 0)
    assert np.array_equal(_read_loo(state), slda.loo_correct), "leave-one-out tally differs from Python"
    assert _selection(out, "sel1")[0] == slda.effective_shrinkage
    assert np.array_equal(_selection(out, "sel1")[1], slda.loo_correct)
    assert _selection(out, "sel2")[0] == slda.effective_shrinkage
    assert np.array_equal(_selection(out, "sel2")[1], slda.loo_correct)
    # a version-1 state loads with zero counts: the fallback rule, as StreamingLDA.load_state_dict
    assert int(out["v1"][0][0]) == 0
    assert _same(_selection(out, "sel3"), old.effective_shrinkage, old.loo_correct)
    assert old.effective_shrinkage != slda.effective_shrinkage
    v1_scores = np.array([[int(v, 16) for v in r[1:]] for r in out["p3"]], np.uint32).view(np.float32)
    np.testing.assert_allclose(v1_scores, v1_logits, rtol=1e-5, atol=1e-5 * float(np.abs(v1_logits).max()))
    assert np.array_equal([int(r[0]) for r in out["p3"]], v1_classes), "predictions from a version-1 state differ"
    assert np.array_equal(counts, slda.counts)
    np.testing.assert_allclose(means, slda.means, rtol=1e-5, atol=1e-6 * float(np.abs(slda.means).max()))
    np.testing.assert_allclose(cov, slda.cov_packed, rtol=1e-5, atol=1e-6 * float(np.abs(slda.cov_packed).max()))
    assert np.array_equal(counts, chunked.counts)
    assert np.array_equal(means.view(np.uint32), chunked.means.view(np.uint32)), "means differ from chunked updates"
    assert np.array_equal(cov.view(np.uint32), chunked.cov_packed.view(np.uint32)), "cov differs from chunked updates"
    scores = np.array([[int(v, 16) for v in r[1:]] for r in out["p1"]], np.uint32).view(np.float32)
    np.testing.assert_allclose(scores, logits, rtol=1e-5, atol=1e-5 * float(np.abs(logits).max()))
    assert np.array_equal([int(r[0]) for r in out["p1"]], after), "predictions after learning differ"
    assert np.array_equal([int(r[0]) for r in out["p2"]], after), "predictions after save and load differ"
    assert set(after.tolist()) & set(NEW_CLASSES), "the learned classes are never predicted"

    # an arena of bnncl_arena_size_learn(model, 100) bytes: the 100 images are one merge, as Learner.learn's one
    # update (bit for bit), and the tally reuses their features (no second forward); the same tally and predictions
    big = _run_learn(prog, tmp, test, images, labels, tmp / "fmnist-big.state", tmp / "cifar.state",
                     arena_images=len(images))
    assert int(big["chunk"][0][0]) >= len(images)
    assert [int(big[k][0][0]) for k in ("learn", "save", "load")] == [0, 0, 0]
    assert {k: int(v) for k, v in big["check"]} == LEARN_CHECKS
    _, counts, means, cov = _read_state(tmp / "fmnist-big.state", slda.num_classes, slda.dim)
    assert np.array_equal(counts, slda.counts)
    assert np.array_equal(means.view(np.uint32), slda.means.view(np.uint32)), "means differ from one update"
    assert np.array_equal(cov.view(np.uint32), slda.cov_packed.view(np.uint32)), "cov differs from one update"
    assert np.array_equal(_read_loo(tmp / "fmnist-big.state"), slda.loo_correct)
    assert _selection(big, "sel1")[0] == slda.effective_shrinkage
    assert np.array_equal([int(r[0]) for r in big["p1"]], after), "predictions after learning differ"
    big_scores = np.array([[int(v, 16) for v in r[1:]] for r in big["p1"]], np.uint32).view(np.float32)
    np.testing.assert_allclose(big_scores, logits, rtol=1e-5, atol=1e-5 * float(np.abs(logits).max()))


def test_host_learn_cifar10_b5_five_shot_selection_agrees_with_the_python_learner(tmp):
    """cifar10-b5, the state deployed on the first 100 training images of each base class (tallied: 100
    features each), then one class learned from 5 images: the selection keeps 1e-4 where the fallback rule
    gives 0.025; C and Python agree on the tally, the shrinkage, the scores and the predictions."""
    model, base_images, base_labels, images, labels, test = learning_inputs((5,), 5, 40, model_name="cifar10-b5",
                                                                            base_per_class=100)
    with kernel_path("scalar"):
        learner = Learner(model)
        learner.deploy(base_images, base_labels)
        deployed = copy.deepcopy(learner.learner.feature_head)
        out_dir = tmp / "cifar10-b5-slda"
        figures = export_c(model, out_dir, slda=deployed)
        test_latents = learner.learner.extract(test)
        before = learner.learner.predict(test_latents)
        learner.learn(images, labels)
        logits, after = learner.learner.logits(test_latents), learner.learner.predict(test_latents)
    slda = learner.learner.feature_head
    rule = 0.05 * 5 / (5 + 5)
    assert deployed.loo_correct.any() and slda.effective_shrinkage != rule, "the selection moves the shrinkage"
    run = tmp / "cifar10-b5-run"
    run.mkdir()
    state = run / "cifar.state"
    out = _run_learn(_make(tmp, out_dir, "gcc", "learn"), run, test, images, labels, state)
    assert int(out["arena"][0][0]) == figures["arena_bytes"] == arena_bytes(model, 10)
    assert int(out["learn"][0][0]) == 0
    assert _same(_selection(out, "sel0"), deployed.effective_shrinkage, deployed.loo_correct)
    assert np.array_equal([int(r[0]) for r in out["p0"]], before), "predictions with the deployed state differ"
    assert np.array_equal(_read_loo(state), slda.loo_correct), "leave-one-out tally differs from Python"
    assert _same(_selection(out, "sel1"), slda.effective_shrinkage, slda.loo_correct)
    header, counts, means, cov = _read_state(state, slda.num_classes, slda.dim)
    assert np.array_equal(counts, slda.counts)
    np.testing.assert_allclose(means, slda.means, rtol=1e-5, atol=1e-6 * float(np.abs(slda.means).max()))
    np.testing.assert_allclose(cov, slda.cov_packed, rtol=1e-5, atol=1e-6 * float(np.abs(slda.cov_packed).max()))
    scores = np.array([[int(v, 16) for v in r[1:]] for r in out["p1"]], np.uint32).view(np.float32)
    np.testing.assert_allclose(scores, logits, rtol=1e-5, atol=1e-5 * float(np.abs(logits).max()))
    assert np.array_equal([int(r[0]) for r in out["p1"]], after), "predictions after learning differ"
    assert np.array_equal([int(r[0]) for r in out["p2"]], after), "predictions after save and load differ"
