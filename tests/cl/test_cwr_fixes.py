"""Head-only CWR* without recency collapse: epochs from the experience size, fixed feature standardization,
the capped merge weight (issue 11, item 2)."""

import json

import numpy as np
import pytest

from bnncl.cl.cwr import CWRStar, FeatureStandardizer
from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.linear_engine import NumpyLinearEngine
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.cl.state import StateStore
from bnncl.cl.strategies import AUTO_PRESENTATIONS, MAX_AUTO_EPOCHS, MIN_AUTO_EPOCHS, auto_epochs
from synthetic_images import SHAPE, class_images


def images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return class_images(6, n_per_class, seed, means_seed=7)


TRAIN = images(40, 1)


def learner(**config) -> ContinualLearner:
    engine = NumpyLinearEngine(SHAPE, 6, proj_dim=16, seed=0)
    cfg = LearnerConfig("cwr_star", **({"epochs": 2, "lr": 0.1, "minibatch_size": 32} | config))
    return ContinualLearner(engine, cfg, LatentReplayBuffer(engine.latent_shape, 60, 8, seed=0))


def learn(lrn: ContinualLearner, classes: tuple[int, ...], index: int, **kw) -> None:
    mask = np.isin(TRAIN[1], classes)
    lrn.learn_images(TRAIN[0][mask], TRAIN[1][mask], index, **kw)


# -- epochs="auto" --------------------------------------------------------------------------------
def test_auto_epochs_rule():
    assert auto_epochs(100, 100) == AUTO_PRESENTATIONS  # proportional mixing: every new pattern once an epoch
    assert auto_epochs(40, 100) == -(-AUTO_PRESENTATIONS * 100 // 40)  # balanced mixing of a large experience
    assert auto_epochs(250, 10) == MIN_AUTO_EPOCHS  # ten images cycled 25 times an epoch: the floor
    assert auto_epochs(1, 10_000) == MAX_AUTO_EPOCHS
    assert auto_epochs(0, 0) == MIN_AUTO_EPOCHS and auto_epochs(5, 0) == MIN_AUTO_EPOCHS
    assert MIN_AUTO_EPOCHS <= AUTO_PRESENTATIONS <= MAX_AUTO_EPOCHS


@pytest.mark.parametrize("mixing", ["proportional", "balanced"])
def test_auto_epochs_presents_each_new_pattern_about_the_target_times(mixing):
    lrn = learner(epochs=None, mixing=mixing)
    learn(lrn, (0, 1, 2), 0)
    step = lrn.engine.train_batch  # the learner uses _train_batch where an engine has one; this one has not
    presented = []
    epochs = set()

    def counting(x, y, lr):
        presented.append(int(np.sum(y == 3)))  # class 3 is the only new class and not in the buffer
        return step(x, y, lr)

    lrn.engine.train_batch = counting
    learn(lrn, (3,), 1, on_batch=lambda p: epochs.add(p.epoch))
    n_new = int(np.sum(TRAIN[1] == 3))
    per_image = sum(presented) / n_new
    per_epoch = per_image / len(epochs)
    assert AUTO_PRESENTATIONS <= per_image < AUTO_PRESENTATIONS + per_epoch + 1e-9
    if mixing == "proportional":
        assert len(epochs) == AUTO_PRESENTATIONS and per_image == AUTO_PRESENTATIONS
    else:  # 40 new images and 60 replayed (3 classes) in 4 minibatches of 32: 32 slots per class, 0.8 per image
        assert round(per_epoch * n_new) == 32 and len(epochs) == auto_epochs(32, n_new) == 20


# -- the capped merge weight ---------------------------------------------------------------------
def test_max_k_caps_the_merge_weight_of_old_rows():
    cwr = CWRStar(3, 2, max_k=1.0)
    cwr.cw[0] = [5, -1]
    cwr.past[0] = 4
    trained = np.array([[3, 1], [1, -1], [100, 100]], dtype=np.float32)
    cwr.end_experience(trained, [0, 1], {0: 1, 1: 5})
    # avg = 1; w'0 = [2, 0]; the paper's k = sqrt(4 / 1) = 2 is capped at 1: cw = ([5, -1] + [2, 0]) / 2
    np.testing.assert_allclose(cwr.cw[0], [3.5, -0.5])
    np.testing.assert_allclose(cwr.cw[1], [0, -2])
    with pytest.raises(ValueError, match="max_k"):
        CWRStar(3, 2, max_k=-1.0)


# -- standardization ----------------------------------------------------------------------------
def test_standardizer_fit_once_head_rows_and_state():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 4)) * [1, 2, 3, 0] + [5, -1, 0, 7]).astype(np.float32)
    s = FeatureStandardizer(4)
    np.testing.assert_array_equal(s(x), x)  # before fit: unchanged
    s.fit(x)
    z = s(x)
    np.testing.assert_allclose(z[:, :3].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :3].std(0), 1, atol=1e-4)
    assert s.scale[3] == 1  # a constant feature keeps scale 1
    with pytest.raises(ValueError, match="once"):
        s.fit(x)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(z @ s.head_rows(w).T + w @ s.shift, x @ w.T, rtol=1e-4, atol=1e-4)
    arrays, meta = s.state_dict()
    t = FeatureStandardizer(4)
    t.load_state_dict(arrays, json.loads(json.dumps(meta)))
    assert t.fitted and np.array_equal(t(x), z)
    with pytest.raises(ValueError, match="scale"):
        t.load_state_dict({"shift": arrays["shift"], "scale": np.zeros(4, np.float32)}, meta)


