"""The settings table: one declaration per learning setting, the same flags on `bnncl run` and `bnncl learn`,
one check at the edge (one-line errors, the device's own bit rule), one builder of engine + buffer + learner."""

import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

from bnncl.cli import build_parser as run_parser_root
from bnncl.cli import main
from bnncl.device.quantize import check_bits
from bnncl.errors import BnnclError
from bnncl.service import learn
from bnncl.settings import DEFAULTS, SETTINGS, LearningSettings, given_settings


def _run_parser():
    sub = next(a for a in run_parser_root()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return sub.choices["run"]


def _options(parser):
    return {opt: a for a in parser._actions for opt in a.option_strings}


BAD = [  # flag, value, the error's tail
    ("--qb", "28", "expected 1..24 or 32 bits, got 28"),
    ("--qf", "0", "expected 1..24 or 32 bits, got 0"),
    ("--qw", "33", "expected 1..24 or 32 bits, got 33"),
    ("--qb", "abc", "expected 1..24 or 32 bits, got 'abc'"),
    ("--lr-bits", "4", "expected 1, 8 or 32 bits, got 4"),
    ("--qw-rounding", "up", "expected stochastic or nearest, got 'up'"),
    ("--tail-blocks", "4", "expected 0..3 blocks, got 4"),
    ("--buffer", "0", "expected an integer >= 1, got 0"),
    ("--epochs", "1.5", "expected an integer >= 1 or 'auto', got '1.5'"),
    ("--lr", "-0.1", "expected a positive number, got -0.1"),
    ("--lr", "nan", "expected a positive number, got nan"),
    ("--minibatch", "0", "expected an integer >= 1, got 0"),
    ("--seed", "-1", "expected an integer >= 0, got -1"),
    ("--new-per-class", "0", "expected an integer >= 1 or 'all', got 0"),
]


@pytest.mark.parametrize("flag,value,message", BAD)
def test_bad_setting_is_one_line_for_run(flag, value, message, capsys):
    assert main(["run", "--quiet", "--out", "/nonexistent/never-written", flag, value]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"bnncl: error: {flag}: {message}"] and out == ""


@pytest.mark.parametrize("flag,value,message", BAD)
def test_bad_setting_is_one_line_for_learn(flag, value, message, tmp_path, capsys):
    (tmp_path / "inc").mkdir()
    from bnncl.assets import model_path

    argv = ["--model", str(model_path("fmnist-b5", ".bnn")), "--state", str(tmp_path / "st"),
            "--incoming", str(tmp_path / "inc"), "--once"]
    assert learn.main(argv + [flag, value]) == 2
    assert capsys.readouterr().err.splitlines() == [f"bnncl learn: error: {flag}: {message}"]
    assert not (tmp_path / "st" / "CURRENT").exists()


def test_qb_28_from_the_shell_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnncl", "run", "--qb", "28", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["bnncl: error: --qb: expected 1..24 or 32 bits, got 28"]


def test_bit_settings_follow_the_device_rule():
    def device_ok(b):
        try:
            check_bits("b", b)
            return True
        except ValueError:
            return False

    for name in ("qf", "qb", "qw"):
        for b in range(-1, 40):
            try:
                LearningSettings(**{name: b})
                ok = True
            except BnnclError:
                ok = False
            assert ok == device_ok(b), (name, b)


def test_every_setting_is_a_flag_of_both_commands_with_the_same_default_and_help():
    run, lrn = _options(_run_parser()), _options(learn.build_parser())
    assert [f.name for f in fields(LearningSettings)] == [s.name for s in SETTINGS]
    for s in SETTINGS:
        assert getattr(LearningSettings, s.name) == s.default
        a, b = run[s.flag], lrn[s.flag]
        assert a.dest == b.dest == s.name and a.default is None and b.default is None  # None: not given
        assert a.metavar == b.metavar
        shown = f"default {s.show(s.default)}"
        assert a.help.startswith(f"{s.help} (") and b.help.startswith(f"{s.help} (")
        assert shown in a.help and b.help.endswith(shown + ")")
        assert b.help == a.help.split(shown)[0] + shown + ")"  # run adds only the protocols that tune it


def test_one_default_each():
    from bnncl.cl.learner import LearnerConfig

    cfg = LearnerConfig()
    assert (cfg.epochs, cfg.lr, cfg.minibatch_size, cfg.seed, cfg.new_per_class) == (
        DEFAULTS["epochs"], DEFAULTS["lr"], DEFAULTS["minibatch"], DEFAULTS["seed"], DEFAULTS["new_per_class"])
    assert LearnerConfig.from_settings(LearningSettings()) == cfg


def test_protocol_tuning_and_user_flags():
    from bnncl.experiment import run_config

    def cfg(*argv):
        args = _run_parser().parse_args(list(argv))
        return run_config(args.protocol, given_settings(args))

    tuned = cfg("--protocol", "cifar10-b5")
    assert (tuned.epochs, tuned.lr, tuned.new_per_class, tuned.qb) == (16, 0.2, 300, DEFAULTS["qb"])
    mine = cfg("--protocol", "cifar10-b5", "--epochs", "3", "--new-per-class", "all", "--qb", "12")
    assert (mine.epochs, mine.lr, mine.new_per_class, mine.qb) == (3, 0.2, None, 12)
    assert cfg().epochs == DEFAULTS["epochs"]
    assert "cifar10-b5: 16" in _options(_run_parser())["--epochs"].help


def test_settings_are_checked_when_built():
    with pytest.raises(BnnclError, match="^--qb: expected 1..24 or 32 bits, got 28$"):
        LearningSettings(qb=28)
    from bnncl.experiment import RunConfig

    with pytest.raises(BnnclError, match="--threads"):
        RunConfig(threads=0)


def test_session_does_not_import_the_learn_command():
    code = "import sys, bnncl.service.session; sys.exit('bnncl.service.learn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_learner_checks_latents_once():
    """Latents are checked where they enter the learner; the buffer and the engine's step are given
    what was checked (the engine's unchecked ``_train_batch`` where it has one)."""
    from bnncl.cl.learner import ContinualLearner, LearnerConfig
    from bnncl.cl.linear_engine import NumpyLinearEngine
    from bnncl.cl.replay import LatentReplayBuffer

    eng = NumpyLinearEngine((2, 2, 1), 3, seed=0)
    steps = []
    eng._train_batch = lambda x, y, lr: steps.append(len(y)) or 0.0
    eng.train_batch = lambda *a: pytest.fail("the learner used the checked step")
    buf = LatentReplayBuffer((4,), capacity=30, bits=32)
    buf._check_batch = lambda *a: pytest.fail("the buffer re-checked what the learner checked")
    learner = ContinualLearner(eng, LearnerConfig("cwr_star", epochs=2, minibatch_size=16), buf)
    rng = np.random.default_rng(0)
    learner.deploy(rng.normal(size=(40, 4)).astype(np.float32), np.repeat([0, 1], 20))
    learner.learn_images(rng.integers(0, 256, (20, 2, 2, 1), dtype=np.uint8), np.full(20, 2), 1)
    assert sum(steps) == 2 * (20 + 30) and len(buf) == 30
    with pytest.raises(ValueError, match="NaN"):
        learner.train_experience(np.full((2, 4), np.nan, np.float32), np.zeros(2, np.int64), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        learner.learn_images(np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 3]), 2)


def test_tail_blocks_follow_the_strategy_unless_given():
    assert LearningSettings().strategy == "slda" and LearningSettings().tail_blocks == 0
    assert LearningSettings(strategy="cwr_star").tail_blocks == 2
    assert LearningSettings(strategy="cwr_star", tail_blocks=1).tail_blocks == 1
    assert LearningSettings(strategy="slda", tail_blocks=0).tail_blocks == 0
    with pytest.raises(BnnclError, match=r"^--tail-blocks 2: --strategy slda trains no tail"):
        LearningSettings(strategy="slda", tail_blocks=2)


@pytest.mark.parametrize("name,value,message", [
    ("strategy", "lda", "--strategy: expected slda, cwr_star, cwr, naive, joint or probe, got 'lda'"),
    ("shrinkage", 1.5, r"--shrinkage: expected a number in \[0, 1\), got 1.5"),
    ("cov_bits", 8, "--cov-bits: expected 32 or 16 bits, got 8"),
])
def test_slda_settings_are_checked(name, value, message):
    with pytest.raises(BnnclError, match=message):
        LearningSettings(**{name: value})
