"""The public API: docs/python-api.md runs as written, ``import bnncl`` stays light, names and reprs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import bnncl

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

PUBLIC = {"BnnclError", "DeviceModel", "FrozenEngine", "Learner", "LearnerSession", "RunResult", "Scenario",
          "load_dataset", "load_model", "open_session", "run_protocol", "scenario_from_arrays",
          "scenario_from_folder", "summary"}


def _env() -> dict[str, str]:
    src = str(Path(bnncl.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def doc_namespace() -> dict:
    """Every ```python block of the page, in order, in one namespace (what a reader would run)."""
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 5, f"{DOC}: expected the example's code blocks, found {len(blocks)}"
    ns: dict = {"__name__": "__doc_example__"}
    out = io.StringIO()
    with redirect_stdout(out):
        for i, code in enumerate(blocks):
            exec(compile(code, f"{DOC.name}[block {i}]", "exec"), ns)  # noqa: S102 - the page's own example
    ns["_stdout"] = out.getvalue()
    return ns


def test_example_loads_the_model_and_runs_the_frozen_engine(doc_namespace):
    ns = doc_namespace
    assert isinstance(ns["model"], bnncl.DeviceModel)
    assert 0.8 < ns["base_accuracy"] <= 1.0  # the shipped model on its own base classes
    assert "DeviceModel('fmnist-b5', 28x28x1" in ns["_stdout"]


def test_example_learns_two_new_classes_from_arrays(doc_namespace):
    ns = doc_namespace
    assert ns["stats"].n_new == len(ns["new"]) and ns["stats"].n_replay == 0  # slda: no replay
    assert ns["cwr_stats"].n_new == len(ns["new"]) and ns["cwr_stats"].n_replay > 0
    assert set(np.unique(ns["predicted"])) <= {0, 1, 2, 3, 4, 5, 7}
    assert ns["new_accuracy"] > 0.5  # chance among the 7 seen classes is 1/7
    assert 1 / 7 < ns["seen"].accuracy_all <= 1.0


def test_example_avalanche_loop(doc_namespace):
    ns = doc_namespace
    history = ns["history"]
    assert len(history) == len(ns["scenario"].train_stream) == 6
    assert all(0.0 <= a <= 1.0 for a in history)
    assert history[-1] > 0.5  # ten classes at the end: chance is 0.1
    assert ns["metrics"].seen_classes == list(range(10))


def test_example_session_learns_and_predicts_by_name(doc_namespace):
    ns = doc_namespace
    session = ns["session"]
    assert isinstance(session, bnncl.LearnerSession) and session.generation == 2
    names = [name for name, _ in ns["answers"]]
    assert names.count("Sneaker") >= 3, ns["answers"]
    assert all(0.0 < score <= 1.0 for _, score in ns["answers"])


def test_example_protocol_metrics(doc_namespace):
    result = doc_namespace["result"]
    assert isinstance(result, bnncl.RunResult)
    assert len(result.experiences) == 6 and len(result.accuracies) == 6
    assert all(0.0 <= a <= 1.0 for a in result.accuracies)
    assert 0.5 < result.final_accuracy <= 1.0 and result.final_accuracy == result.accuracies[-1]
    assert result.to_dict()["final_accuracy"] == result.final_accuracy
    assert result.memory_bytes["total"] > 0


def test_example_summary(doc_namespace):
    info = doc_namespace["info"]
    assert info["lr_split"] == "block4" and info["total_bytes"] > 0


def test_dir_lists_the_public_names_each_documented():
    names = set(dir(bnncl))
    assert PUBLIC <= names and set(bnncl.__all__) == PUBLIC
    for name in PUBLIC:
        obj = getattr(bnncl, name)
        assert (obj.__doc__ or "").strip(), f"bnncl.{name} has no docstring"
    doc = DOC.read_text(encoding="utf-8")
    missing = [name for name in PUBLIC if f"`{name}" not in doc]
    assert not missing, f"{DOC.name} does not document {missing}"
    with pytest.raises(AttributeError):
        bnncl.no_such_name  # noqa: B018


