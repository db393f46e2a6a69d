"""The on-device learning settings shared by ``bnncl run`` and ``bnncl learn``, declared once.

:data:`SETTINGS` is the table: each setting's name, type, default, help text and valid range (the
device's own rules: :func:`bnncl.device.quantize.check_bits` for the bit widths, the replay
buffer's :data:`bnncl.cl.replay.BITS`, ...). Both commands build their options from it
(:func:`add_arguments`, :func:`given_settings`), :class:`LearningSettings` takes its fields and
defaults from it and checks every value against it when it is built: the one check at the edge.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

import numpy as np

from bnncl.cl.portable_rng import RNG_KINDS
from bnncl.cl.replay import BITS as REPLAY_BITS
from bnncl.cl.slda import COV_BITS, DEFAULT_SHRINKAGE
from bnncl.cl.strategies import (
    AUTO_PRESENTATIONS,
    DEFAULT_STRATEGY,
    FEATURE_STRATEGIES,
    MAX_AUTO_EPOCHS,
    MIN_AUTO_EPOCHS,
    REPLAY_STRATEGIES,
    STRATEGIES,
)
from bnncl.device.quantize import (
    FLOAT_BITS,
    MAX_CODE_BITS,
    WEIGHT_ROUNDINGS,
    check_bits,
    check_rounding,
)
from bnncl.device.shapes import MAX_TAIL_BLOCKS
from bnncl.errors import BnnclError


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _device_rule(rule: Callable[[Any], Any]) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        try:
            rule(v)
        except ValueError:
            return False
        return True

    return ok


def _words(values: Iterable[Any]) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:-1]) + " or " + values[-1]


@dataclass(frozen=True)
class Setting:
    """One learning setting: ``--name`` on both commands, a field of :class:`LearningSettings`."""

    name: str
    type: type
    default: Any
    help: str
    expected: str  # the valid range, as the error says it
    ok: Callable[[Any], bool]
    none_word: str | None = None  # the command-line word for None (no limit)
    choices: tuple[Any, ...] | None = field(default=None, repr=False)
    metavar: str | None = None  # default: {choices}, N (int) or X

    @property
    def shown_metavar(self) -> str:
        if self.metavar:
            return self.metavar
        if self.choices:
            return "{" + ",".join(map(str, self.choices)) + "}"
        return "N" if self.type is int else "X"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def show(self, value: Any) -> str:
        return self.none_word if value is None and self.none_word else str(value)

    def error(self, got: Any) -> BnnclError:
        return BnnclError(f"{self.flag}: expected {self.expected}, got {got!r}")

    def parse(self, text: str) -> Any:
        """The value of a command-line word (type only; the range is checked by :meth:`check`)."""
        if self.none_word is not None and text.strip().lower() == self.none_word:
            return None
        try:
            return self.type(text)
        except ValueError:
            raise self.error(text) from None

    def check(self, value: Any) -> None:
        """One-line :class:`BnnclError` naming the flag and the valid range if ``value`` is not valid."""
        if not (value is None and self.none_word is not None) and not self.ok(value):
            raise self.error(value)


_BITS = f"1..{MAX_CODE_BITS} or {FLOAT_BITS} bits"
MIXINGS = ("proportional", "balanced")
DEFAULT_TAIL_BLOCKS = 2
"""Tail blocks of the strategies that train a tail, when the user gives none."""
_int_at_least = lambda low: (lambda v: _is_int(v) and v >= low)

#: Every learning setting, in the order the commands list them.
SETTINGS: tuple[Setting, ...] = (
    Setting("strategy", str, DEFAULT_STRATEGY,
            "how the device learns: slda = streaming LDA on the frozen features (closed form, no replay); "
            "cwr_star = CWR* with latent replay and a trained tail (the papers' method); cwr, naive, joint = "
            "baselines; probe = a joint linear probe on the frozen features (head-only upper bound, keeps all)",
            _words(STRATEGIES), lambda v: v in STRATEGIES, choices=STRATEGIES),
    Setting("tail_blocks", int, None,
            f"trainable binary blocks above the latent-replay layer (auto: 0 for {_words(FEATURE_STRATEGIES)}, "
            f"{DEFAULT_TAIL_BLOCKS} otherwise)",
            f"0..{MAX_TAIL_BLOCKS} blocks", lambda v: _is_int(v) and 0 <= v <= MAX_TAIL_BLOCKS, none_word="auto"),
    Setting("qf", int, 8, "forward bits of the tail, 32 = float", _BITS,
            _device_rule(lambda v: check_bits("qf", v)), metavar="BITS"),
    Setting("qb", int, 16, "gradient/update bits of the tail and head", _BITS,
            _device_rule(lambda v: check_bits("qb", v)), metavar="BITS"),
    Setting("qw", int, 8, "storage bits of the tail's latent weights", _BITS,
            _device_rule(lambda v: check_bits("qw", v)), metavar="BITS"),
    Setting("qw_rounding", str, WEIGHT_ROUNDINGS[0],
            "re-quantization of the latent weights after each update (stochastic: small updates survive "
            "on average; nearest drops those below half a step)",
            _words(WEIGHT_ROUNDINGS), _device_rule(check_rounding), choices=WEIGHT_ROUNDINGS),
    Setting("lr_bits", int, 1, "bits per stored replay latent", _words(REPLAY_BITS) + " bits",
            lambda v: _is_int(v) and v in REPLAY_BITS, choices=REPLAY_BITS),
    Setting("buffer", int, 1500, "replay buffer capacity (patterns)", "an integer >= 1", _int_at_least(1)),
    Setting("epochs", int, 8,
            "epochs per experience; auto = enough for each new pattern to be presented about "
            f"{AUTO_PRESENTATIONS} times ({MIN_AUTO_EPOCHS} to {MAX_AUTO_EPOCHS}; more for a large experience "
            "under balanced mixing or a cap on new patterns)", "an integer >= 1 or 'auto'", _int_at_least(1),
            none_word="auto", metavar="N|auto"),
    Setting("lr", float, 0.05, "SGD learning rate of the tail and head", "a positive number",
            lambda v: isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0),
    Setting("minibatch", int, 128, "minibatch size (new + replayed patterns)", "an integer >= 1", _int_at_least(1)),
    Setting("seed", int, 0, "seed of every RNG", "an integer >= 0", _int_at_least(0)),
    Setting("rng", str, RNG_KINDS[0],
            "random draws of the learner and its replay buffer: numpy = NumPy's Generator; portable = a PCG32 stream "
            "specified to the bit (bnncl.cl.portable_rng), which libbnncl's CWR* loop reproduces exactly",
            _words(RNG_KINDS), lambda v: v in RNG_KINDS, choices=RNG_KINDS),
    Setting("new_per_class", int, None,
            "use at most this many new patterns per class per epoch, a fresh subset each epoch",
            "an integer >= 1 or 'all'", _int_at_least(1), none_word="all", metavar="N|all"),
    Setting("mixing", str, "proportional",
            "CWR*: minibatch composition; proportional = new : replayed as their counts, balanced = every "
            "present class an equal share of each minibatch", "proportional or balanced",
            lambda v: v in MIXINGS, choices=MIXINGS),
    Setting("weight_align", str, "off",
            "CWR*: after each experience scale the new classes' rows to the old rows' mean norm", "off or on",
            lambda v: v in ("off", "on"), choices=("off", "on")),
    Setting("standardize", str, "off",
            "CWR* head-only (--tail-blocks 0; other strategies ignore it): standardize the pooled features per "
            "feature, with statistics fixed at deployment (or by the first experience learned)", "off or on",
            lambda v: v in ("off", "on"), choices=("off", "on")),
    Setting("cwr_max_k", float, None,
            "CWR*: cap on the merge weight k = sqrt(past/cur) of a class seen before (none = the paper's rule; 1 = "
            "an old row moves at least half-way to its trained value)", "a number >= 0 or 'none'",
            lambda v: isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0, none_word="none", metavar="K|none"),
    Setting("shrinkage", float, DEFAULT_SHRINKAGE, "slda: shrinkage of the shared covariance toward the identity",
            "a number in [0, 1)", lambda v: isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
            and 0 <= v < 1),
    Setting("cov_bits", int, 32,
            "slda: storage bits of the shared covariance (16 halves it but drifts when learning a few images at "
            "a time: docs/design.md §1.8)", _words(COV_BITS) + " bits",
            lambda v: _is_int(v) and v in COV_BITS, choices=COV_BITS),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}


def _validate(self: Any) -> None:
    """One-line :class:`BnnclError` for the first setting out of its range, or for tail blocks asked of a
    strategy that trains none."""
    for s in SETTINGS:
        s.check(getattr(self, s.name))
    if self.standardize == "on" and self.strategy in REPLAY_STRATEGIES and self.tail_blocks != 0:
        raise BnnclError(f"--standardize on: standardizes the pooled features of a head-only CWR* head; it needs "
                         f"--tail-blocks 0 (got {self.tail_blocks})")
    if self.strategy in FEATURE_STRATEGIES and self.tail_blocks != 0:
        raise BnnclError(f"--tail-blocks {self.tail_blocks}: --strategy {self.strategy} trains no tail (it learns on "
                         f"the frozen pooled features); leave --tail-blocks out or choose --strategy cwr_star")


def _resolve_then_validate(self: Any) -> None:
    """Fill the strategy-dependent defaults (``tail_blocks`` ``None`` = auto), then :meth:`validate`."""
    if self.tail_blocks is None and self.strategy in STRATEGIES:
        object.__setattr__(self, "tail_blocks", 0 if self.strategy in FEATURE_STRATEGIES else DEFAULT_TAIL_BLOCKS)
    self.validate()


LearningSettings = make_dataclass(
    "LearningSettings",
    [(s.name, s.type if s.default is not None else s.type | None, field(default=s.default)) for s in SETTINGS],
    namespace={"validate": _validate, "__post_init__": _resolve_then_validate,
               "__doc__": "How the device learns (the fields and defaults of :data:`SETTINGS`); checked when "
                          "built, and a subclass's ``validate`` (called then too) checks its own fields.",
               "__module__": __name__},
    frozen=True,
)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                  tuned: Mapping[str, Iterable[tuple[str, Any]]] | None = None,
                  names: Iterable[str] | None = None) -> None:
    """One option per setting (value ``None`` when not given); ``tuned[name]`` = ``(who, value)`` pairs that
    the help lists after the default (e.g. the protocols that tune it); ``names``: only these settings."""
    only = None if names is None else set(names)
    for s in SETTINGS:
        if only is not None and s.name not in only:
            continue
        shown = "; ".join([s.show(s.default)] + [f"{who}: {s.show(v)}" for who, v in (tuned or {}).get(s.name, ())])
        valid = "" if s.choices else f"{s.expected}; "
        parser.add_argument(s.flag, dest=s.name, default=None, metavar=s.shown_metavar,
                            help=f"{s.help} ({valid}default {shown})")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (name -> value; ``all`` is None), typed; :class:`BnnclError`
    for a word of the wrong type. Ranges are checked when the settings are built."""
    return {s.name: s.parse(getattr(args, s.name)) for s in SETTINGS if getattr(args, s.name, None) is not None}
