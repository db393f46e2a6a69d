"""The continual-learning loop over a stream of experiences, on any :class:`~bnncl.cl.engine.Engine`.

Strategies (``LearnerConfig.strategy``, named in :mod:`bnncl.cl.strategies`):

* ``slda`` (default): streaming LDA on the pooled features (:class:`bnncl.cl.slda.StreamingLDA`); the
  engine must have no tail blocks (its latents are the pooled features); no SGD, no replay.
* ``cwr_star``: CWR* head consolidation + latent replay (AR1* without the lower-layer
  regularisers). Present classes = the experience's classes ∪ the buffer's classes.
* ``cwr``: the same loop with plain CWR+ consolidation (zero-initialised head, overwrite).
* ``naive``: fine-tune tail + head on each experience; no consolidation, no replay (lower bound).
* ``probe``: a joint linear probe on the pooled features (:class:`bnncl.cl.probe.LinearProbe`), the
  upper bound of head-only learners; keeps every feature.
* ``joint`` (cumulative): each experience trains tail + head, from where they are, on the union of
  all latents seen so far (upper bound; memory grows with the stream).

The learner never resets the engine; to compare strategies on one engine, call
:meth:`Engine.reset_tail` between runs (or build a fresh engine).

Minibatch mixing (docs/design.md §1.4): with ``N_new`` new latents and ``R`` replayed ones (the buffer as
it is at the start of the experience), an epoch has ``n_b = ceil((N_new + R) / minibatch_size)``
minibatches; the shuffled new indices and the shuffled replay indices are each cut into ``n_b``
near-equal chunks and minibatch ``b`` is new chunk ``b`` + replay chunk ``b``. So every new and every
replayed pattern is used exactly once per epoch, each minibatch holds about ``minibatch_size``
patterns, and ``mb_replay / mb_new ≈ R / N_new``.

With ``new_per_class`` set, each epoch uses a fresh random subset of at most that many new patterns
per class (``N_new`` above is then the subset's size). An experience of one new class with thousands
of patterns against a buffer of a few hundred per old class otherwise trains the head on a skewed
class prior, and the new class takes over its look-alikes (measured on cifar10-b5: cat -> dog).

``cur[c]`` (the CWR* counts) = new patterns of class c used in the experience + buffer patterns of
class c replayed, each pattern counted once (not once per epoch), as the reference AR1* code does.
After training, the buffer is offered the experience's latents (``buffer.add``).

Deployment: a stream's base experience (``is_base``) either is trained like any other, or, with a
host-pretrained engine (``run(..., pretrained_base=True)``), is only *deployed*: the buffer is
prefilled with its latents, CWR*'s ``cw`` rows of the base classes are the pretrained head's rows
and ``past[c]`` their training counts; the base features start SLDA's class means and shared covariance.

Random draws (``rng``): ``numpy`` (default) draws the minibatch order and the buffer's choices from NumPy's
``Generator``; ``portable`` from :class:`bnncl.cl.portable_rng.PortableRNG` (PCG32, the learner and the buffer
on their own streams of ``seed``), with the softmax's exp taken from the C core: the draws and the arithmetic
libbnncl's CWR* loop (``libbnncl/src/cwr_learn.c``) reproduces bit for bit.

Progress goes to callbacks (``on_batch(BatchProgress)``, ``on_experience(ExperienceResult)``); the
library never prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bnncl.cl.cwr import CWR, CWRStar, FeatureStandardizer
from bnncl.cl.engine import Engine
from bnncl.cl.metrics import (
    CLResults,
    ExperienceResult,
    accuracy,
    confusion_matrix,
    nan_to_none,
    per_class_accuracy,
    predict,
)
from bnncl.cl.portable_rng import BUFFER_STREAM, LEARNER_STREAM, RNG_KINDS, make_rng, rng_from_state
from bnncl.cl.probe import LinearProbe
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.cl.slda import StreamingLDA
from bnncl.cl.strategies import FEATURE_STRATEGIES, REPLAY_STRATEGIES, auto_epochs, check_strategy
from bnncl.settings import BY_NAME, DEFAULTS

if TYPE_CHECKING:  # only a type: keeps bnncl.cl free of bnncl.data's imports
    from bnncl.data.scenarios import Stream


@dataclass(frozen=True)
class LearnerConfig:
    """Training hyper-parameters of the on-device loop; defaults: the settings table
    (:data:`bnncl.settings.SETTINGS`)."""

    strategy: str = DEFAULTS["strategy"]
    epochs: int | None = DEFAULTS["epochs"]
    """Epochs per experience; None = auto (:func:`bnncl.cl.strategies.auto_epochs`)."""
    lr: float = DEFAULTS["lr"]
    minibatch_size: int = DEFAULTS["minibatch"]
    seed: int = DEFAULTS["seed"]
    batch_size_eval: int = 1024
    new_per_class: int | None = DEFAULTS["new_per_class"]
    """Cap on the new patterns of each class used per epoch (a fresh random subset every epoch), or
    None to use all of them. A cap near the buffer's per-class share balances an experience of one
    large new class against the replayed classes (see the module docstring)."""
    shrinkage: float = DEFAULTS["shrinkage"]
    """``slda``: shrinkage of the shared covariance toward the identity."""
    cov_bits: int = DEFAULTS["cov_bits"]
    """``slda``: storage bits of the shared covariance (32 or 16)."""
    mixing: str = DEFAULTS["mixing"]
    """Minibatch composition: ``proportional`` (new : replayed as N_new : R) or ``balanced`` (every present
    class an equal share of each minibatch; :func:`balanced_minibatches`)."""
    weight_align: str = DEFAULTS["weight_align"]
    """``on``: after consolidation, scale the rows of the classes new in the experience to the mean norm of
    the rows of the classes seen before (weight aligning, Zhao et al. 2020)."""
    standardize: str = DEFAULTS["standardize"]
    """``on`` (CWR*/CWR, no tail blocks; ignored by the other strategies): the head sees the pooled features
    standardized with statistics fixed at deployment or by the first experience learned
    (:class:`bnncl.cl.cwr.FeatureStandardizer`)."""
    cwr_max_k: float | None = DEFAULTS["cwr_max_k"]
    """CWR*: cap on the merge weight of an old class's row (None: the paper's ``sqrt(past / cur)``)."""
    rng: str = "numpy"
    """Random draws of the learner and its replay buffer: ``numpy`` or ``portable`` (module docstring)."""

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if self.rng not in RNG_KINDS:
            raise ValueError(f"rng: expected one of {RNG_KINDS}, got {self.rng!r}")
        if self.batch_size_eval < 1:
            raise ValueError(f"batch_size_eval must be >= 1, got {self.batch_size_eval}")
        for name, setting in (("epochs", "epochs"), ("lr", "lr"), ("minibatch_size", "minibatch"),
                              ("seed", "seed"), ("new_per_class", "new_per_class"), ("shrinkage", "shrinkage"),
                              ("cov_bits", "cov_bits"), ("mixing", "mixing"), ("weight_align", "weight_align"),
                              ("standardize", "standardize"), ("cwr_max_k", "cwr_max_k")):
            value = getattr(self, name)
            if not (value is None and BY_NAME[setting].none_word is not None) and not BY_NAME[setting].ok(value):
                raise ValueError(f"{name}: expected {BY_NAME[setting].expected}, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> LearnerConfig:
        """The learner's part of a :class:`bnncl.settings.LearningSettings`."""
        return cls(settings.strategy, settings.epochs, settings.lr, settings.minibatch, settings.seed,
                   new_per_class=settings.new_per_class, shrinkage=settings.shrinkage, cov_bits=settings.cov_bits,
                   mixing=settings.mixing, weight_align=settings.weight_align,
                   standardize=getattr(settings, "standardize", DEFAULTS["standardize"]),
                   cwr_max_k=getattr(settings, "cwr_max_k", DEFAULTS["cwr_max_k"]),
                   rng=getattr(settings, "rng", "numpy"))