def test_import_bnncl_is_light():
    code = ("import bnncl, sys; assert 'torch' not in sys.modules; assert 'numpy' not in sys.modules; "
            "bnncl.Learner; bnncl.load_model('fmnist-b5'); bnncl.scenario_from_arrays; bnncl.run_protocol; "
            "bnncl.summary; bnncl.open_session; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_reprs_are_short_and_informative(tmp_path):
    model = bnncl.load_model("fmnist-b5")
    assert repr(model) == "DeviceModel('fmnist-b5', 28x28x1, 6 blocks, 5 of 10 classes pretrained, lr split block4)"
    train = bnncl.load_dataset("embedded", "train")
    assert re.fullmatch(r"ImageDataset\('.*:train', 4500 images 28x28x1, 10 classes\)", repr(train))
    assert repr(bnncl.Learner(model)) == ("Learner('fmnist-b5', slda, shrinkage 0.0001, 32-bit covariance, "
                                          "0 of 10 classes seen)")
    learner = bnncl.Learner(model, strategy="cwr_star", epochs=1)
    assert repr(learner) == ("Learner('fmnist-b5', cwr_star, tail 2 blocks q 8/16/8, 1-bit replay of 1500, "
                             "0 of 10 classes seen)")
    assert repr(learner.engine).startswith("DeviceEngine(28x28x1, split block4 (binary latents 7x7x128)")
    assert repr(learner.buffer).startswith("LatentReplayBuffer(0/1500 latents 7x7x128 at 1 bit, 0 classes")
    assert repr(learner.learner).startswith("ContinualLearner(cwr_star, 1 epochs")
    scenario = bnncl.scenario_from_arrays(train.images, train.labels, base_classes=range(5))
    assert repr(scenario) == "Scenario('nc', 6 experiences, 4500 train images, 10 classes, seed 0)"
    assert repr(scenario.stream) == "Stream('nc', 6 experiences, 10 classes, seed 0)"
    assert repr(scenario.stream[1]) == "Experience(#1, 600 patterns, classes [5])"
    assert repr(scenario.train_stream[0]) == "ScenarioExperience(#0, 1500 images, classes [0, 1, 2, 3, 4], base)"
    assert scenario.test_stream == ()
    small = train.select(np.flatnonzero(train.labels < 6)[::10])
    learner.deploy(*[a[small.labels < 5] for a in (small.images, small.labels)])
    learner.learn(small.images[small.labels == 5], small.labels[small.labels == 5])
    r = learner.eval(small)
    assert re.fullmatch(r"ExperienceResult\(#1, classes \[5\], accuracy 0\.\d{3} all / 0\.\d{3} seen, 6 classes seen, "
                        r"\d+\.\d\d s\)", repr(r)), repr(r)
    for obj in (model, learner, learner.engine, learner.buffer, learner.learner, scenario, r):
        assert len(repr(obj)) < 160 and "array(" not in repr(obj)


def test_learner_refuses_bad_input():
    learner = bnncl.Learner("fmnist-b5", epochs=1)
    with pytest.raises(bnncl.BnnclError, match="nothing learned yet"):
        learner.predict(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(bnncl.BnnclError, match="not pretrained"):
        learner.deploy(np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 7]))
    with pytest.raises(bnncl.BnnclError, match="unknown setting"):
        bnncl.Learner("fmnist-b5", epoch=3)
    with pytest.raises(bnncl.BnnclError):
        bnncl.Learner("fmnist-b5", qf=0)
    with pytest.raises(bnncl.BnnclError, match="no such file|not the name"):
        bnncl.load_model("no-such-model")
    with pytest.raises(bnncl.BnnclError, match="kind must be"):
        bnncl.scenario_from_arrays(np.zeros((4, 28, 28), np.uint8), np.array([0, 0, 1, 1]), kind="xx")
