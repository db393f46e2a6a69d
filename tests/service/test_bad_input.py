"""One test per row of the bad-input table in docs/operating-a-device.md: the answer (a one-line error
with exit code 2, or a documented skip with a warning) and the state on disk left as it was."""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bnncl.atomic
from bnncl.cl import state as state_mod
from bnncl.cl.state import StateStore
from bnncl.data.imagefolder import decode_image
from bnncl.device.modelfile import DeviceModel
from bnncl.service import learn, predict
from bnncl.service.session import HeadFullError, InputError, LearnerSession


def _learn(model, state, inc, *extra) -> int:
    return learn.main(["--model", str(model), "--state", str(state), "--incoming", str(inc), "--once", *extra])


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bnncl "), err
    for needle in needles:
        assert needle in err, err
    return err


def _image(path: Path, size=(28, 28), mode="L", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is a few rows: a bomb needs no more)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(bytes(8 * (width + 1)), 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _learned(state: Path) -> int:
    return StateStore(state).load().position["images_learned"]


# -- files in the incoming folder: converted, or rejected with a reason ----------------------------
@pytest.mark.parametrize("size,mode", [((40, 30), "L"), ((28, 28), "RGB"), ((100, 64), "RGB"), ((8, 8), "L")])
def test_other_size_or_channels_is_resized_and_learned(tmp_path, model, state, size, mode, capsys):
    _image(tmp_path / "inc" / "Bag" / "a.png", size, mode)
    assert _learn(model, state, tmp_path / "inc") == 0
    assert _learned(state) == 1 and capsys.readouterr().err == ""


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "unreadable image"),
    ("text", "unreadable image (UnidentifiedImageError: cannot identify image file)"),
    ("empty", "empty file"),
    ("unlabelled", "not in a label folder"),
])
def test_unusable_file_is_rejected_with_a_reason(tmp_path, model, state, kit, kind, reason, capsys):
    inc = tmp_path / "inc"
    if kind == "truncated":
        bad = _image(inc / "Bag" / "bad.png", (28, 28))
        bad.write_bytes(bad.read_bytes()[:60])
    elif kind == "text":
        bad = inc / "Bag" / "bad.png"
        bad.parent.mkdir(parents=True)
        bad.write_text("not an image\n")
    elif kind == "empty":
        bad = inc / "Bag" / "bad.png"
        bad.parent.mkdir(parents=True)
        bad.write_bytes(b"")
    else:
        bad = _image(inc / "bad.png")
    before = kit.snapshot(state)
    assert _learn(model, state, inc) == learn.EXIT_ALL_REJECTED  # nothing learned
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 2 and out.err.startswith("warning: ") and reason in out.err, out.err
    assert out.err.splitlines()[1].startswith("nothing learned: 1 image(s) rejected (reasons beside them in ")
    moved = inc / "rejected" / ("Bag" if kind != "unlabelled" else "_unlabelled") / "bad.png"
    assert moved.exists() and not bad.exists()
    assert reason in moved.with_name("bad.png.reason.txt").read_text()
    assert kit.snapshot(state) == before


