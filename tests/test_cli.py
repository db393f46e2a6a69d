"""The ``bnncl`` command as a user meets it: --version, one-line errors without torch, ``bnncl bench``
alone, closed pipes, shipped models by name, missing-data hints, and what the device wheel carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bnncl
from bnncl import assets
from bnncl.assets import model_path, resolve_model
from bnncl.cli import main
from bnncl.errors import DataError, ModelFileError
from no_torch import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[1]
SRC = Path(bnncl.__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
TORCH_LINE = "needs PyTorch: pip install 'bnncl[torch]'"


def _main(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """``bnncl ARGV`` in process: (exit code, stdout, stderr lines)."""
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


# 1. --version -------------------------------------------------------------------------------------

def test_version(capsys):
    from importlib.metadata import version

    rc, out, _ = _main(capsys, "--version")
    assert rc == 0 and out.strip() == f"bnncl {version('bnncl')}" == f"bnncl {bnncl.__version__}"


# 2. the device install: host commands end with one line, before any work ---------------------------

NO_TORCH = BLOCK_TORCH + textwrap.dedent(
    """
    import contextlib, io, json, sys
    from bnncl.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code
        results.append({"argv": argv, "rc": rc, "out": out.getvalue(), "err": err.getvalue()})
    assert "torch" not in sys.modules
    print(json.dumps(results))
    """
)


def test_host_commands_without_torch_say_how_to_install_it(tmp_path):
    runs = {
        "summary": ["summary", "fmnist-b5"],
        "export": ["export", "fmnist-b5", "-o", str(tmp_path / "x.bnn")],
        "pretrain": ["pretrain", "--data", "embedded", "--arch", "fmnist", "-o", str(tmp_path / "p.safetensors")],
        "run --engine torch": ["run", "--engine", "torch", "--quiet", "--out", str(tmp_path / "torch")],
        "run --compare": ["run", "--compare", "--quiet", "--out", str(tmp_path / "compare")],
    }
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(list(runs.values()))], capture_output=True,
                          text=True, env=ENV, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for command, r in zip(runs, json.loads(proc.stdout)):
        assert r["rc"] == 2, r
        expected = f"bnncl: error: bnncl {command} {TORCH_LINE} (torch==2.13.0, the pinned CPU build)"
        assert r["err"].splitlines() == [expected], r
        assert r["out"] == "", r  # --compare did not start the device run first
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no run folder


def test_a_torch_import_deep_in_a_command_is_one_line(capsys, monkeypatch):
    def needs_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setitem(sys.modules["bnncl.cli"].PASSTHROUGH, "state", needs_torch)
    rc, _, err = _main(capsys, "state", "show", "x")
    assert rc == 2 and err == [f"bnncl: error: bnncl state {TORCH_LINE} (torch==2.13.0, the pinned CPU build)"]


# 3. bnncl bench alone -----------------------------------------------------------------------------

def test_bench_without_a_subcommand_lists_them(capsys):
    rc, out, err = _main(capsys, "bench")
    text = "\n".join(err)
    assert rc == 2 and out == "" and "required" not in text
    assert text.startswith("usage: bnncl bench {kernels,inference,learning,sweeps,soak}")
    for name in ("kernels", "inference", "learning", "sweeps", "soak"):
        assert f"\n  {name} " in text
    rc, out, err = _main(capsys, "bench", "--help")
    assert rc == 0 and out.startswith("usage: bnncl bench") and err == []
    rc, out, err = _main(capsys, "bench", "nope")
    assert rc == 2 and err == [("bnncl: error: unknown benchmark 'nope'; expected one of: kernels, inference, "
                                "learning, sweeps, soak")]


# 5. shipped models by name ------------------------------------------------------------------------

def test_resolver_names_paths_and_search_order(tmp_path, monkeypatch):
    bnn = model_path("fmnist-b5", ".bnn")
    assert bnn.parent == assets.models_dir()  # the device models ship inside bnncl
    assert resolve_model("fmnist-b5", ".bnn") == bnn == resolve_model("fmnist-b5.bnn", ".bnn")
    host = resolve_model("cifar10-b5-fp32", ".safetensors")
    assert host.name == "cifar10-b5-fp32.safetensors" and host.parent != assets.models_dir()
    assert resolve_model(str(bnn), ".bnn") == bnn
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist-b5").write_bytes(b"mine")
    assert resolve_model("fmnist-b5", ".bnn") == Path("fmnist-b5")  # a path that exists wins over a name
    with pytest.raises(ModelFileError) as err:
        resolve_model("fmnist-b6", ".bnn")
    assert str(err.value) == ("fmnist-b6: no such model file, and not the name of a shipped model; shipped device "
                              "(.bnn) models: cifar10-b5, fmnist-b5")
    with pytest.raises(ModelFileError, match=r"no such model file.*host \(.safetensors\) models: cifar10-b5, cifar10"):
        resolve_model("sub/fmnist-b5", ".safetensors")
    own = tmp_path / "models"
    own.mkdir()
    (own / "mine.bnn").write_bytes(b"x")
    monkeypatch.setenv("BNNCL_MODELS", str(own))
    assert resolve_model("mine", ".bnn") == own / "mine.bnn"
    assert "mine" in assets.shipped_names(".bnn")


def test_a_missing_host_model_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(assets, "host_models_dir", lambda: None)
    monkeypatch.delenv("BNNCL_MODELS", raising=False)
    for call in (lambda: model_path("fmnist-b5"), lambda: resolve_model("fmnist-b5", ".safetensors")):
        with pytest.raises(ModelFileError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith("model fmnist-b5.safetensors is not installed (looked in ")
        assert "pip install ./bnncl-models" in msg and "$BNNCL_MODELS" in msg and "\n" not in msg


def test_device_commands_take_a_shipped_name(tmp_path, capsys):
    rc, out, err = _main(capsys, "info", "fmnist-b5")
    assert rc == 0 and str(model_path("fmnist-b5", ".bnn")) in out
    rc, out, _ = _main(capsys, "info", "cifar10-b5", "--json")
    assert rc == 0 and json.loads(out)["path"] == str(model_path("cifar10-b5", ".bnn"))
    rc, out, err = _main(capsys, "info", "nope")
    assert rc == 2 and len(err) == 1 and "shipped device (.bnn) models: cifar10-b5, fmnist-b5" in err[0]

    state, incoming = tmp_path / "state", tmp_path / "incoming"
    incoming.mkdir()
    rc, out, err = _main(capsys, "learn", "--model", "fmnist-b5", "--state", str(state), "--incoming", str(incoming),
                         "--once", "--tail-blocks", "0", "--lr-bits", "8", "--buffer", "200", "--epochs", "1")
    assert rc == 0, err
    assert out.startswith("deployed fmnist-b5 into") and "nothing new to learn" in out
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    rc, out, err = _main(capsys, "predict", "--model", "fmnist-b5", "--state", str(state), str(tmp_path / "x.png"))
    assert rc == 0 and out.startswith(f"{tmp_path / 'x.png'}\t"), err
    rc, out, err = _main(capsys, "predict", "--model", "nope", "--state", str(state), str(tmp_path / "x.png"))
    assert rc == 2 and len(err) == 1 and err[0].startswith("bnncl predict: error: nope: no such model file")

    # 4. a closed pipe ends the command quietly (`bnncl ... | head -1`)
    for argv in (["state", "show", str(state), "--json"], ["info", "fmnist-b5", "--json"], ["--help"]):
        proc = subprocess.Popen([sys.executable, "-m", "bnncl", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=ENV)
        proc.stdout.close()  # before the interpreter has started: every write meets a closed pipe
        err = proc.stderr.read().decode()
        expected = 0 if argv == ["--help"] else 1  # argparse itself ignores a failed write of its help
        assert proc.wait(timeout=120) == expected and err == "", (argv, err)


def test_run_takes_a_shipped_name():
    from bnncl.data.protocols import get_protocol
    from bnncl.experiment import _model_file, config_for

    spec = get_protocol("cifar10-b5")
    cfg = config_for("cifar10-b5", model="fmnist-b5")
    assert _model_file(cfg, spec, ".bnn") == model_path("fmnist-b5", ".bnn")
    assert _model_file(cfg, spec, ".safetensors") == model_path("fmnist-b5", ".safetensors")
    with pytest.raises(ModelFileError, match="^nope: no such model file"):
        _model_file(config_for("cifar10-b5", model="nope"), spec, ".bnn")


def test_host_commands_take_a_shipped_name(tmp_path, capsys):
    pytest.importorskip("torch")
    rc, out, err = _main(capsys, "summary", "fmnist-b5")
    assert rc == 0 and out.startswith("birealnet6-fmnist"), err
    rc, out, err = _main(capsys, "summary", "nope")
    assert rc == 2 and err == [("bnncl: error: nope: no such model file, and not the name of a shipped model; shipped "
                                "host (.safetensors) models: cifar10-b5, cifar10-b5-fp32, fmnist-b5, fmnist-b5-fp32")]
    rc, out, err = _main(capsys, "export", "fmnist-b5", "-o", str(tmp_path / "x.bnn"))
    assert rc == 0 and out.startswith(f"wrote {tmp_path / 'x.bnn'}"), err
    from bnncl.device.modelfile import DeviceModel

    exported, shipped = DeviceModel.load(tmp_path / "x.bnn"), DeviceModel.load(model_path("fmnist-b5", ".bnn"))
    assert sorted(exported.tensors) == sorted(shipped.tensors)


# 6. missing data says where bnncl looked and how to provide it --------------------------------------

def test_missing_cifar10_says_where_and_how(tmp_path, monkeypatch, capsys):
    from bnncl.data import cifar10, load_dataset

    monkeypatch.setenv("BNNCL_CIFAR10", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train")
    assert str(err.value) == (
        f"CIFAR-10 not found (looked in $BNNCL_CIFAR10={tmp_path / 'nowhere'}: no such file or folder); download "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and set "
        "BNNCL_CIFAR10=<folder> (cifar-10-batches-py or the folder holding it)")
    rc, _, err = _main(capsys, "run", "--protocol", "cifar10-b5", "--quiet", "--out", str(tmp_path / "run"))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("bnncl: error: CIFAR-10 not found (looked in $BNNCL_CIFAR10=")

    monkeypatch.delenv("BNNCL_CIFAR10")
    monkeypatch.setattr(cifar10, "default_cifar10_path", lambda: tmp_path / "cifar10-jpeg.tar.gz")
    with pytest.raises(DataError, match=r"^CIFAR-10 not found \(looked in \$BNNCL_CIFAR10 \(not set\), "
                                        r"shared/data/cifar10/cifar10-jpeg.tar.gz in the parent folders of .*\); "
                                        r"download cifar-10-python.tar.gz from https://www.cs.toronto.edu/"):
        load_dataset("cifar10", "test")


def test_missing_fashion_mnist_says_where_and_how(tmp_path, monkeypatch):
    from bnncl.data import load_dataset

    monkeypatch.setenv("BNNCL_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_dataset("fmnist", "train")
    msg = str(err.value)
    assert msg.startswith(f"Fashion-MNIST not found (looked for train-images-idx3-ubyte[.gz] in "
                          f"$BNNCL_FASHION_MNIST={tmp_path}); apt-get install dataset-fashion-mnist, or set "
                          "BNNCL_FASHION_MNIST to the folder with the official IDX files")
    monkeypatch.delenv("BNNCL_FASHION_MNIST")
    monkeypatch.setattr("bnncl.data.idx.DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(DataError, match=r"in \$BNNCL_FASHION_MNIST \(not set\), .*/none\); apt-get install"):
        load_dataset("fmnist", "test")


# 7. what the device wheel carries -----------------------------------------------------------------

#: The bnncl package without compiled extensions: ~0.7 MB of Python and C sources, the embedded
#: Fashion-MNIST subset (3.6 MB of xz'd IDX, needed offline by `bnncl run` and to deploy fmnist-b5) and
#: the fmnist-b5 device model (0.5 MB). The host models and the cifar10-b5 device model live in
#: bnncl-models/ (19 MB, not needed for the default job). The built wheel: tests/test_wheel.py.
PACKAGE_DATA_BUDGET = 5_000_000


def test_package_data_stays_small_and_has_no_host_models():
    pkg = REPO / "src" / "bnncl"
    files = [p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and not p.name.endswith((".so", ".pyd", ".pyc"))]
    assert not [p for p in files if p.suffix == ".safetensors"]
    total = sum(p.stat().st_size for p in files)
    assert total < PACKAGE_DATA_BUDGET, f"bnncl package data {total:,} bytes"
    host = REPO / "bnncl-models" / "src" / "bnncl_models"
    shipped = sorted(f"{n}.safetensors" for n in assets.SHIPPED_MODELS)
    assert sorted(p.name for p in host.glob("*.safetensors")) == shipped
    assert (host / "cifar10-b5.bnn").is_file() and not (pkg / "assets" / "models" / "cifar10-b5.bnn").exists()
    assert 'bnncl_models = ["*.safetensors", "*.bnn"]' in (REPO / "bnncl-models" / "pyproject.toml").read_text()


def test_export_c_embeds_the_deployed_streaming_lda_state(tmp_path, capsys):
    assert main(["export-c", "fmnist-b5", "-o", str(tmp_path / "a")]) == 0
    plain = capsys.readouterr().out
    assert main(["export-c", "fmnist-b5", "-o", str(tmp_path / "b"), "--deploy", "--capacity", "12"]) == 0
    out = capsys.readouterr().out
    assert "initial streaming-LDA state" in out and "initial" not in plain
    # means (12 x 128 float32) + counts (12 int64) + the packed covariance (128 * 129 / 2 float32), at least
    state = int(out.split("initial streaming-LDA state ")[1].split(" bytes")[0])
    assert state >= 12 * 128 * 4 + 12 * 8 + 128 * 129 // 2 * 4
    assert (tmp_path / "b" / "model.c").stat().st_size > (tmp_path / "a" / "model.c").stat().st_size
    assert main(["export-c", "cifar10-b5", "-o", str(tmp_path / "c"), "--deploy"]) == 2
    assert "cifar10-b5.bnn: not the shipped fmnist-b5 model; give --base DIR" in capsys.readouterr().err


def test_export_c_cwr_star_embeds_the_deployed_learner(tmp_path, capsys):
    """``--strategy cwr_star --deploy``: the same model.c as the documented Python recipe (a head-only CWR* Learner
    with the portable stream deployed on the embedded base images, ``export_c(cwr=cwr_export(...))``); the learning
    settings come from the settings table; settings that do not apply are refused with one line."""
    from bnncl.api import Learner
    from bnncl.data.embedded import load_embedded
    from bnncl.device.export_c import cwr_export, export_c

    flags = ["--strategy", "cwr_star", "--capacity", "10", "--buffer", "200", "--minibatch", "32", "--epochs", "auto",
             "--standardize", "on", "--mixing", "balanced", "--cwr-max-k", "1", "--lr", "0.1", "--max-images", "50"]
    assert main(["export-c", "fmnist-b5", "-o", str(tmp_path / "cli"), *flags, "--deploy"]) == 0
    out = capsys.readouterr().out
    assert "initial CWR* state" in out and "learn scratch" in out
    learner = Learner("fmnist-b5", num_classes=10, strategy="cwr_star", tail_blocks=0, lr_bits=8, buffer=200,
                      minibatch=32, epochs=None, standardize="on", mixing="balanced", cwr_max_k=1.0, lr=0.1,
                      rng="portable")
    train = load_embedded("train")
    base = np.isin(train.labels, learner.model.pretrained_classes)
    learner.deploy(train.images[base], train.labels[base])
    figures = export_c(learner.model, tmp_path / "py", cwr=cwr_export(learner.learner, 50, learner._next))
    for name in ("model.c", "model_config.h"):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "py" / name).read_text(), name
    config = (tmp_path / "py" / "model_config.h").read_text()
    assert "#define BNNCL_STRATEGY 2 " in config and "#define BNNCL_CWR_MAX_IMAGES 50 " in config
    assert f"#define BNNCL_CWR_STATE_BYTES {figures['cwr_state_bytes']} " in config
    for extra, message in ((["--strategy", "cwr_star", "--lr-bits", "1"], "--lr-bits 1 does not apply"),
                           (["--strategy", "naive"], "libbnncl learns with slda or cwr_star"),
                           (["--minibatch", "4"], "--minibatch apply to --strategy cwr_star only")):
        assert main(["export-c", "fmnist-b5", "-o", str(tmp_path / "bad"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
