"""Learning settings -> device engine, replay buffer and learner: the one place that wires them
(``bnncl run`` via :func:`bnncl.experiment.run_protocol`, ``bnncl learn`` via
:class:`bnncl.service.session.LearnerSession`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bnncl.cl.engine import Engine
from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.cl.strategies import REPLAY_STRATEGIES
from bnncl.errors import BnnclError
from bnncl.settings import LearningSettings

if TYPE_CHECKING:
    from bnncl.device.engine import DeviceEngine
    from bnncl.device.modelfile import DeviceModel


def device_engine(model: DeviceModel, settings: LearningSettings, *, threads: int = 1,
                  num_classes: int | None = None) -> DeviceEngine:
    """The device engine of ``model`` with the settings' tail blocks, bits, rounding and seed."""
    from bnncl.device.engine import DeviceEngine

    return DeviceEngine.from_device_model(model, settings.tail_blocks, qf=settings.qf, qb=settings.qb, qw=settings.qw,
                                          threads=threads, num_classes=num_classes,
                                          weight_rounding=settings.qw_rounding, rounding_seed=settings.seed)


def build_learner(model: DeviceModel | None, settings: LearningSettings, *, engine: Engine | None = None,
                  buffer_policy: str = "class_balanced", threads: int = 1,
                  num_classes: int | None = None) -> ContinualLearner:
    """A learner of the settings' strategy on ``engine`` (default: :func:`device_engine` of ``model``) with
    the settings' replay buffer (for the replaying strategies), SGD and SLDA settings; ``learner.engine`` /
    ``learner.buffer``.

    :class:`BnnclError` for 1-bit replay of real-valued latents (it would keep only their signs);
    ValueError when the model does not take the settings (e.g. more tail blocks than it has)."""
    if engine is None:
        engine = device_engine(model, settings, threads=threads, num_classes=num_classes)
    strategy = settings.strategy
    replays = strategy in REPLAY_STRATEGIES
    if replays and settings.lr_bits == 1 and getattr(engine, "binary_split", True) is False:
        split: Any = getattr(engine, "split", "?")
        raise BnnclError(f"--lr-bits 1 needs a binary latent-replay layer, but the split {split!r} for --tail-blocks "
                         f"{settings.tail_blocks} is real-valued; use the model's binary split or --lr-bits 8/32")
    buffer = None
    if replays:
        buffer = LatentReplayBuffer(tuple(engine.latent_shape), settings.buffer, settings.lr_bits, buffer_policy,
                                    settings.seed)
    return ContinualLearner(engine, LearnerConfig.from_settings(settings), buffer)