@pytest.mark.parametrize("side", [20000, 12000])
def test_image_over_the_pixel_limit_is_rejected_from_its_header(tmp_path, model, state, kit, side, capsys):
    """A decompression bomb (20000 x 20000: Pillow refuses it with an exception) and a merely huge image
    (12000 x 12000) are rejected from the header, before any pixel is decoded; the images beside them
    are learned, and predict answers with one error line."""
    inc = tmp_path / "inc"
    bomb = _png(inc / "Bag" / "000000.png", side, side)
    kit.write_stream(inc, 2, seed=3, start=1)
    assert _learn(model, state, inc) == 0
    err = capsys.readouterr().err
    found = f"{side * side} pixels" if side == 20000 else f"{side}x{side} pixels"  # Pillow's bomb check names no sides
    reason = f"image too large ({found}; at most 3584x3584 = 12845056 pixels for the model's 28x28 input)"
    assert err.count("\n") == 1 and reason in err, err
    assert reason in (inc / "rejected" / "Bag" / "000000.png.reason.txt").read_text()
    assert _learned(state) == 2 and not bomb.exists()
    good = _image(tmp_path / "good.png")
    bomb = _png(tmp_path / "bomb.png", side, side)
    assert predict.main(["--model", str(model), "--state", str(state), str(bomb), str(good)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "bomb.png: image too large" in out.err and out.out.startswith(str(good))


def test_file_over_the_size_limit_is_rejected_unread(tmp_path, model, state, capsys):
    inc = tmp_path / "inc"
    big = _image(inc / "Bag" / "big.png")
    with open(big, "r+b") as fh:
        fh.truncate(8 * 12845056 + (1 << 20) + 1)  # sparse: takes no room on disk
    assert _learn(model, state, inc) == learn.EXIT_ALL_REJECTED  # nothing learned
    assert "file too large (103809025 bytes; at most 103809024 for the model's input)" in capsys.readouterr().err


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_image_is_scaled_to_8_bits(tmp_path, model, state, channels, capsys):
    """A 16-bit grayscale PNG decodes to the same pixels as the 8-bit image it was made from (each
    sample / 257, rounded), for a grayscale and an RGB model, and is learned."""
    a8 = np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8)
    inc = tmp_path / "inc"
    (inc / "Bag").mkdir(parents=True)
    Image.fromarray(a8.astype(np.uint16) * 257).save(inc / "Bag" / "a.png")
    Image.fromarray(a8).save(tmp_path / "a8.png")
    assert Image.open(inc / "Bag" / "a.png").mode == "I;16"
    want = decode_image(tmp_path / "a8.png", (28, 28), channels, "a8")
    np.testing.assert_array_equal(decode_image(inc / "Bag" / "a.png", (28, 28), channels, "a16"), want)
    assert _learn(model, state, inc) == 0 and _learned(state) == 1 and capsys.readouterr().err == ""


def test_32_bit_image_is_rejected_with_its_format(tmp_path, model, state, capsys):
    inc = tmp_path / "inc"
    (inc / "Bag").mkdir(parents=True)
    Image.fromarray(np.ones((28, 28), np.float32)).save(inc / "Bag" / "f.tif")
    assert _learn(model, state, inc) == learn.EXIT_ALL_REJECTED  # nothing learned
    reason = "unsupported pixel format 'F' (32-bit float samples); expected 1-, 8- or 16-bit samples"
    assert reason in capsys.readouterr().err and reason in (inc / "rejected" / "Bag" / "f.tif.reason.txt").read_text()


def test_file_name_at_the_length_limit_learned_again_and_rejected(tmp_path, model, state, capsys):
    """A 255-byte name (the file-system limit) dropped a second time after it was learned: the second
    file is learned too and moved under a shortened numbered name (``NAME.1.png`` would be too long);
    an unreadable file with a long multi-byte name is rejected under a name that leaves room for its
    ``.reason.txt``. Nothing blocks the loop."""
    inc = tmp_path / "inc"
    name = "a" * 251 + ".png"
    _image(inc / "Bag" / name, seed=1)
    assert _learn(model, state, inc) == 0
    _image(inc / "Bag" / name, seed=2)
    assert _learn(model, state, inc) == 0
    done = sorted(p.name for p in (inc / "processed" / "Bag").iterdir())
    assert len(done) == 2 and name in done and all(len(n.encode()) <= 255 for n in done), done
    assert any(n.endswith(".1.png") for n in done) and _learned(state) == 2
    bad = inc / "Shirt" / ("\u00e9" * 125 + ".png")  # 254 bytes in UTF-8
    bad.parent.mkdir()
    bad.write_text("not an image")
    assert _learn(model, state, inc) == learn.EXIT_ALL_REJECTED  # nothing learned
    assert "rejected, moved to" in capsys.readouterr().err
    rejected = sorted(p.name for p in (inc / "rejected" / "Shirt").iterdir())
    assert len(rejected) == 2 and rejected[1] == rejected[0] + ".reason.txt", rejected
    assert len(rejected[1].encode()) <= 255 and not bad.exists()


def test_links_fifos_and_subfolders_are_never_taken_and_warned_once(tmp_path, model, state, kit):
    """A class folder that is a symbolic link (to a folder outside INCOMING), a linked file, a FIFO and
    a folder below the class level are never taken (nothing outside INCOMING is read or moved), each
    gets one warning however often the loop scans, and the regular files beside them are learned."""
    outside = tmp_path / "outside"
    kit.write_stream(outside, 2, seed=8, classes=(8,))
    inc = tmp_path / "inc"
    kit.write_stream(inc, 1, seed=4, classes=(8,))
    (inc / "Shirt").symlink_to(outside / "Bag", target_is_directory=True)
    (inc / "Bag" / "link.png").symlink_to(next((outside / "Bag").iterdir()))
    os.mkfifo(inc / "Bag" / "pipe.png")
    _image(inc / "Bag" / "deeper" / "x.png")
    before = sorted(p.name for p in (outside / "Bag").iterdir())
    session = LearnerSession.open(model, state)
    warned: list[str] = []
    loop = learn.LearnLoop(session, inc, inc / "processed", inc / "rejected", say=lambda m: None, warn=warned.append)
    assert loop.step() == 1 and loop.step() == 0 and loop.step() == 0
    assert sorted(p.name for p in (outside / "Bag").iterdir()) == before  # nothing taken from outside
    assert len(warned) == 4, warned
    text = "\n".join(warned)
    assert "Shirt: not taken: a symbolic link" in text and "link.png: not taken: a symbolic link" in text
    assert "pipe.png: not taken: a FIFO" in text and "deeper: not taken: a folder below the class level" in text
    assert (inc / "Bag" / "pipe.png").exists() and session.position["images_learned"] == 1


def test_new_label_when_the_head_is_full_is_rejected(tmp_path, model, state, kit, capsys):
    inc = tmp_path / "inc"
    _image(inc / "Hat" / "a.png")
    kit.write_stream(inc, 2, seed=1)
    assert _learn(model, state, inc) == 0
    err = capsys.readouterr().err
    assert "new class 'Hat' does not fit: the head holds 10 classes and all are named" in err
    assert (inc / "rejected" / "Hat" / "a.png.reason.txt").exists()
    assert _learned(state) == 2  # the others are learned


def test_too_many_labels_through_the_api(model, state):
    session = LearnerSession.open(model, state)
    before = session.store.load()
    with pytest.raises(HeadFullError, match="do not fit: the head holds 10 classes"):
        session.learn(np.zeros((2, 28, 28, 1), np.uint8), ["Hat", "Sandal"])
    assert session.classes == before.position["classes"]
    assert session.store.load().generation == before.generation


def test_empty_experience(tmp_path, model, state, kit, capsys):
    (tmp_path / "inc").mkdir()
    before = kit.snapshot(state)
    assert _learn(model, state, tmp_path / "inc") == 0
    assert "nothing new to learn" in capsys.readouterr().out
    assert kit.snapshot(state) == before
    with pytest.raises(InputError, match="empty experience"):
        LearnerSession.open(model, state).learn(np.zeros((0, 28, 28, 1), np.uint8), [])
    assert kit.snapshot(state) == before


# -- arrays through the Python API ------------------------------------------------------------------
@pytest.mark.parametrize("images,labels,message", [
    (np.full((3, 28, 28, 1), np.nan, np.float32), ["Bag"] * 3, "contains NaN or Inf (first in image 0)"),
    (np.where(np.arange(2 * 784).reshape(2, 28, 28, 1) == 900, np.inf, 1.0), ["Bag"] * 2,
     "contains NaN or Inf (first in image 1)"),
    (np.zeros((2, 32, 32, 3), np.uint8), ["Bag"] * 2, "expected an array of shape (N, 28, 28, 1), got (2, 32, 32, 3)"),
    (np.full((1, 28, 28, 1), 300.0), ["Bag"], "pixel values must lie in [0, 255]"),
    (np.zeros((2, 28, 28, 1), np.uint8), ["Bag"], "expected one label per image (2), got 1"),
    (np.zeros((1, 28, 28, 1), np.uint8), [""], "expected non-empty class names"),
    (np.array([["a"]]), ["Bag"], "expected an array of shape"),
])
def test_bad_arrays_through_the_api(model, state, kit, images, labels, message):
    before = kit.snapshot(state)
    session = LearnerSession.open(model, state)
    with pytest.raises(InputError) as info:
        session.learn(images, labels)
    assert message in str(info.value) and "\n" not in str(info.value)
    if "label" not in message and "class names" not in message:  # the images themselves are bad
        with pytest.raises(InputError):
            session.predict(images)
    assert kit.snapshot(state) == before


def test_float_and_3d_arrays_are_accepted(model, state):
    session = LearnerSession.open(model, state)
    x = np.random.default_rng(0).integers(0, 256, (2, 28, 28)).astype(np.float64)
    session.learn(x, ["Bag", "Bag"])
    assert session.position["images_learned"] == 2 and len(session.predict(x)) == 2


# -- the model, the state, the disk ---------------------------------------------------------------
def test_model_that_does_not_match_the_state(tmp_path, model, state, kit, capsys):
    other = DeviceModel.load(model)
    other.tensors["head.weight"] = other.tensors["head.weight"] + np.float32(0.01)
    other.save(tmp_path / "other.bnn")
    (tmp_path / "inc").mkdir()
    before = kit.snapshot(state)
    assert _learn(tmp_path / "other.bnn", state, tmp_path / "inc") == 2
    _one_line_error(capsys, "state belongs to model sha256", "not to this model")
    assert predict.main(["--model", str(tmp_path / "other.bnn"), "--state", str(state), "x.png"]) == 2
    _one_line_error(capsys, "state belongs to model sha256")
    assert kit.snapshot(state) == before


def test_state_from_a_newer_version(tmp_path, model, state, kit, capsys):
    store = StateStore(state)
    gen = store.current_generation()
    path = state / f"gen-{gen:08d}" / "MANIFEST.json"
    body = json.loads(path.read_text())
    body.pop("self_sha256")
    body["format_version"] = state_mod.FORMAT_VERSION + 1
    body["self_sha256"] = __import__("hashlib").sha256(state_mod._canonical(body)).hexdigest()
    path.write_text(json.dumps(body))
    (state / "CURRENT").write_bytes(state_mod.pointer_line(gen, body["self_sha256"]))
    (tmp_path / "inc").mkdir()
    kit.write_stream(tmp_path / "inc", 2)
    before = kit.snapshot(state)
    assert _learn(model, state, tmp_path / "inc") == 2
    _one_line_error(capsys, f"format version {state_mod.FORMAT_VERSION + 1} is newer", "upgrade bnncl")
    assert kit.snapshot(state) == before


def test_disk_full(tmp_path, model, state, kit, monkeypatch, capsys):
    inc = tmp_path / "inc"
    ids = kit.write_stream(inc, 4, seed=2)
    before = kit.snapshot(state)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bnncl.atomic, "write_all", full)
    assert _learn(model, state, inc) == 2
    _one_line_error(capsys, "could not write the state (disk full); the previous state is kept")
    assert kit.snapshot(state) == before
    assert all((inc / i).exists() for i in ids)  # nothing moved: learned again at the next start
    monkeypatch.undo()
    assert _learn(model, state, inc) == 0 and _learned(state) == 4


