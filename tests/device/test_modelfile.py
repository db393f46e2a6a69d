"""The device model file: round trip, validation of every field, one-line errors, atomic writes."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bnncl.device.modelfile import (
    FORMAT,
    DeviceModel,
    checksum,
    dequantize_uniform,
    expected_tensors,
    quantize_uniform,
)
from bnncl.errors import ModelFileError

torch = pytest.importorskip("torch")
from bnncl.nn.export import build_device_model, export_model  # noqa: E402
from nn.test_export import TINY, randomized  # noqa: E402  (tests/ is on the pytest pythonpath)


@pytest.fixture
def bnn(tmp_path):
    path = tmp_path / "m.bnn"
    export_model(randomized(), {"classes": [0, 1, 2]}, path)
    return path


def _rewrite(path, tensors=None, meta_update=None, manifest_update=None, fix_checksum=False):
    """Rewrite a .bnn with changed tensors / metadata (bypassing DeviceModel.save's checks)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        meta = dict(fh.metadata())
    t = load_file(str(path)) if tensors is None else tensors
    man = json.loads(meta["manifest"])
    man.update(manifest_update or {})
    if fix_checksum:
        man["checksum"]["value"] = checksum(t)
    meta["manifest"] = json.dumps(man)
    meta.update(meta_update or {})
    save_file(t, str(path), metadata=meta)


def _one_line_error(path) -> str:
    with pytest.raises(ModelFileError) as exc:
        DeviceModel.load(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_round_trip_and_expected_tensors(bnn):
    dm = DeviceModel.load(bnn)
    spec = expected_tensors(dm.architecture, dm.manifest["tail_blocks"])
    assert set(spec) == set(dm.tensors)
    assert dm.tensors["fused.blocks.0.weight"].dtype == np.uint64
    assert dm.manifest["checksum"]["value"] == checksum(dm.tensors)
    assert dm.split_for_tail(2) == "block2" and dm.is_binary_split("block2") and not dm.is_binary_split("gap")
    assert [p.name for p in bnn.parent.iterdir()] == ["m.bnn"]  # no temp file left behind


def test_corrupted_truncated_wrong_version_mismatched(bnn, tmp_path):
    data = bnn.read_bytes()
    bad = tmp_path / "flip.bnn"
    bad.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    assert "checksum" in _one_line_error(bad)
    (tmp_path / "trunc.bnn").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "trunc.bnn")
    (tmp_path / "junk.bnn").write_bytes(b"not a model at all")
    _one_line_error(tmp_path / "junk.bnn")
    assert "no such" in _one_line_error(tmp_path / "missing.bnn")

    _rewrite(bnn, meta_update={"format_version": "99"})
    assert "version" in _one_line_error(bnn)
    _rewrite(bnn, meta_update={"format_version": "1", "format": "other"})
    assert FORMAT in _one_line_error(bnn)
    _rewrite(bnn, meta_update={"format": FORMAT, "manifest": "{not json"})
    _one_line_error(bnn)


def test_mismatched_tensors_and_fields(tmp_path):
    def fresh(name):
        p = tmp_path / name
        export_model(randomized(), {"classes": [0, 1, 2]}, p)
        return p

    p = fresh("shape.bnn")
    t = load_file(str(p))
    t["fused.blocks.1.scale"] = t["fused.blocks.1.scale"][:-1].copy()
    _rewrite(p, tensors=t, fix_checksum=True)
    assert "fused.blocks.1.scale" in _one_line_error(p)

    p = fresh("dtype.bnn")
    t = load_file(str(p))
    t["stem.weight"] = t["stem.weight"].astype(np.int16)
    _rewrite(p, tensors=t, fix_checksum=True)
    assert "stem.weight" in _one_line_error(p)

    p = fresh("missing.bnn")
    t = load_file(str(p))
    del t["head.weight"]
    _rewrite(p, tensors=t, fix_checksum=True)
    assert "head.weight" in _one_line_error(p)

    p = fresh("nan.bnn")
    t = load_file(str(p))
    t["head.weight"][0, 0] = np.nan
    _rewrite(p, tensors=t, fix_checksum=True)
    assert "NaN" in _one_line_error(p)

    p = fresh("arch.bnn")
    arch = json.loads(TINY.to_json())
    arch["blocks"][1][0] = 24  # another architecture than the tensors
    _rewrite(p, manifest_update={"architecture": arch})
    _one_line_error(p)

    for field, value in [("lr_split", "block9"), ("pretrained_classes", [0, 0, 1]), ("tail_blocks", 7),
                         ("latent_weight_bits", 4), ("layers", [])]:
        p = fresh(f"{field}.bnn")
        _rewrite(p, manifest_update={field: value})
        assert field in _one_line_error(p)


def test_failed_save_keeps_the_old_file(bnn):
    before = bnn.read_bytes()
    dm = build_device_model(randomized(), {"classes": [0, 1, 2]})
    dm.tensors["head.weight"] = dm.tensors["head.weight"][:, :3].copy()
    with pytest.raises(ModelFileError, match="invalid"):
        dm.save(bnn)
    assert bnn.read_bytes() == before
    assert [p.name for p in bnn.parent.iterdir()] == ["m.bnn"]


def test_uniform_quantizer_round_trip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    codes, r = quantize_uniform(x)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    step = (r[1] - r[0]) / 255
    assert np.abs(dequantize_uniform(codes, r) - x).max() <= step * 0.5001
    z = np.zeros((3, 3), np.float32)
    c0, r0 = quantize_uniform(z)
    assert np.array_equal(dequantize_uniform(c0, r0), z)


def test_info_lists_layers_bits_and_memory(bnn, capsys):
    from bnncl.device.info import describe, main

    assert main([str(bnn)]) == 0
    out = capsys.readouterr().out
    assert "blocks.3" in out and "memory by component" in out and "head float32" in out
    d = describe(DeviceModel.load(bnn))
    assert d["total_bytes"] == sum(t.nbytes for t in DeviceModel.load(bnn).tensors.values())
    assert d["memory_bytes"]["head float32"] == 3 * 32 * 4
    assert main([str(bnn), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lr_split"] == "block2"


def test_info_says_how_the_stem_was_trained(tmp_path):
    import json as _json

    from bnncl.assets import model_path
    from bnncl.device.info import describe, format_info

    model = DeviceModel.load(model_path("fmnist-b5", ".bnn"))
    d = describe(model)
    assert d["stem_trained_bits"] == 8 and "quantization-aware" in format_info(d)  # the shipped models
    model.manifest["architecture"]["stem_bits"] = 32
    assert "trained in float32" in format_info(describe(model))
    model.manifest["architecture"]["stem_bits"] = 4  # the validator (same on load) refuses it
    with pytest.raises(ModelFileError, match="stem_bits"):
        model.save(tmp_path / "bad.bnn")
    _json.dumps(d)