def test_standardize_fixes_statistics_at_the_first_experience_and_trains_on_them():
    lrn = learner(standardize="on")
    assert lrn.standardizer is not None and not lrn.standardizer.fitted
    learn(lrn, (0, 1), 0)
    first = lrn.extract(TRAIN[0][np.isin(TRAIN[1], (0, 1))])
    np.testing.assert_allclose(lrn.standardizer.shift, first.mean(0), rtol=1e-5, atol=1e-5)
    shift = lrn.standardizer.shift.copy()
    learn(lrn, (2, 3), 1)
    assert np.array_equal(lrn.standardizer.shift, shift)  # fixed: the consolidated rows keep their meaning
    x = lrn.extract(TRAIN[0])
    np.testing.assert_allclose(lrn.logits(x), lrn.standardizer(x) @ lrn.engine.get_head().T, rtol=1e-5, atol=1e-5)
    assert np.mean(lrn.predict(x)[TRAIN[1] < 4] == TRAIN[1][TRAIN[1] < 4]) > 0.6
    assert lrn.memory_bytes()["strategy"] == lrn.consolidator.cw.nbytes + lrn.consolidator.past.nbytes + 2 * 16 * 4


def test_standardize_at_deployment_converts_the_pretrained_rows():
    lrn = learner(standardize="on")
    head = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    head[3:] = 0
    lrn.engine.set_head(head)
    base = TRAIN[1] < 3
    x = lrn.extract(TRAIN[0][base])
    lrn.deploy(x, TRAIN[1][base])
    s = lrn.standardizer
    np.testing.assert_allclose(lrn.consolidator.cw, head * s.scale, rtol=1e-6)
    # the same scores as the pretrained head, less a per-class constant (w . shift)
    np.testing.assert_allclose(lrn.logits(x) + head @ s.shift, x @ head.T, rtol=1e-4, atol=1e-4)


def test_standardize_needs_a_head_only_cwr_learner_and_other_strategies_ignore_it():
    engine = NumpyLinearEngine(SHAPE, 6, proj_dim=16, seed=0)
    assert ContinualLearner(engine, LearnerConfig("naive", standardize="on")).standardizer is None
    wide = NumpyLinearEngine(SHAPE, 6, seed=0)
    wide.latent_shape = (4, 4, 1)  # as an engine with tail blocks: its latents are not the head's features
    with pytest.raises(ValueError, match="standardize"):
        ContinualLearner(wide, LearnerConfig("cwr_star", standardize="on"), LatentReplayBuffer((4, 4, 1), 10, 32))
    from bnncl.errors import BnnclError
    from bnncl.settings import LearningSettings

    with pytest.raises(BnnclError, match="--standardize on"):
        LearningSettings(strategy="cwr_star", standardize="on")  # tail blocks: 2 by default
    LearningSettings(strategy="slda", standardize="on")  # ignored, as --mixing is
    LearningSettings(strategy="cwr_star", tail_blocks=0, standardize="on", epochs=None, cwr_max_k=1.0)
    with pytest.raises(BnnclError, match="--cwr-max-k"):
        LearningSettings(strategy="cwr_star", cwr_max_k=-1.0)


def test_state_round_trip_through_the_store_then_continue_equals_uninterrupted(tmp_path):
    settings = {"standardize": "on", "mixing": "balanced", "cwr_max_k": 1.0, "epochs": None}
    full = learner(**settings)
    for i, classes in enumerate(((0, 1), (2, 3), (4, 5))):
        learn(full, classes, i)
    first = learner(**settings)
    learn(first, (0, 1), 0)
    arrays, meta = first.state_dict()
    assert {"standardize/shift", "standardize/scale"} <= arrays.keys()
    StateStore(tmp_path / "s").save(arrays, meta, position={"experience": 0}, model_sha256="ab" * 32)
    loaded = StateStore(tmp_path / "s").load(model_sha256="ab" * 32)
    second = learner(**settings)
    second.load_state_dict(loaded.arrays, loaded.meta)
    assert second.standardizer.fitted
    learn(second, (2, 3), 1)
    learn(second, (4, 5), 2)
    x = full.extract(TRAIN[0])
    assert np.array_equal(second.logits(x), full.logits(x))
    got, want = second.state_dict(), full.state_dict()
    assert got[1] == want[1] and all(np.array_equal(got[0][k], want[0][k]) for k in want[0])


def test_bnncl_run_options_reach_the_learner():
    from bnncl.cli import build_parser
    from bnncl.experiment import run_config
    from bnncl.settings import given_settings

    args = build_parser().parse_args(["run", "--protocol", "cifar-on-fmnist", "--strategy", "cwr_star", "--tail-blocks",
                                      "0", "--lr-bits", "8", "--standardize", "on", "--mixing", "balanced",
                                      "--cwr-max-k", "1", "--epochs", "auto", "--lr", "0.1"])
    cfg = run_config("cifar-on-fmnist", given_settings(args))
    assert (cfg.epochs, cfg.standardize, cfg.cwr_max_k, cfg.mixing) == (None, "on", 1.0, "balanced")
    learner_cfg = LearnerConfig.from_settings(cfg)
    assert (learner_cfg.epochs, learner_cfg.standardize, learner_cfg.cwr_max_k) == (None, "on", 1.0)
    assert run_config("cifar-on-fmnist", {}).epochs == 8 and run_config("cifar-on-fmnist", {}).cwr_max_k is None