def test_disk_full_at_deployment(tmp_path, model, monkeypatch, capsys):
    (tmp_path / "inc").mkdir()
    monkeypatch.setattr(bnncl.atomic, "write_all", lambda fd, d: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert _learn(model, tmp_path / "st", tmp_path / "inc", "--tail-blocks", "0", "--lr-bits", "8") == 2
    _one_line_error(capsys, "disk full")
    assert not StateStore(tmp_path / "st").exists()


def test_damaged_newest_generation_relearns_what_it_had_learned(tmp_path, model, state, kit, capsys):
    """The newest generation is damaged after its files were moved to processed/: the state falls back
    to the generation before it, and the files the lost generation had learned go back to INCOMING
    and are learned again; in the end every image is learned once."""
    inc = tmp_path / "inc"
    ids = kit.write_stream(inc, 6, seed=13)
    assert _learn(model, state, inc, "--max-images", "3") == 0
    newest = StateStore(state).current_generation()
    damaged = state / f"gen-{newest:08d}" / "arrays.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    capsys.readouterr()
    assert _learn(model, state, inc, "--max-images", "3") == 0
    out = capsys.readouterr()
    assert "loaded older intact" in out.err and "arrays.safetensors checksum mismatch" in out.err
    assert "moved 3 file(s) learned by experience 2 back to" in out.out and "learn them again" in out.out
    loaded = StateStore(state).load()
    assert loaded.position["images_learned"] == 6 and loaded.position["experience"] == 2 and not loaded.fell_back
    assert sorted(f"{p.parent.name}/{p.name}" for p in (inc / "processed").glob("*/*")) == sorted(ids)


def test_every_generation_damaged(tmp_path, model, state, capsys):
    for f in state.glob("gen-*/arrays.safetensors"):
        f.write_bytes(b"garbage")
    (tmp_path / "inc").mkdir()
    assert _learn(model, state, tmp_path / "inc") == 2
    _one_line_error(capsys, "no intact state generation")


@pytest.mark.parametrize("flags,message", [
    (["--tail-blocks", "2"], "state was deployed with --tail-blocks 0"),
    (["--lr", "0.1"], "state was deployed with --lr 0.05"),
])
def test_options_that_contradict_the_deployed_settings(tmp_path, model, state, kit, flags, message, capsys):
    (tmp_path / "inc").mkdir()
    before = kit.snapshot(state)
    assert _learn(model, state, tmp_path / "inc", *flags) == 2
    _one_line_error(capsys, message)
    assert kit.snapshot(state) == before


@pytest.mark.parametrize("case,message", [
    ("no-model", "no such model file"),
    ("not-a-model", "not a valid bnncl device model"),
    ("no-incoming", "--incoming"),
    ("bad-setting", "--lr-bits: expected 1, 8 or 32 bits, got 4"),
    ("bad-rounding", "--qw-rounding: expected stochastic or nearest, got 'up'"),
    ("lr1-real-split", "--lr-bits 1 needs a binary latent-replay layer"),
    ("other-model-no-base", "give --base DIR"),
])
def test_bad_arguments_at_deployment(tmp_path, model, case, message, capsys):
    inc = tmp_path / "inc"
    inc.mkdir()
    m, extra = str(model), []
    if case == "no-model":
        m = str(tmp_path / "missing.bnn")
    elif case == "not-a-model":
        (tmp_path / "x.bnn").write_bytes(b"\x00" * 100)
        m = str(tmp_path / "x.bnn")
    elif case == "no-incoming":
        inc = tmp_path / "nope"
    elif case == "bad-setting":
        extra = ["--lr-bits", "4"]
    elif case == "bad-rounding":
        extra = ["--qw-rounding", "up"]
    elif case == "lr1-real-split":
        extra = ["--strategy", "cwr_star", "--tail-blocks", "0", "--lr-bits", "1"]
    else:
        other = DeviceModel.load(model)
        other.tensors["head.weight"] = other.tensors["head.weight"] * np.float32(2)
        other.save(tmp_path / "other.bnn")
        m = str(tmp_path / "other.bnn")
    assert learn.main(["--model", m, "--state", str(tmp_path / "st"), "--incoming", str(inc), "--once", *extra]) == 2
    _one_line_error(capsys, message)
    assert not StateStore(tmp_path / "st").exists()


def test_deploy_from_a_base_folder(tmp_path, model, kit):
    """A model that is not the shipped one deploys from --base (an ImageFolder of base classes)."""
    other = DeviceModel.load(model)
    other.tensors["head.weight"] = other.tensors["head.weight"] * np.float32(2)
    other.save(tmp_path / "other.bnn")
    kit.write_stream(tmp_path / "base", 10, classes=(0, 1, 2, 3, 4))
    inc = tmp_path / "inc"
    kit.write_stream(inc, 3, seed=9)
    assert _learn(tmp_path / "other.bnn", tmp_path / "st", inc, *kit.fast_flags(), "--base",
                  str(tmp_path / "base")) == 0
    pos = StateStore(tmp_path / "st").load().position
    assert pos["base_images"] == 10 and pos["images_learned"] == 3


def test_predict_errors(tmp_path, model, state, capsys):
    good = _image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    assert predict.main(["--model", str(model), "--state", str(state), str(bad), str(good)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "bad.png: unreadable image" in out.err
    assert out.out.startswith(str(good))
    assert predict.main(["--model", str(model), "--state", str(tmp_path / "none"), str(good)]) == 2
    _one_line_error(capsys, "no state yet", "run bnncl learn first")
