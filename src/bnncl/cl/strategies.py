"""The learning strategies of :class:`bnncl.cl.learner.ContinualLearner`, named once.

* ``slda``: streaming LDA on the frozen pooled features (:mod:`bnncl.cl.slda`): closed form, no backward
  pass, no replay; the tail is not trained.
* ``cwr_star``: CWR* head consolidation + latent replay, the tail trained by SGD with hybrid quantization
  (the method of the papers bnncl implements, docs/design.md §1.3-1.5).
* ``cwr``: the same loop with plain CWR+ consolidation.
* ``naive``: fine-tuning of tail + head, no consolidation, no replay (a lower bound).
* ``joint``: each experience trains tail + head on every latent seen so far (an upper bound; memory
  grows with the stream).
* ``probe``: a joint linear probe (:mod:`bnncl.cl.probe`): softmax regression refit on every pooled
  feature seen so far (the upper bound of any head-only learner; memory grows with the stream).
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = ("slda", "cwr_star", "cwr", "naive", "joint", "probe")
"""Every strategy, the default first."""
DEFAULT_STRATEGY = STRATEGIES[0]
REPLAY_STRATEGIES: tuple[str, ...] = ("cwr_star", "cwr")
"""Strategies that keep a latent replay buffer."""
FEATURE_STRATEGIES: tuple[str, ...] = ("slda", "probe")
"""Strategies with their own classifier on the frozen pooled features: the engine runs with no tail blocks
and its head is unused."""

AUTO_PRESENTATIONS = 16
"""``epochs="auto"`` (SGD strategies): epochs enough for each new pattern of an experience to be presented about
this many times (:func:`auto_epochs`); chosen on validation splits (benchmarks/README.md)."""
MIN_AUTO_EPOCHS = 8
"""The fewest epochs ``epochs="auto"`` gives one experience (the default epochs): ten images of a new class,
cycled ~25 times an epoch under balanced mixing, would get one epoch of ~12 SGD steps from the presentation
rule alone, too few for the head (a user's three classes of ten images: 37 of 60 held-out images right at one
epoch, 51 of 60 at eight)."""
MAX_AUTO_EPOCHS = 64
"""The most epochs ``epochs="auto"`` gives one experience."""


def auto_epochs(new_presentations_per_epoch: int, n_new: int) -> int:
    """Epochs for ``epochs="auto"``: ``ceil(AUTO_PRESENTATIONS * n_new / new_presentations_per_epoch)``, within
    ``[MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS]``, where one epoch presents the experience's ``n_new`` new patterns
    ``new_presentations_per_epoch`` times in all (``n_new`` under proportional mixing without a cap, fewer with
    ``new_per_class`` or under balanced mixing of a large experience, more for a few images under balanced
    mixing). ``MIN_AUTO_EPOCHS`` when there is nothing new."""
    if n_new <= 0 or new_presentations_per_epoch <= 0:
        return MIN_AUTO_EPOCHS
    wanted = -(-AUTO_PRESENTATIONS * n_new // new_presentations_per_epoch)
    return int(min(MAX_AUTO_EPOCHS, max(MIN_AUTO_EPOCHS, wanted)))


def check_strategy(name: str) -> str:
    """``name`` if it is a strategy; ValueError naming the known ones otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    return name
