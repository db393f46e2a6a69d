import json

import numpy as np
import pytest

from bnncl.cl.engine import Engine
from bnncl.cl.learner import ContinualLearner, LearnerConfig, mixed_minibatches
from bnncl.cl.linear_engine import NumpyLinearEngine
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.data.scenarios import nc_stream

SHAPE = (4, 4, 1)


def clusters(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 overlapping Gaussian classes in 16-D, as uint8 4x4x1 images with a shared offset.

    The offset gives every feature a common positive component (like post-ReLU features), so
    fine-tuning on one class lets that class take over every prediction.
    """
    means = np.random.default_rng(123).standard_normal((10, 16)) * 0.8
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class)
    x = means[y] + rng.standard_normal((len(y), 16))
    return np.clip(170 + 30 * x, 0, 255).astype(np.uint8).reshape((-1,) + SHAPE), y.astype(np.int64)


TRAIN = clusters(300, 1)
TEST = clusters(60, 2)
STREAM = nc_stream(TRAIN[1], base_classes=range(5), seed=0)


def pretrained_engine(binary: bool = False) -> NumpyLinearEngine:
    """A 'host-pretrained' engine: head trained on the base classes 0-4."""
    engine = NumpyLinearEngine(SHAPE, 10, proj_dim=64 if binary else None, binary=binary, seed=0)
    images, labels = TRAIN
    base = labels < 5
    x, y = engine.extract(images[base]), labels[base]
    rng = np.random.default_rng(0)
    for _ in range(10):
        order = rng.permutation(len(y))
        for i in range(0, len(y), 64):
            engine.train_batch(x[order[i : i + 64]], y[order[i : i + 64]], 0.1)
    engine.mark_deployed()
    return engine


def run(strategy: str, binary: bool = False, pretrained: bool = True, **kw):
    engine = pretrained_engine(binary) if pretrained else NumpyLinearEngine(SHAPE, 10, seed=0)
    buffer = LatentReplayBuffer(engine.latent_shape, capacity=300, bits=1 if binary else 32, seed=0)
    config = LearnerConfig(strategy=strategy, epochs=4, lr=0.3, minibatch_size=32, seed=0)
    learner = ContinualLearner(engine, config, buffer)
    return learner, learner.run(STREAM, TRAIN[0], *TEST, pretrained_base=pretrained, **kw)


def test_engine_protocol():
    assert isinstance(NumpyLinearEngine(SHAPE, 10), Engine)


def test_cwr_star_beats_naive_and_joint_is_upper_bound():
    _, star = run("cwr_star")
    _, naive = run("naive")
    _, joint = run("joint")
    per_class_naive = naive.experiences[-1].per_class_accuracy
    assert per_class_naive[9] > 0.9 and sum(per_class_naive[:9]) / 9 < 0.05  # only the last class
    assert naive.final_accuracy < 0.15
    assert star.final_accuracy > naive.final_accuracy + 0.35
    assert joint.final_accuracy >= star.final_accuracy
    assert star.forgetting < naive.forgetting


def test_binary_latents_with_one_bit_buffer():
    _, star = run("cwr_star", binary=True)
    _, naive = run("naive", binary=True)
    assert star.final_accuracy > naive.final_accuracy + 0.35


def test_base_trained_as_first_experience_and_cwr_runs():
    _, res = run("cwr_star", pretrained=False)
    assert res.experiences[0].train_seconds > 0 and res.final_accuracy > 0.3
    _, res = run("cwr")
    assert len(res.experiences) == 6


def test_deterministic_with_seed():
    def strip(d):
        for e in d["experiences"]:
            e.pop("train_seconds")
            e.pop("extract_seconds")
        return d

    a = strip(run("cwr_star")[1].to_dict())
    b = strip(run("cwr_star")[1].to_dict())
    assert a == b


def test_results_json_and_callbacks(capsys):
    batches, experiences = [], []
    _, res = run("cwr_star", on_batch=batches.append, on_experience=experiences.append)
    d = json.loads(res.to_json())
    assert [e["classes"] for e in d["experiences"]] == [[0, 1, 2, 3, 4], [5], [6], [7], [8], [9]]
    for key in ("accuracy_all", "accuracy_seen", "train_seconds"):
        assert all(key in e for e in d["experiences"])
    assert d["final_accuracy"] == d["experiences"][-1]["accuracy_all"]
    assert d["average_accuracy"] == pytest.approx(np.mean([e["accuracy_all"] for e in d["experiences"]]))
    assert len(experiences) == 6 and experiences[0].train_seconds == 0.0
    # experience 1: 300 new + 300 replayed, minibatch 32 -> 19 batches x 4 epochs
    first = [b for b in batches if b.experience == 1]
    assert len(first) == 4 * 19 and first[-1].n_batches == 19
    assert np.array(d["confusion"]).sum() == len(TEST[1])
    assert capsys.readouterr() == ("", "")  # the library never prints


def test_cur_counts_new_and_replayed_patterns_once():
    learner, _ = run("cwr_star")
    past = learner.consolidator.past
    # class 9: 300 new patterns, never replayed before the end
    assert past[9] == 300
    # base class 0: 300 base patterns + its share of the buffer replayed in each of 5 experiences
    shares = [60, 50, 300 // 7 + (1 if 300 % 7 > 0 else 0), 300 // 8 + (1 if 300 % 8 > 0 else 0), 300 // 9 + 1]
    assert past[0] == 300 + sum(shares)


def test_mixed_minibatches_use_every_pattern_once_in_proportion():
    rng = np.random.default_rng(0)
    batches = mixed_minibatches(1000, 300, 128, rng)
    assert len(batches) == 11
    new = np.concatenate([n for n, _ in batches])
    rep = np.concatenate([r for _, r in batches])
    assert sorted(new) == list(range(1000)) and sorted(rep) == list(range(300))
    for n, r in batches:
        assert abs(len(r) / len(n) - 0.3) < 0.05 and len(n) + len(r) <= 128


def test_bad_input():
    engine = pretrained_engine()
    learner = ContinualLearner(engine, LearnerConfig("cwr_star"), LatentReplayBuffer(engine.latent_shape, bits=32))
    x = np.zeros((3, 16), np.float32)
    with pytest.raises(ValueError, match="latents must have shape"):
        learner.train_experience(np.zeros((3, 15)), np.zeros(3, np.int64), 0)
    with pytest.raises(ValueError, match="NaN"):
        learner.train_experience(np.full_like(x, np.nan), np.zeros(3, np.int64), 0)
    with pytest.raises(ValueError, match="labels must lie"):
        learner.train_experience(x, np.array([0, 1, 10]), 0)
    with pytest.raises(ValueError, match="strategy"):
        LearnerConfig(strategy="ewc")
    with pytest.raises(ValueError, match="lr"):
        LearnerConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="buffer latent_shape"):
        ContinualLearner(engine, LearnerConfig("cwr_star"), LatentReplayBuffer((8,)))
    with pytest.raises(ValueError, match="base experience"):
        learner.run(nc_stream(TRAIN[1]), TRAIN[0], *TEST, pretrained_base=True)


def test_new_instances_stream_with_shifts():
    from bnncl.data.scenarios import ni_stream

    engine = NumpyLinearEngine(SHAPE, 10, seed=0)
    buffer = LatentReplayBuffer(engine.latent_shape, capacity=200, bits=8, seed=0)
    learner = ContinualLearner(engine, LearnerConfig("cwr_star", epochs=2, lr=0.3, minibatch_size=64), buffer)
    res = learner.run(ni_stream(TRAIN[1], n_experiences=4, seed=0), TRAIN[0], *TEST)
    assert [e.classes for e in res.experiences] == [list(range(10))] * 4
    assert buffer.class_counts() == {c: 20 for c in range(10)}
    assert res.final_accuracy > 0.5 and res.forgetting is not None


def test_resume_from_state_matches_uninterrupted_run():
    import dataclasses

    from bnncl.data.scenarios import Stream

    def fresh():
        engine = pretrained_engine()
        buffer = LatentReplayBuffer(engine.latent_shape, capacity=300, bits=8, seed=0)
        return ContinualLearner(engine, LearnerConfig("cwr_star", lr=0.3, minibatch_size=32), buffer)

    full = fresh().run(STREAM, TRAIN[0], *TEST, pretrained_base=True)
    first = fresh()
    first.run(Stream("nc", STREAM.experiences[:3], 10, 0), TRAIN[0], *TEST, pretrained_base=True)
    arrays, meta = first.state_dict()
    json.dumps(meta)
    second = fresh()
    second.load_state_dict({k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(meta)))
    rest = second.run(Stream("nc", STREAM.experiences[3:], 10, 0), TRAIN[0], *TEST)
    want = [dataclasses.replace(e, train_seconds=0, extract_seconds=0) for e in full.experiences[3:]]
    got = [dataclasses.replace(e, train_seconds=0, extract_seconds=0) for e in rest.experiences]
    assert got == want
    with pytest.raises(ValueError, match="strategy"):
        ContinualLearner(pretrained_engine(), LearnerConfig(strategy="naive")).load_state_dict(arrays, meta)


def test_new_per_class_cap_uses_fresh_subsets_and_counts_what_was_used():
    """With a cap, each epoch sees at most ``cap`` new patterns per class, and CWR* counts only those."""
    from bnncl.cl.learner import ContinualLearner, LearnerConfig
    from bnncl.cl.linear_engine import NumpyLinearEngine
    from bnncl.cl.replay import LatentReplayBuffer

    rng = np.random.default_rng(0)
    eng = NumpyLinearEngine((2, 2, 1), 3, seed=0)
    seen_batches = []
    orig = eng.train_batch

    def spy(x, y, lr):
        seen_batches.append(np.asarray(y).copy())
        return orig(x, y, lr)

    eng.train_batch = spy
    buf = LatentReplayBuffer((4,), capacity=30, bits=32)
    learner = ContinualLearner(eng, LearnerConfig("cwr_star", epochs=3, minibatch_size=16, new_per_class=10), buf)
    x0, y0 = rng.normal(size=(40, 4)).astype(np.float32), np.repeat([0, 1], 20)
    learner.deploy(x0, y0)
    seen_batches.clear()
    x1, y1 = rng.normal(size=(200, 4)).astype(np.float32), np.full(200, 2)
    learner.train_experience(x1, y1, 1)
    per_epoch = np.concatenate(seen_batches)
    assert (per_epoch == 2).sum() == 3 * 10  # 10 new patterns per epoch, 3 epochs
    assert (per_epoch != 2).sum() == 3 * 30  # the whole buffer every epoch
    assert 10 < learner.consolidator.past[2] <= 30  # distinct new patterns used + 0 replayed of class 2
    with pytest.raises(ValueError, match="new_per_class"):
        LearnerConfig(new_per_class=0)


def test_balanced_minibatches_give_every_present_class_an_equal_share():
    from bnncl.cl.learner import balanced_minibatches

    rng = np.random.default_rng(0)
    new = np.full(10, 7)  # 10 images of one new class ...
    replay = np.repeat([0, 1, 2], 300)  # ... against 300 replayed per old class
    batches = balanced_minibatches(new, replay, 64, rng)
    assert len(batches) == -(-(10 + 900) // 64)
    counts = np.zeros(4, int)
    for ni, ri in batches:
        assert len(ni) + len(ri) in (63, 64, 65)
        counts += [len(ni)] + [int(np.sum(replay[ri] == c)) for c in range(3)]
    assert counts.max() - counts.min() <= 1  # equal shares over the epoch
    seen = np.concatenate([ni for ni, _ in batches])
    assert set(seen.tolist()) == set(range(10)) and np.bincount(seen).min() >= 20  # each new image, many times


def test_weight_align_scales_new_rows_to_the_old_mean_norm():
    from bnncl.cl.cwr import CWRStar

    cwr = CWRStar(4, 3)
    cwr.cw[:] = [[3, 0, 0], [0, 1, 0], [0, 0, 8], [0, 0, 0]]
    cwr.align_rows([2], [0, 1])
    np.testing.assert_allclose(np.linalg.norm(cwr.cw[2]), 2.0)
    np.testing.assert_array_equal(cwr.cw[:2], [[3, 0, 0], [0, 1, 0]])
    cwr.align_rows([3], [0, 1])  # a zero row stays as it is
    np.testing.assert_array_equal(cwr.cw[3], 0)


def test_balanced_mixing_learns_a_class_from_few_images():
    """10 images of a new class against a large buffer: proportional mixing barely learns it, balanced does."""
    rng = np.random.default_rng(3)
    engine_args = ((8, 8, 1), 6)
    images, labels = [], []
    protos = rng.integers(0, 256, (6, 8, 8, 1))
    for c, n in ((0, 400), (1, 400), (2, 400), (3, 10)):
        images.append(np.clip(protos[c] + rng.integers(-60, 61, (n, 8, 8, 1)), 0, 255))
        labels.append(np.full(n, c))
    x, y = np.concatenate(images).astype(np.uint8), np.concatenate(labels)
    test_x = np.clip(protos[3] + rng.integers(-60, 61, (200, 8, 8, 1)), 0, 255).astype(np.uint8)
    recall = {}
    for mixing in ("proportional", "balanced"):
        engine = NumpyLinearEngine(*engine_args, proj_dim=16, seed=0)
        cfg = LearnerConfig("cwr_star", epochs=2, lr=0.1, minibatch_size=64, mixing=mixing)
        learner = ContinualLearner(engine, cfg, LatentReplayBuffer((16,), 1200, 32))
        learner.learn_images(x[y < 3], y[y < 3], 0)
        learner.learn_images(x[y == 3], y[y == 3], 1)
        recall[mixing] = float(np.mean(learner.predict(learner.extract(test_x)) == 3))
    assert recall["balanced"] > 0.8 and recall["balanced"] > recall["proportional"] + 0.2, recall
