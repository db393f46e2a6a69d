"""The on-device learning settings shared by ``bnncl run`` and ``bnncl learn`` (one definition)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bnncl.device.quantize import WEIGHT_ROUNDINGS
from bnncl.errors import BnnclError


@dataclass(frozen=True)
class LearningSettings:
    """How the device learns: tail blocks, hybrid-quantization bits, latent replay, SGD."""

    tail_blocks: int = 2  # trainable binary blocks above the LR layer (0..3)
    qf: int = 8  # forward bits of the tail (32 = float)
    qb: int = 16  # gradient / update bits
    qw: int = 8  # storage bits of the tail's latent weights
    qw_rounding: str = "stochastic"  # re-quantization of the latent weights after an update (or "nearest")
    lr_bits: int = 1  # bits per stored latent (1, 8, 32)
    buffer: int = 1500  # replay capacity (patterns)
    epochs: int = 8  # fmnist-b5: 79.0% at 8, 76.6% at 4 (benchmarks/README.md)
    lr: float = 0.05
    minibatch: int = 128
    seed: int = 0
    new_per_class: int | None = None  # cap on new patterns per class per epoch (None: all)

    def validate(self) -> None:
        """One-line :class:`BnnclError` for the first setting out of range."""
        for name in ("qf", "qb", "qw"):
            if not 1 <= getattr(self, name) <= 32:
                raise BnnclError(f"--{name} must be in [1, 32] bits, got {getattr(self, name)}")
        if self.qw_rounding not in WEIGHT_ROUNDINGS:
            raise BnnclError(f"--qw-rounding must be {' or '.join(WEIGHT_ROUNDINGS)}, got {self.qw_rounding!r}")
        if self.lr_bits not in (1, 8, 32):
            raise BnnclError(f"--lr-bits must be 1, 8 or 32, got {self.lr_bits}")
        if not 0 <= self.tail_blocks <= 3:
            raise BnnclError(f"--tail-blocks must be in 0..3, got {self.tail_blocks}")
        if self.buffer < 1 or self.epochs < 1 or self.minibatch < 1:
            raise BnnclError("--buffer, --epochs and --minibatch must be >= 1")
        if self.new_per_class is not None and self.new_per_class < 1:
            raise BnnclError(f"--new-per-class must be >= 1, got {self.new_per_class}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BnnclError(f"--lr must be a positive number, got {self.lr}")
