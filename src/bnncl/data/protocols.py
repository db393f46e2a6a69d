"""Named, seeded continual-learning protocols (docs/design.md §3.3).

* ``fmnist-b5`` (default): the embedded Fashion-MNIST subset; the device ships with a backbone + head
  pretrained on classes 0-4 (their train images prefill the replay buffer), then learns five
  experiences of one new class each (5, 6, 7, 8, 9); tested on all ten classes after each one.
* ``fmnist-full-b5``: the same on the full Fashion-MNIST release (``--data``/Debian package).
* ``cifar10-b5``: the same on CIFAR-10.
* ``cifar10-ni``: all ten classes, eight experiences of new instances, each under its own shift
  (brightness / blur / rotation / crop; CORe50-NI style), on the backbone pretrained on classes 0-4.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnncl.data.dataset import ImageDataset
from bnncl.data.registry import load_dataset
from bnncl.data.scenarios import Stream, nc_stream, ni_stream
from bnncl.errors import BnnclError


@dataclass(frozen=True)
class ProtocolSpec:
    """A named protocol: which data, which shipped model, how the stream is cut."""

    name: str
    data: str  # a bnncl.data.load_dataset spec
    model: str  # name of a shipped model in bnncl/assets/models (without extension)
    description: str
    build_stream: Callable[[np.ndarray, int], Stream]
    pretrained_base: bool  # the first experience is the host-pretrained base: deployed, not trained
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Learning settings tuned for this protocol (``LearningSettings`` field -> value), used where the
    user sets none; measured in benchmarks/README.md."""

    def load(self) -> tuple[ImageDataset, ImageDataset]:
        """``(train, test)`` datasets of the protocol."""
        return load_dataset(self.data, "train"), load_dataset(self.data, "test")


def _b5(labels: np.ndarray, seed: int) -> Stream:
    return nc_stream(labels, base_classes=range(5), classes_per_experience=1, seed=seed)


def _ni8(labels: np.ndarray, seed: int) -> Stream:
    return ni_stream(labels, n_experiences=8, seed=seed)


PROTOCOLS: dict[str, ProtocolSpec] = {
    p.name: p
    for p in (
        ProtocolSpec("fmnist-b5", "embedded", "fmnist-b5",
                     "Fashion-MNIST (embedded subset): base classes 0-4 pretrained, then 5..9 one per experience",
                     _b5, True),
        ProtocolSpec("fmnist-full-b5", "fmnist", "fmnist-b5",
                     "Fashion-MNIST (full release): base classes 0-4 pretrained, then 5..9 one per experience",
                     _b5, True, {"new_per_class": 600}),  # 6000 images per new class: 70.6% uncapped, 76.9% at 600
        ProtocolSpec("cifar10-b5", "cifar10", "cifar10-b5",
                     "CIFAR-10: base classes 0-4 pretrained, then 5..9 one per experience", _b5, True,
                     # 5000 images of one new class against 300 replayed per old class: a fresh subset of
                     # 300 new patterns per epoch, and more (and larger) steps than Fashion-MNIST needs
                     {"new_per_class": 300, "epochs": 16, "lr": 0.2}),
        ProtocolSpec("cifar10-ni", "cifar10", "cifar10-b5",
                     "CIFAR-10: all classes, 8 experiences of new instances under shifts", _ni8, False),
    )
}


def get_protocol(name: str) -> ProtocolSpec:
    """The protocol called ``name``, or a one-line error listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise BnnclError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}") from None
