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


def check_strategy(name: str) -> str:
    """``name`` if it is a strategy; ValueError naming the known ones otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    return name
