"""The learning strategies of :class:`bnncl.cl.learner.ContinualLearner`, named once.

* ``slda``: streaming LDA on the frozen pooled features (:mod:`bnncl.cl.slda`): closed form, no backward
  pass, no replay; the tail is not trained.
* ``cwr_star``: CWR* head consolidation + latent replay, the tail trained by SGD with hybrid quantization
  (the method of the papers bnncl implements, docs/design.md §1.3-1.5).
* ``cwr``: the same loop with plain CWR+ consolidation.
* ``naive``: fine-tuning of tail + head, no consolidation, no replay (a lower bound).
* ``joint``: each experience trains tail + head on every latent seen so far (an upper bound; memory
  grows with the stream).
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = ("slda", "cwr_star", "cwr", "naive", "joint")
"""Every strategy, the default first."""
DEFAULT_STRATEGY = STRATEGIES[0]
REPLAY_STRATEGIES: tuple[str, ...] = ("cwr_star", "cwr")
"""Strategies that keep a latent replay buffer."""
CLOSED_FORM_STRATEGIES: tuple[str, ...] = ("slda",)
"""Strategies that learn without SGD, on the pooled features (the engine runs with no tail blocks)."""


def check_strategy(name: str) -> str:
    """``name`` if it is a strategy; ValueError naming the known ones otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    return name
