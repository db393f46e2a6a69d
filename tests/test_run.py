"""`bnncl run` end to end on the embedded default (short: 1 epoch per experience)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bnncl.cli import main
from bnncl.errors import BnnclError
from bnncl.experiment import RunConfig, run_protocol


@pytest.fixture(scope="module")
def device_result():
    return run_protocol(RunConfig(strategy="cwr_star", epochs=1, seed=0))


def test_device_run_results_fields(device_result):
    r = device_result
    assert r["protocol"] == "fmnist-b5" and r["engine"] == "device"
    assert [e["classes"] for e in r["experiences"]] == [[0, 1, 2, 3, 4], [5], [6], [7], [8], [9]]
    for e in r["experiences"]:
        assert {"accuracy_all", "accuracy_seen", "train_seconds"} <= set(e)
    assert set(r["memory_bytes"]) >= {"backbone", "tail", "head", "replay", "total"}
    # 1-bit latents: 1500 patterns of 7x7x128 bits
    assert r["memory_bytes"]["replay"] >= 1500 * 7 * 7 * 128 // 8
    assert r["memory_bytes"]["replay"] < 1500 * 7 * 7 * 128 // 8 * 1.1
    # the deployed model already knows the base classes; CWR* + replay keeps a good share of them
    assert r["experiences"][0]["accuracy_seen"] > 0.90
    assert r["final_accuracy"] > 0.55
    assert r["experiences"][-1]["accuracy_all"] == r["final_accuracy"]


def test_run_is_deterministic(device_result):
    again = run_protocol(RunConfig(strategy="cwr_star", epochs=1, seed=0))
    assert [e["accuracy_all"] for e in again["experiences"]] == [
        e["accuracy_all"] for e in device_result["experiences"]
    ]


def test_default_slda_run_learns_without_replay_and_beats_cwr_star(device_result):
    r = run_protocol(RunConfig(seed=0))
    assert r["config"]["strategy"] == "slda" and r["config"]["tail_blocks"] == 0
    mem = r["memory_bytes"]
    assert mem["replay"] == 0 and mem["tail"] == 0 and mem["head"] == 0
    # means (10 x 128 float32) + counts (10 int64) + the packed covariance triangle (128 * 129 / 2 float32)
    # + the leave-one-out counts of the shrinkage selection (11 int64)
    assert mem["strategy"] == 10 * 128 * 4 + 10 * 8 + 128 * 129 // 2 * 4 + 11 * 8
    assert all(e["n_replay"] == 0 for e in r["experiences"])
    assert r["final_accuracy"] > device_result["final_accuracy"] + 0.03
    again = run_protocol(RunConfig(seed=0))
    assert [e["accuracy_all"] for e in again["experiences"]] == [e["accuracy_all"] for e in r["experiences"]]


def test_naive_forgets(device_result):
    naive = run_protocol(RunConfig(epochs=1, strategy="naive"))
    assert naive["final_accuracy"] < device_result["final_accuracy"] - 0.2


def test_cli_writes_results_and_plot(tmp_path):
    out = tmp_path / "out"
    code = main(["run", "--epochs", "1", "--tail-blocks", "0", "--lr-bits", "8", "--quiet", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["tail_blocks"] == 0 and res["config"]["lr_bits"] == 8
    sw = res["software"]  # what produced the figure
    assert sw["bnncl"] and sw["numpy"] == np.__version__ and sw["kernel_path"]
    assert sw["git"] is None or (len(sw["git"]["commit"]) == 40 and isinstance(sw["git"]["dirty"], bool))
    assert (out / "accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize("args,message", [
    (["--strategy", "cwr_star", "--lr-bits", "1", "--tail-blocks", "0"], "needs a binary latent-replay layer"),
    (["--tail-blocks", "2"], "--tail-blocks 2: --strategy slda trains no tail"),
    (["--protocol", "nope"], "unknown protocol"),
    (["--qf", "0"], "--qf: expected 1..24 or 32 bits, got 0"),
    (["--model", "/nonexistent.bnn"], "/nonexistent.bnn: no such"),
])
def test_cli_bad_arguments_give_one_line(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnncl", "run", "--epochs", "1", "--quiet", "--out", str(tmp_path)] + args,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_config_for_layers_user_over_protocol_over_defaults():
    from dataclasses import fields

    from bnncl.data.protocols import PROTOCOLS
    from bnncl.experiment import NO_CAP, config_for
    from bnncl.settings import LearningSettings

    known = {f.name for f in fields(LearningSettings)}
    for spec in PROTOCOLS.values():
        assert set(spec.settings) <= known, f"{spec.name}: settings must be LearningSettings fields"
        config_for(spec.name).validate()
    tuned = config_for("cifar10-b5")
    assert (tuned.epochs, tuned.lr, tuned.new_per_class) == (16, 0.2, 300)
    assert tuned.qb == LearningSettings.qb  # untouched settings keep the global default
    mine = config_for("cifar10-b5", epochs=3, lr=None, new_per_class=NO_CAP)
    assert (mine.epochs, mine.lr, mine.new_per_class) == (3, 0.2, None)
    assert config_for().epochs == LearningSettings.epochs and config_for().new_per_class is None


@pytest.mark.parametrize("text,expected", [("all", None), ("ALL", None), ("300", 300)])
def test_new_per_class_flag(text, expected):
    from bnncl.cli import build_parser
    from bnncl.experiment import run_config
    from bnncl.settings import given_settings

    given = given_settings(build_parser().parse_args(["run", "--new-per-class", text]))
    assert given == {"new_per_class": expected}
    assert run_config("cifar10-b5", given).new_per_class == expected  # 'all' lifts the protocol's cap


@pytest.mark.parametrize("text", ["0", "-3", "some"])
def test_new_per_class_flag_rejects_nonsense(text, capsys):
    assert main(["run", "--new-per-class", text, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bnncl: error: --new-per-class: expected an integer >= 1 or 'all', got "
                   f"{int(text) if text != 'some' else repr(text)}"]


def test_settings_line_names_the_resolved_settings():
    from dataclasses import asdict

    from bnncl.experiment import config_for, run_config
    from bnncl.report.tables import settings_line

    line = settings_line(asdict(config_for("cifar10-b5", strategy="cwr_star")))
    assert "epochs 16" in line and "lr 0.2" in line and "new per class 300" in line and "8/16/8" in line
    assert "K=2 tail blocks" in line
    assert "new per class all" in settings_line(asdict(config_for(strategy="cwr_star")))
    auto = run_config("fmnist-b5", {"strategy": "cwr_star", "epochs": None})  # --epochs auto
    assert "epochs auto" in settings_line(asdict(auto))
    assert settings_line(asdict(config_for())) == ("slda on the frozen pooled features, shrinkage 0.0001, "
                                                   "covariance at 32 bits, seed 0")


def test_fewshot_protocol_learns_each_new_class_from_k_images():
    r = run_protocol(RunConfig(protocol="fmnist-fewshot", shots=5, seed=0))
    assert [e["n_new"] for e in r["experiences"][1:]] == [5] * 5
    assert r["config"]["shots"] == 5 and r["final_accuracy"] > 0.5  # ten classes: chance is 0.1
    with pytest.raises(BnnclError, match="does not take shots"):
        run_protocol(RunConfig(shots=5))


def test_cross_domain_protocol_starts_from_an_empty_head():
    seen_heads = []

    def builder(cfg, spec, num_classes):
        from bnncl.experiment import build_engine

        engine = build_engine(cfg, spec, num_classes)
        seen_heads.append(engine)
        return engine

    r = run_protocol(RunConfig(protocol="fmnist-on-cifar", strategy="cwr_star", tail_blocks=0, lr_bits=8),
                     engine_builder=builder)
    engine = seen_heads[0]
    engine.reset_tail()  # back to the deployment state: the cleared head
    assert not np.any(engine.get_head())
    assert r["experiences"][0]["classes"] == [0, 1] and len(r["experiences"]) == 5
    first = r["experiences"][0]
    assert first["seen_classes"] == [0, 1] and first["accuracy_seen"] > 0.8  # T-shirt vs trouser
    assert first["accuracy_all"] <= 0.2 + 1e-9  # the other eight classes are not known yet