@dataclass(frozen=True)
class BatchProgress:
    """Passed to ``on_batch`` after every training step."""

    experience: int
    epoch: int
    batch: int
    n_batches: int
    loss: float


@dataclass(frozen=True)
class TrainStats:
    """What :meth:`ContinualLearner.train_experience` did."""

    n_new: int
    n_replay: int
    mean_loss: float | None
    seconds: float


BatchCallback = Callable[[BatchProgress], None]
ExperienceCallback = Callable[[ExperienceResult], None]


#: state arrays with one row per head class (grown by :func:`grow_classes`)
CLASS_ROW_ARRAYS = ("engine/head", "cwr/cw", "cwr/past", "slda/means", "slda/counts", "probe/weight", "probe/bias")


def grow_classes(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], num_classes: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A :meth:`ContinualLearner.state_dict` output with room for ``num_classes`` head rows: every per-class
    array gets zero rows at the end (a class not seen yet), so the learner resumes with more free classes.
    ValueError if ``num_classes`` is smaller than the state's."""
    out = dict(arrays)
    for key in CLASS_ROW_ARRAYS:
        if key in out:
            a = np.asarray(out[key])
            if num_classes < a.shape[0]:
                raise ValueError(f"cannot shrink the head from {a.shape[0]} to {num_classes} classes")
            pad = np.zeros((num_classes - a.shape[0],) + a.shape[1:], dtype=a.dtype)
            out[key] = np.concatenate([a, pad])
    new_meta = json.loads(json.dumps(dict(meta)))
    for part in new_meta.values():
        if isinstance(part, dict) and "num_classes" in part:
            part["num_classes"] = int(num_classes)
    return out, new_meta


