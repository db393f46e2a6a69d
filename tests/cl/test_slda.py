"""Streaming LDA: exact streaming statistics, the LDA rule, state round trips, and the learner around it."""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.linear_engine import NumpyLinearEngine
from bnncl.cl.slda import StreamingLDA


def _blobs(n: int, dim: int = 6, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    y = rng.integers(0, classes, n)
    mix = rng.normal(0, 1, (dim, dim))
    return (centres[y] + rng.normal(0, 1, (n, dim)) @ mix).astype(np.float32), y


def _within_class_cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    scatter = sum(((x[y == c] - x[y == c].mean(0)).T @ (x[y == c] - x[y == c].mean(0))) for c in np.unique(y))
    return scatter / len(y)


def test_streaming_statistics_equal_the_batch_ones_whatever_the_chunking():
    x, y = _blobs(300)
    whole = StreamingLDA(4, 6)
    whole.update(x, y)
    np.testing.assert_allclose(whole.covariance(), _within_class_cov(x, y), rtol=1e-5, atol=1e-6)
    for c in range(4):
        np.testing.assert_allclose(whole.means[c], x[y == c].mean(0), rtol=1e-5, atol=1e-6)
    assert whole.counts.tolist() == np.bincount(y, minlength=4).tolist() and whole.total == 300

    one_by_one = StreamingLDA(4, 6)
    for i in range(len(y)):
        one_by_one.update(x[i : i + 1], y[i : i + 1])
    np.testing.assert_allclose(one_by_one.covariance(), whole.covariance(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one_by_one.means, whole.means, rtol=1e-5, atol=1e-5)


def test_classifier_is_the_lda_rule_with_shrinkage():
    x, y = _blobs(400)
    s = StreamingLDA(4, 6, shrinkage=0.1)
    s.update(x, y)
    a = 0.9 * _within_class_cov(x, y) + 0.1 * np.eye(6)
    mu = np.stack([x[y == c].mean(0) for c in range(4)]).astype(np.float64)
    w = mu @ np.linalg.inv(a)
    n = np.bincount(y, minlength=4)
    b = -0.5 * (np.sum(mu * w, axis=1) - np.trace(np.linalg.inv(a) @ _within_class_cov(x, y)) / (n + 2.0))
    got_w, got_b = s.classifier()
    np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-5)
    logits = s.logits(x)
    assert logits.dtype == np.float32 and logits.shape == (400, 4)
    assert np.mean(logits.argmax(1) == y) > 0.9  # well separated blobs


def test_a_class_seen_a_few_times_is_not_drowned_by_the_bias_of_its_mean():
    """Many base features define the covariance; new classes come with 3 features each. Without the
    small-sample correction a noisy 3-sample mean is far from the centre and its class rarely wins."""
    rng = np.random.default_rng(5)
    dim, classes = 40, 8
    centres = rng.normal(0, 0.6, (classes, dim))
    def draw(c, n):
        return centres[c] + rng.normal(0, 1, (n, dim))
    s = StreamingLDA(classes, dim)
    for c in range(4):
        s.update(draw(c, 500), np.full(500, c))
    for c in range(4, classes):
        s.update(draw(c, 3), np.full(3, c))
    test_y = np.repeat(np.arange(classes), 300)
    test_x = np.concatenate([draw(c, 300) for c in range(classes)])
    with_correction = np.mean(s.logits(test_x).argmax(1) == test_y)
    w, b = s.classifier()
    plain = -0.5 * np.einsum("cd,cd->c", s.means.astype(np.float64), w)
    without = np.mean((test_x @ w.T + plain).argmax(1) == test_y)
    new = test_y >= 4
    assert np.mean(s.logits(test_x[new]).argmax(1) >= 4) > np.mean((test_x[new] @ w.T + plain).argmax(1) >= 4) + 0.2
    assert with_correction > without


def test_scores_do_not_depend_on_the_batch():
    x, y = _blobs(257)
    s = StreamingLDA(4, 6)
    s.update(x, y)
    whole = s.logits(x)
    parts = np.concatenate([s.logits(x[i : i + 7]) for i in range(0, len(x), 7)])
    np.testing.assert_array_equal(whole, parts)


def test_state_round_trip_is_exact_and_learning_continues_identically():
    x, y = _blobs(200)
    a = StreamingLDA(4, 6, cov_bits=16)
    a.update(x[:120], y[:120])
    arrays, meta = a.state_dict()
    assert arrays["cov_packed"].dtype == np.float16 and arrays["cov_packed"].shape == (6 * 7 // 2,)
    b = StreamingLDA(4, 6, cov_bits=16)
    b.load_state_dict(arrays, meta)
    for s in (a, b):
        s.update(x[120:], y[120:])
    for key, value in a.state_dict()[0].items():
        np.testing.assert_array_equal(value, b.state_dict()[0][key], err_msg=key)
    np.testing.assert_array_equal(a.logits(x), b.logits(x))
    assert a.nbytes == 4 * 6 * 4 + 4 * 8 + 21 * 2 + 11 * 8  # means, counts, covariance, leave-one-out counts


def test_float16_covariance_costs_little_here():
    x, y = _blobs(500, dim=16, classes=5)
    accs = []
    for bits in (32, 16):
        s = StreamingLDA(5, 16, cov_bits=bits)
        s.update(x, y)
        accs.append(np.mean(s.logits(x).argmax(1) == y))
    assert abs(accs[0] - accs[1]) < 0.01


@pytest.mark.parametrize("call,message", [
    (lambda s: s.update(np.zeros((3, 5), np.float32), np.zeros(3, np.int64)), r"features must have shape \(N, 6\)"),
    (lambda s: s.update(np.full((2, 6), np.nan, np.float32), np.zeros(2, np.int64)), "NaN or inf"),
    (lambda s: s.update(np.zeros((2, 6), np.float32), np.array([0, 4])), r"labels must lie in \[0, 4\)"),
    (lambda s: s.update(np.zeros((2, 6), np.float32), np.zeros(3, np.int64)), "labels must be integer with shape"),
    (lambda s: s.load_state_dict({"means": np.zeros((4, 6))}), "missing array 'counts'"),
    (lambda s: s.load_state_dict(*StreamingLDA(4, 6, cov_bits=16).state_dict()), "cov_bits 16 does not match 32"),
])
def test_bad_input_gives_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(StreamingLDA(4, 6))


@pytest.mark.parametrize("kwargs,message", [
    ({"shrinkage": 1.0}, r"shrinkage must be a number in \[0, 1\)"),
    ({"shrinkage": -0.1}, "shrinkage"),
    ({"cov_bits": 8}, r"cov_bits must be one of \(32, 16\)"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamingLDA(4, 6, **kwargs)


def test_singular_covariance_without_shrinkage_still_predicts():
    x = np.zeros((4, 6), np.float32)
    x[:, 0] = [1, 1, -1, -1]  # every feature but one is constant: a singular covariance
    y = np.array([0, 0, 1, 1])
    s = StreamingLDA(2, 6, shrinkage=0.0)
    s.update(x + np.array([0.1, 0, 0, 0, 0, 0], np.float32) * np.arange(4)[:, None], y)
    assert s.logits(x).argmax(1).tolist() == [0, 0, 1, 1]


def _engine() -> NumpyLinearEngine:
    return NumpyLinearEngine((4, 4, 1), num_classes=6, proj_dim=12, seed=0)


def _images(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    base = rng.integers(0, 256, (classes, 4, 4, 1))
    noise = rng.integers(-30, 31, (n, 4, 4, 1))
    return np.clip(base[y] + noise, 0, 255).astype(np.uint8), y


def test_learner_with_slda_deploys_learns_predicts_and_resumes_exactly():
    images, labels = _images(600, 6, seed=1)
    base, new = labels < 3, labels >= 3
    learner = ContinualLearner(_engine(), LearnerConfig("slda"))
    assert learner.buffer is None and learner.consolidator is None and not learner.uses_engine_head
    learner.deploy_images(images[base], labels[base])
    stats = learner.learn_images(images[new][:150], labels[new][:150], 1)
    assert stats.n_replay == 0 and stats.mean_loss is None and stats.n_new == 150
    arrays, meta = learner.state_dict()
    assert {"slda/means", "slda/counts", "slda/cov_packed"} <= set(arrays)
    assert learner.memory_bytes() == {"replay": 0, "strategy": learner.feature_head.nbytes}

    resumed = ContinualLearner(_engine(), LearnerConfig("slda"))
    resumed.load_state_dict(arrays, meta)
    rest_x, rest_y = images[new][150:], labels[new][150:]
    for lr in (learner, resumed):
        lr.learn_images(rest_x, rest_y, 2)
    latents = learner.extract(images)
    np.testing.assert_array_equal(learner.logits(latents), resumed.logits(latents))
    assert np.mean(learner.predict(latents) == labels) > 0.9


def test_slda_needs_pooled_features():
    engine = NumpyLinearEngine((4, 4, 1), num_classes=3, proj_dim=3)
    engine.latent_shape = (2, 2, 3)  # latents a tail would still turn into the 3 pooled features
    with pytest.raises(ValueError, match="needs no tail blocks"):
        ContinualLearner(engine, LearnerConfig("slda"))


def test_probe_fits_all_features_seen_and_resumes_exactly():
    from bnncl.cl.probe import LinearProbe

    x, y = _blobs(300)
    p = LinearProbe(4, 6)
    p.update(x[y < 2], y[y < 2])
    assert set(np.unique(p.logits(x).argmax(1))) <= {0, 1}  # unseen classes never win
    arrays, meta = p.state_dict()
    q = LinearProbe(4, 6)
    q.load_state_dict(arrays, meta)
    for probe in (p, q):
        probe.update(x[y >= 2], y[y >= 2])
    np.testing.assert_array_equal(p.logits(x), q.logits(x))
    assert np.mean(p.logits(x).argmax(1) == y) > 0.9 and p.nbytes >= x.nbytes


def test_shrinkage_falls_back_to_the_fading_rule_without_rare_classes_to_count():
    from bnncl.cl.slda import LOO_MAX_COUNT, RARE_CLASS_COUNT, RARE_CLASS_SHRINKAGE

    x, y = _blobs(2000)
    s = StreamingLDA(5, 6)
    assert s.effective_shrinkage == s.shrinkage  # nothing seen yet
    s.update(x, y)
    n_min = int(np.bincount(y).min())
    assert n_min > LOO_MAX_COUNT and not s.loo_correct.any()  # large classes are not counted
    assert s.effective_shrinkage == max(1e-4, RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (n_min + RARE_CLASS_COUNT))
    s.update(x[:1], np.array([4]))  # a class of one feature: nothing to leave out
    assert not s.loo_correct.any()
    assert s.effective_shrinkage == RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (1 + RARE_CLASS_COUNT)
    assert StreamingLDA(5, 6, shrinkage=0.5).effective_shrinkage == 0.5  # the setting is a floor


def _loo_right_answers_by_hand(s: StreamingLDA, x: np.ndarray, y: np.ndarray, eps: float) -> int:
    """Each feature scored by an LDA rule built from scratch, its class mean recomputed without it."""
    from bnncl.cl.slda import SMALL_SAMPLE_PRIOR

    cov = s.covariance()
    lam_inv = np.linalg.inv((1 - eps) * cov + eps * np.eye(s.dim))
    spread = np.trace(lam_inv @ cov)
    seen = np.flatnonzero(s.counts)
    right = 0
    for xi, c in zip(x.astype(np.float64), y):
        scores = {}
        for k in seen:
            n = s.counts[k]
            mu = s.means[k].astype(np.float64)
            if k == c:
                mu, n = (n * mu - xi) / (n - 1), n - 1
            scores[k] = xi @ lam_inv @ mu - 0.5 * mu @ lam_inv @ mu + 0.5 * spread / (n + SMALL_SAMPLE_PRIOR)
        right += scores[c] >= max(scores.values())
    return right


def test_leave_one_out_counts_each_rare_feature_with_its_class_mean_taken_without_it():
    from bnncl.cl.slda import SHRINKAGE_GRID

    x, y = _blobs(1200, classes=3, seed=1)
    s = StreamingLDA(5, 6)
    s.update(x, y)  # base classes of ~400 features: not counted
    assert not s.loo_correct.any()
    rng = np.random.default_rng(2)
    centre = rng.normal(0, 3, 6)
    new = (centre + rng.normal(0, 1, (7, 6))).astype(np.float32)
    s.update(new[:5], np.full(5, 3))
    want = [_loo_right_answers_by_hand(s, new[:5], np.full(5, 3), eps) for eps in SHRINKAGE_GRID]
    assert s.loo_correct.tolist() == want
    s.update(new[5:], np.full(2, 4))  # a second rare class adds its two features' answers
    assert s.loo_correct.sum() > sum(want)


def test_the_shrinkage_with_most_right_answers_is_used_ties_going_to_the_rule():
    from bnncl.cl.slda import RARE_CLASS_COUNT, RARE_CLASS_SHRINKAGE, SHRINKAGE_GRID

    x, y = _blobs(60, classes=3)
    s = StreamingLDA(4, 6)
    s.update(x, y)
    n_min = int(s.counts[s.counts > 0].min())
    s.loo_correct[:] = 0
    s.loo_correct[SHRINKAGE_GRID.index(0.3)] = 5
    assert s.effective_shrinkage == 0.3
    s.loo_correct[:] = 5  # all tied: the value nearest the rule on a log scale
    rule = RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (n_min + RARE_CLASS_COUNT)
    nearest = min(SHRINKAGE_GRID, key=lambda e: abs(np.log(e) - np.log(rule)))
    assert s.effective_shrinkage == nearest
    assert StreamingLDA(4, 6, shrinkage=0.6).effective_shrinkage == 0.6
    arrays, meta = s.state_dict()
    t = StreamingLDA(4, 6)
    t.load_state_dict(arrays, meta)
    assert t.loo_correct.tolist() == s.loo_correct.tolist() and t.effective_shrinkage == nearest
    old = {k: v for k, v in arrays.items() if k != "loo_correct"}  # a state saved before the counts existed
    t.load_state_dict(old, meta)
    assert not t.loo_correct.any()
    with pytest.raises(ValueError, match="loo_correct"):
        t.load_state_dict(dict(arrays, loo_correct=np.zeros(3, np.int64)), meta)