def mixed_minibatches(
    n_new: int, n_replay: int, minibatch_size: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(new_indices, replay_indices)`` minibatches (module docstring)."""
    n_batches = max(1, -(-(n_new + n_replay) // minibatch_size))
    new_chunks = np.array_split(rng.permutation(n_new), n_batches)
    replay_chunks = np.array_split(rng.permutation(n_replay), n_batches)
    return list(zip(new_chunks, replay_chunks))


def balanced_minibatches(
    new_labels: np.ndarray, replay_labels: np.ndarray, minibatch_size: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of class-balanced ``(new_indices, replay_indices)`` minibatches.

    The epoch has as many minibatches as :func:`mixed_minibatches` would (``ceil((N_new + R) / size)``);
    each present class (new patterns for the experience's classes, replayed ones for the others; a
    class in both draws from both) fills an equal share of every minibatch, cycling through its patterns
    in a fresh random order, so a class of 10 images weighs as much as one of 300 whatever the
    experience size."""
    n_batches = max(1, -(-(len(new_labels) + len(replay_labels)) // minibatch_size))
    pools: list[tuple[int, np.ndarray]] = []  # (0 = new / 1 = replay, indices) per class and source
    for c in np.union1d(new_labels, replay_labels):
        for source, labels in ((0, new_labels), (1, replay_labels)):
            rows = np.flatnonzero(labels == c)
            if len(rows):
                pools.append((source, rows))
    if not pools:
        return [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    share = np.array_split(np.arange(n_batches * minibatch_size), len(pools))
    streams = []
    for (source, rows), part in zip(pools, share):
        reps = -(-len(part) // len(rows))
        drawn = np.concatenate([rng.permutation(rows) for _ in range(reps)])[: len(part)]
        streams.append((source, np.array_split(drawn, n_batches)))
    batches = []
    for b in range(n_batches):
        new = [chunks[b] for source, chunks in streams if source == 0]
        old = [chunks[b] for source, chunks in streams if source == 1]
        batches.append((np.concatenate(new) if new else np.zeros(0, np.int64),
                        np.concatenate(old) if old else np.zeros(0, np.int64)))
    return batches


class ContinualLearner:
    """Runs a strategy over experiences with an engine, a replay buffer and CWR*/CWR consolidation."""

    def __init__(
        self, engine: Engine, config: LearnerConfig | None = None, buffer: LatentReplayBuffer | None = None
    ) -> None:
        self.engine = engine
        self.config = config or LearnerConfig()
        if buffer is not None and tuple(buffer.latent_shape) != tuple(engine.latent_shape):
            raise ValueError(f"buffer latent_shape {buffer.latent_shape} does not match engine {engine.latent_shape}")
        uses_cwr = self.config.strategy in REPLAY_STRATEGIES
        # naive, joint, slda and probe never replay: a buffer given to them is ignored.
        self.buffer = buffer if uses_cwr else None
        self.consolidator: CWRStar | None = None
        if uses_cwr:
            cls = CWRStar if self.config.strategy == "cwr_star" else CWR
            self.consolidator = cls(engine.num_classes, engine.head_dim, self.config.cwr_max_k)
        self.standardizer: FeatureStandardizer | None = None
        """``standardize="on"``: the fixed standardization of the features the engine's head sees, else None."""
        if self.config.standardize == "on" and uses_cwr:  # the other strategies ignore it
            if tuple(engine.latent_shape) != (engine.head_dim,):
                raise ValueError(f"standardize='on' needs a head-only CWR* learner (no tail blocks: latent shape "
                                 f"({engine.head_dim},)), got latent shape {tuple(engine.latent_shape)}")
            self.standardizer = FeatureStandardizer(engine.head_dim)
        self.feature_head: StreamingLDA | LinearProbe | None = None
        """The strategy's own classifier on the pooled features (``slda``, ``probe``), else None."""
        if self.config.strategy in FEATURE_STRATEGIES:
            if tuple(engine.latent_shape) != (engine.head_dim,):
                raise ValueError(f"strategy {self.config.strategy!r} learns on the pooled features: the engine "
                                 f"needs no tail blocks (latent shape ({engine.head_dim},)), got "
                                 f"{tuple(engine.latent_shape)}")
            if self.config.strategy == "slda":
                self.feature_head = StreamingLDA(engine.num_classes, engine.head_dim, self.config.shrinkage,
                                                 self.config.cov_bits)
            else:
                self.feature_head = LinearProbe(engine.num_classes, engine.head_dim)
        self.seen_classes: set[int] = set()
        self._rng = make_rng(self.config.rng, self.config.seed, LEARNER_STREAM)
        if self.config.rng == "portable":
            if self.buffer is not None:
                self.buffer.set_rng(self.config.rng, BUFFER_STREAM)
            tail = getattr(engine, "tail", None)
            if hasattr(tail, "softmax_exp"):
                tail.softmax_exp = "portable"
        self._joint: list[tuple[np.ndarray, np.ndarray]] = []

    # -- input checks: once, where latents, labels or images enter a public method ------------------
    def _check(self, latents: np.ndarray, labels: np.ndarray, experience_index: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
        latents = np.asarray(latents)
        shape = tuple(self.engine.latent_shape)
        if latents.shape[1:] != shape:
            raise ValueError(f"latents must have shape (N, {', '.join(map(str, shape))}), got {latents.shape}")
        if not np.all(np.isfinite(latents)):
            raise ValueError("latents contain NaN or inf")
        return latents.astype(np.float32, copy=False), self._check_labels(labels, len(latents), experience_index)

    def _check_labels(self, labels: np.ndarray, n: int, experience_index: int = 0) -> np.ndarray:
        if experience_index < 0:
            raise ValueError(f"experience_index must be >= 0, got {experience_index}")
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integer with shape ({n},), got {labels.dtype} {labels.shape}")
        c = self.engine.num_classes
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(
                f"labels must lie in [0, {c}) (engine head capacity), got [{labels.min()}, {labels.max()}]"
            )
        return labels.astype(np.int64)

    def extract(self, images: np.ndarray) -> np.ndarray:
        """Frozen forward of ``images`` through the engine, in batches; the one check of its latents."""
        bs = self.config.batch_size_eval
        parts = [self.engine.extract(images[i : i + bs]) for i in range(0, len(images), bs)]
        shape = tuple(self.engine.latent_shape)
        out = np.concatenate(parts) if parts else np.zeros((0,) + shape, dtype=np.float32)
        if out.shape != (len(images),) + shape:
            raise ValueError(f"engine.extract returned shape {out.shape}, expected {(len(images),) + shape}")
        if not np.all(np.isfinite(out)):
            raise ValueError("engine.extract returned latents with NaN or inf")
        return out.astype(np.float32, copy=False)

    # -- the loop ------------------------------------------------------------------------------
    def deploy(self, latents: np.ndarray, labels: np.ndarray, experience_index: int = 0) -> None:
        """Deploy on a base experience the engine was pretrained on: prefill the buffer, seed CWR* (or start
        the feature head's statistics, for ``slda`` and ``probe``)."""
        self._deploy(*self._check(latents, labels, experience_index), experience_index)

    def deploy_images(self, images: np.ndarray, labels: np.ndarray, experience_index: int = 0) -> None:
        """:meth:`deploy` on the latents of ``images``."""
        latents = self.extract(images)
        self._deploy(latents, self._check_labels(labels, len(latents), experience_index), experience_index)

    def _deploy(self, latents: np.ndarray, labels: np.ndarray, experience_index: int) -> None:
        counts = np.bincount(labels, minlength=self.engine.num_classes)
        classes = np.flatnonzero(counts)
        if self.feature_head is not None:
            self.feature_head.update(latents, labels)
        if self.consolidator is not None:
            head = self.engine.get_head()
            if self.standardizer is not None and not self.standardizer.fitted:
                self.standardizer.fit(latents)
                head = self.standardizer.head_rows(head)
            self.consolidator.init_from_head(head, classes, counts)
            self.engine.set_head(self.consolidator.consolidated_head())
        if self.buffer is not None:
            self.buffer._insert(latents, labels, experience_index)
        if self.config.strategy == "joint":
            self._joint.append((latents, labels))
        self.seen_classes.update(int(c) for c in classes)

    def train_experience(
        self, latents: np.ndarray, labels: np.ndarray, experience_index: int, on_batch: BatchCallback | None = None
    ) -> TrainStats:
        """Learn one experience (its LR latents and labels) with the configured strategy."""
        return self._train(*self._check(latents, labels, experience_index), experience_index, on_batch)

    def learn_images(
        self, images: np.ndarray, labels: np.ndarray, experience_index: int, on_batch: BatchCallback | None = None
    ) -> TrainStats:
        """:meth:`train_experience` on the latents of ``images``."""
        latents = self.extract(images)
        return self._train(latents, self._check_labels(labels, len(latents), experience_index), experience_index,
                           on_batch)

    def _train(
        self, latents: np.ndarray, labels: np.ndarray, experience_index: int, on_batch: BatchCallback | None
    ) -> TrainStats:
        start = time.perf_counter()
        cfg = self.config
        if self.feature_head is not None:
            self.feature_head.update(latents, labels)
            self.seen_classes.update(int(c) for c in np.unique(labels))
            return TrainStats(len(labels), 0, None, time.perf_counter() - start)
        replay_x = np.zeros((0,) + tuple(self.engine.latent_shape), dtype=np.float32)
        replay_y = np.zeros(0, dtype=np.int64)
        new_x, new_y = latents, labels
        if cfg.strategy == "joint":
            self._joint.append((latents, labels))
            new_x = np.concatenate([x for x, _ in self._joint])
            new_y = np.concatenate([y for _, y in self._joint])
        elif self.buffer is not None and len(self.buffer):
            replay_x, replay_y = self.buffer.latents(), self.buffer.labels
        if self.standardizer is not None:  # the buffer keeps raw latents; the head sees standardized ones
            if not self.standardizer.fitted and len(latents):
                self.standardizer.fit(latents)
            new_x, replay_x = self.standardizer(new_x), self.standardizer(replay_x)
        present = np.union1d(np.unique(labels), np.unique(replay_y)).astype(np.int64)
        if self.consolidator is not None:
            self.engine.set_head(self.consolidator.begin_experience(present))

        # the engine's step without its own checks where it has one (inputs checked once, on entry)
        step = getattr(self.engine, "_train_batch", self.engine.train_batch)
        losses: list[float] = []
        used = np.zeros(len(new_y), dtype=bool)
        epochs = cfg.epochs
        epoch = 0
        while epochs is None or epoch < epochs:
            rows = self._epoch_rows(new_y)
            used[rows] = True
            if cfg.mixing == "balanced":
                batches = balanced_minibatches(new_y[rows], replay_y, cfg.minibatch_size, self._rng)
            else:
                batches = mixed_minibatches(len(rows), len(replay_y), cfg.minibatch_size, self._rng)
            if epochs is None:  # auto: from how often the first epoch presents the new patterns
                epochs = auto_epochs(sum(len(ni) for ni, _ in batches), len(new_y))
            for b, (ni, ri) in enumerate(batches):
                ni = rows[ni]
                x = np.concatenate([new_x[ni], replay_x[ri]])
                y = np.concatenate([new_y[ni], replay_y[ri]])
                loss = float(step(x, y, cfg.lr))
                losses.append(loss)
                if on_batch is not None:
                    on_batch(BatchProgress(experience_index, epoch, b, len(batches), loss))
            epoch += 1

        if self.consolidator is not None:
            n = self.engine.num_classes
            cur = np.bincount(new_y[used], minlength=n) + np.bincount(replay_y, minlength=n)
            self.consolidator.end_experience(self.engine.get_head(), present, cur)
            if cfg.weight_align == "on":
                self.consolidator.align_rows(np.setdiff1d(np.unique(labels), sorted(self.seen_classes)),
                                             sorted(self.seen_classes))
            self.engine.set_head(self.consolidator.consolidated_head())
        if self.buffer is not None:
            self.buffer._insert(latents, labels, experience_index)
        self.seen_classes.update(int(c) for c in np.unique(labels))
        mean_loss = float(np.mean(losses)) if losses else None
        return TrainStats(len(labels), len(replay_y), mean_loss, time.perf_counter() - start)

    def _epoch_rows(self, labels: np.ndarray) -> np.ndarray:
        """Rows of the new patterns used in one epoch: all, or at most ``new_per_class`` per class."""
        cap = self.config.new_per_class
        if cap is None:
            return np.arange(len(labels))
        parts = [self._rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def predict(self, latents: np.ndarray) -> np.ndarray:
        """Predicted classes (restricted to the seen classes) with the engine's current head."""
        if not self.seen_classes:
            raise ValueError("predict called before any experience was learned or deployed")
        return predict(self.logits(latents), sorted(self.seen_classes))

    def logits(self, latents: np.ndarray) -> np.ndarray:
        """Class scores ``(N, num_classes)`` float32 of LR latents, in batches: the strategy's own classifier
        (``slda``, ``probe``) or the engine's tail + head."""
        bs = self.config.batch_size_eval
        scores = self.feature_head.logits if self.feature_head is not None else self.engine.logits
        if self.standardizer is not None:
            std, head_scores = self.standardizer, scores
            scores = lambda x: head_scores(std(x))  # noqa: E731
        parts = [scores(latents[i : i + bs]) for i in range(0, len(latents), bs)]
        return np.concatenate(parts) if parts else np.zeros((0, self.engine.num_classes), dtype=np.float32)

    def evaluate(self, index: int, classes: Sequence[int], test_latents: np.ndarray, test_labels: np.ndarray,
                 stats: TrainStats | None, extract_seconds: float = 0.0) -> ExperienceResult:
        """Score the current model on a test set right after experience ``index``."""
        pred = self.predict(test_latents)
        seen = sorted(self.seen_classes)
        mask = np.isin(test_labels, seen)
        return ExperienceResult(
            index=int(index),
            classes=[int(c) for c in classes],
            seen_classes=seen,
            accuracy_all=accuracy(test_labels, pred),
            accuracy_seen=accuracy(test_labels[mask], pred[mask]),
            per_class_accuracy=nan_to_none(per_class_accuracy(test_labels, pred, self.engine.num_classes)),
            train_seconds=stats.seconds if stats else 0.0,
            extract_seconds=extract_seconds,
            n_new=stats.n_new if stats else 0,
            n_replay=stats.n_replay if stats else 0,
            mean_loss=stats.mean_loss if stats else None,
        )

    def run(
        self,
        stream: Stream,
        images: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        *,
        pretrained_base: bool = False,
        on_batch: BatchCallback | None = None,
        on_experience: ExperienceCallback | None = None,
    ) -> CLResults:
        """Learn every experience of ``stream`` (images from ``images``), testing after each one.

        With ``pretrained_base`` the first experience must be the stream's base experience; it is
        deployed (:meth:`deploy`) instead of trained.
        """
        test_labels = np.asarray(test_labels)
        if test_labels.ndim != 1 or len(test_labels) != len(test_images):
            raise ValueError(
                f"test_labels must be 1-D with one label per test image ({len(test_images)}), got {test_labels.shape}"
            )
        if pretrained_base and (len(stream) == 0 or not stream[0].is_base):
            raise ValueError("pretrained_base=True needs a stream whose first experience is a base experience")
        test_latents = self.extract(test_images)
        results = CLResults(self.config.strategy, int(self.engine.num_classes), config=self._config_dict())
        for exp in stream:
            t0 = time.perf_counter()
            latents = self.extract(exp.images(images))
            extract_seconds = time.perf_counter() - t0
            labels = self._check_labels(exp.labels, len(latents), exp.index)
            if pretrained_base and exp.index == stream[0].index:
                self._deploy(latents, labels, exp.index)
                stats = None
            else:
                stats = self._train(latents, labels, exp.index, on_batch)
            record = self.evaluate(
                exp.index, exp.classes_in_experience, test_latents, test_labels, stats, extract_seconds
            )
            results.experiences.append(record)
            if on_experience is not None:
                on_experience(record)
        if results.experiences:
            pred = self.predict(test_latents)
            results.confusion = confusion_matrix(test_labels, pred, self.engine.num_classes).tolist()
        return results

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to resume: ``(arrays, JSON-able meta)`` for safetensors + JSON.

        Arrays are prefixed ``cwr/``, ``buffer/``, ``standardize/`` (``standardize="on"``), the feature
        strategy's name, ``engine/tail/`` plus ``engine/head``; the ``joint`` baseline's growing memory of
        latents is not saved.
        """
        arrays: dict[str, np.ndarray] = {"engine/head": self.engine.get_head()}
        arrays.update({f"engine/tail/{k}": v for k, v in self.engine.tail_state().items()})
        meta: dict[str, Any] = {
            "kind": "continual_learner",
            "config": asdict(self.config),
            "seen_classes": sorted(self.seen_classes),
            "rng_state": self._rng.bit_generator.state,
        }
        for prefix, part in self._parts():
            if part is not None:
                part_arrays, meta[prefix] = part.state_dict()
                arrays.update({f"{prefix}/{k}": v for k, v in part_arrays.items()})
        return arrays, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (same strategy; engine and buffer already built)."""
        if meta.get("kind") != "continual_learner":
            raise ValueError(f"state kind {meta.get('kind')!r} is not 'continual_learner'")
        if meta["config"]["strategy"] != self.config.strategy:
            raise ValueError(f"state strategy {meta['config']['strategy']!r} does not match {self.config.strategy!r}")
        if meta["config"].get("rng", "numpy") != self.config.rng:
            raise ValueError(f"state rng {meta['config'].get('rng', 'numpy')!r} does not match {self.config.rng!r}")

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

        if "engine/head" not in arrays:
            raise ValueError("state is missing array 'engine/head'")
        self.engine.load_tail_state(part("engine/tail"))
        self.engine.set_head(arrays["engine/head"])
        for prefix, obj in self._parts():
            if obj is not None:
                if prefix not in meta:
                    raise ValueError(f"state has no {prefix!r} part but this learner uses one")
                obj.load_state_dict(part(prefix), meta[prefix])
        self.seen_classes = {int(c) for c in meta["seen_classes"]}
        self._rng = rng_from_state(meta["rng_state"])

    def _parts(self) -> tuple[tuple[str, Any], ...]:
        """The learner's stateful parts by state prefix (a part is None when the strategy has none)."""
        return (("cwr", self.consolidator), ("buffer", self.buffer), (self.config.strategy, self.feature_head),
                ("standardize", self.standardizer))

    def memory_bytes(self) -> dict[str, int]:
        """Bytes the learner keeps beside the engine: ``replay`` (the buffer) and ``strategy`` (CWR*'s
        consolidated rows and counts, SLDA's means, counts and covariance, or the probe's features)."""
        strategy = 0
        if self.consolidator is not None:
            strategy = self.consolidator.cw.nbytes + self.consolidator.past.nbytes
        if self.feature_head is not None:
            strategy = self.feature_head.nbytes
        if self.standardizer is not None:
            strategy += self.standardizer.nbytes
        return {"replay": int(self.buffer.nbytes) if self.buffer is not None else 0, "strategy": int(strategy)}

    @property
    def uses_engine_head(self) -> bool:
        """False when the strategy predicts with its own classifier (``slda``, ``probe``)."""
        return self.feature_head is None

    def _config_dict(self) -> dict:
        cfg = asdict(self.config)
        if self.buffer is not None:
            cfg["buffer"] = {"capacity": self.buffer.capacity, "bits": self.buffer.bits, "policy": self.buffer.policy}
        return cfg

    def __repr__(self) -> str:
        c = self.config
        if self.feature_head is not None:
            return f"ContinualLearner({c.strategy}, {self.feature_head!r}, {len(self.seen_classes)} classes seen)"
        replay = f"replay {len(self.buffer)}/{self.buffer.capacity}" if self.buffer is not None else "no replay"
        epochs = "auto" if c.epochs is None else c.epochs
        return (f"ContinualLearner({c.strategy}, {epochs} epochs, lr {c.lr}, minibatch {c.minibatch_size}, {replay}, "
                f"{len(self.seen_classes)} of {self.engine.num_classes} classes seen)")
