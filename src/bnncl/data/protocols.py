"""Named, seeded continual-learning protocols (docs/design.md §3.3).

* ``fmnist-b5`` (default): the embedded Fashion-MNIST subset; the device ships with a backbone + head
  pretrained on classes 0-4 (their train images prefill the replay buffer), then learns five
  experiences of one new class each (5, 6, 7, 8, 9); tested on all ten classes after each one.
* ``fmnist-full-b5``: the same on the full Fashion-MNIST release (``--data``/Debian package).
* ``cifar10-b5``: the same on CIFAR-10.
* ``cifar10-ni``: all ten classes, eight experiences of new instances, each under its own shift
  (brightness / blur / rotation / crop; CORe50-NI style), on the backbone pretrained on classes 0-4.

Few-shot (``takes_shots``; ``shots`` = k, default 10, any integer from 1 to the train images of the
scarcest new class):

* ``fmnist-fewshot``: as ``fmnist-b5`` (embedded subset, base 0-4 deployed) but each new class 5..9
  brings only k train images, drawn at random per seed; tested on the full test split.
* ``cifar10-fewshot``: the same on CIFAR-10 with the ``cifar10-b5`` model.

Cross-domain (``fresh_head``: the head starts empty, no base experience; 5 experiences of 2 classes,
0-1, 2-3, ..., 8-9):

* ``fmnist-on-cifar``: the ``cifar10-b5`` backbone learns Fashion-MNIST's 10 classes (the embedded
  subset, 300 train images per class, class-balanced; its 5000 test images), upscaled to 32x32 and
  gray replicated to RGB.
* ``cifar-on-fmnist``: the ``fmnist-b5`` backbone learns CIFAR-10 as 28x28 gray (ITU-R 601 luma):
  a fixed class-balanced subset of 1000 train images per class (seed 0), the full 10000-image test split.

CORe50 (``$BNNCL_CORE50``, downloaded by the user; 50 objects at 32x32x3; trained on sessions 1, 2, 4,
5, 6, 8, 9, 11, tested on sessions 3, 7, 10; the ``cifar10-b5`` backbone with a fresh head):

* ``core50-ni``: one experience per training session (order drawn per seed), all objects in each.
* ``core50-nc``: objects in a seeded order, 10 in the first experience, then 5 per experience (9).
* ``core50-nic``: NICv2-79 style: (object, session) units in a seeded order; the first experience
  holds one unit of each of 10 objects, then 5 units per experience (79 on the full dataset).

:meth:`ProtocolSpec.stream` cuts a protocol's stream (``shots`` for the few-shot ones).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnncl.data.dataset import ImageDataset
from bnncl.data.domains import balanced_subset, split_geometry, to_geometry
from bnncl.data.registry import load_dataset
from bnncl.data.scenarios import Stream, domain_stream, fewshot_stream, nc_stream, ni_stream, unit_nic_stream
from bnncl.errors import BnnclError

#: Seed of the fixed class-balanced train subsets (``ProtocolSpec.train_per_class``); not the run's seed.
SUBSET_SEED = 0
DEFAULT_SHOTS = 10


@dataclass(frozen=True)
class ProtocolSpec:
    """A named protocol: which data, which shipped model, how the stream is cut."""

    name: str
    data: str  # a bnncl.data.load_dataset spec
    model: str  # name of a shipped model in bnncl/assets/models (without extension)
    description: str
    build_stream: Callable[..., Stream]
    """``build_stream(labels, seed)`` -> the stream; few-shot protocols also take ``shots`` (an int, or
    ``None`` for every image) and use ``default_shots`` without it. Prefer :meth:`stream`."""
    pretrained_base: bool  # the first experience is the host-pretrained base: deployed, not trained
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Learning settings tuned for this protocol (``LearningSettings`` field -> value), used where the
    user sets none; measured in benchmarks/README.md."""
    takes_shots: bool = False  # few-shot: the number of train images per new class is an option
    default_shots: int | None = None  # k when the user gives none (few-shot protocols only)
    fresh_head: bool = False  # the model's head is not used: the engine starts from a zeroed head
    train_per_class: int | None = None
    """Train on a fixed class-balanced subset of this many train images per class (seed ``SUBSET_SEED``)."""

    def __post_init__(self) -> None:
        if self.takes_shots != (self.default_shots is not None):
            raise ValueError(f"protocol {self.name}: default_shots is set exactly when takes_shots is")
        if self.fresh_head and self.pretrained_base:
            raise ValueError(f"protocol {self.name}: a fresh head has no pretrained base to deploy")

    def load(self) -> tuple[ImageDataset, ImageDataset]:
        """``(train, test)`` datasets of the protocol, at the geometry of its model."""
        if self.train_per_class is None:
            return load_dataset(self.data, "train"), load_dataset(self.data, "test")
        base, geometry = split_geometry(self.data)
        train = balanced_subset(load_dataset(base, "train"), self.train_per_class, SUBSET_SEED)
        test = load_dataset(base, "test")
        if geometry is not None:  # convert the subset only
            train, test = to_geometry(train, geometry), to_geometry(test, geometry)
        return train, test

    def stream(self, labels: np.ndarray, seed: int, shots: int | None = None) -> Stream:
        """The protocol's stream over the train ``labels`` for ``seed``; ``shots`` (few-shot protocols
        only; ``None`` -> ``default_shots``) is the number of train images per new class."""
        if not self.takes_shots:
            if shots is not None:
                few = sorted(p.name for p in PROTOCOLS.values() if p.takes_shots)
                raise BnnclError(f"protocol {self.name} does not take shots; the few-shot protocols do: {few}")
            return self.build_stream(labels, seed)
        shots = self.default_shots if shots is None else shots
        top = self.max_shots(labels, seed)
        if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or not 1 <= shots <= top:
            raise BnnclError(f"shots {shots!r} is out of range for protocol {self.name}: expected an integer "
                             f"from 1 to {top} (the train images of its scarcest new class)")
        return self.build_stream(labels, seed, int(shots))

    def max_shots(self, labels: np.ndarray, seed: int = 0) -> int:
        """The largest valid ``shots`` over these train ``labels``: the train images of the scarcest new
        class (a class outside the base experience). Few-shot protocols only."""
        if not self.takes_shots:
            raise BnnclError(f"protocol {self.name} does not take shots")
        full = self.build_stream(labels, seed, None)
        counts = [np.bincount(e.labels)[list(e.classes_in_experience)].min() for e in full if not e.is_base]
        return int(min(counts))


def _b5(labels: np.ndarray, seed: int) -> Stream:
    return nc_stream(labels, base_classes=range(5), classes_per_experience=1, seed=seed)


def _fewshot(labels: np.ndarray, seed: int, shots: int | None = DEFAULT_SHOTS) -> Stream:
    if shots is None:
        return _b5(labels, seed)
    return fewshot_stream(labels, base_classes=range(5), shots=shots, classes_per_experience=1, seed=seed)


def _ni8(labels: np.ndarray, seed: int) -> Stream:
    return ni_stream(labels, n_experiences=8, seed=seed)


def _pairs(labels: np.ndarray, seed: int) -> Stream:
    return nc_stream(labels, classes_per_experience=2, seed=seed)


def _core50_sessions(labels: np.ndarray) -> np.ndarray:
    """The session of each train image, checked against ``labels`` (the train split of ``core50``)."""
    from bnncl.data.core50 import core50_index

    index = core50_index(None, "train")
    if not np.array_equal(index.objects, np.asarray(labels)):
        raise BnnclError(f"the labels ({len(labels)}) are not those of the CORe50 train split at {index.root} "
                         f"({len(index.objects)} images); expected load_dataset('core50', 'train').labels")
    return index.sessions


def _core50_ni(labels: np.ndarray, seed: int) -> Stream:
    return domain_stream(labels, _core50_sessions(labels), seed=seed)


def _core50_nc(labels: np.ndarray, seed: int) -> Stream:
    _core50_sessions(labels)
    order = np.random.default_rng(seed).permutation(np.unique(labels)).tolist()
    return nc_stream(labels, class_order=order, classes_per_experience=5, first_experience_classes=10, seed=seed)


def _core50_nic(labels: np.ndarray, seed: int) -> Stream:
    return unit_nic_stream(labels, _core50_sessions(labels), first_classes=10, units_per_experience=5, seed=seed)


_CIFAR_B5_SETTINGS = {"new_per_class": 300, "epochs": 16, "lr": 0.2}

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
                     _CIFAR_B5_SETTINGS),
        ProtocolSpec("cifar10-ni", "cifar10", "cifar10-b5",
                     "CIFAR-10: all classes, 8 experiences of new instances under shifts", _ni8, False),
        ProtocolSpec("fmnist-fewshot", "embedded", "fmnist-b5",
                     "Fashion-MNIST (embedded subset): base classes 0-4 pretrained, then 5..9 one per experience "
                     "with only k (--shots, default 10) train images each, drawn per seed",
                     _fewshot, True, takes_shots=True, default_shots=DEFAULT_SHOTS),
        ProtocolSpec("cifar10-fewshot", "cifar10", "cifar10-b5",
                     "CIFAR-10: base classes 0-4 pretrained, then 5..9 one per experience with only k (--shots, "
                     "default 10) train images each, drawn per seed",
                     _fewshot, True, _CIFAR_B5_SETTINGS,  # cifar10-b5's settings, not tuned for few shots
                     takes_shots=True, default_shots=DEFAULT_SHOTS),
        ProtocolSpec("fmnist-on-cifar", "embedded@32x32x3", "cifar10-b5",
                     "the CIFAR-10 backbone learns Fashion-MNIST (embedded subset, 300 train images per class, "
                     "32x32 RGB) from a fresh head: 5 experiences of 2 classes",
                     _pairs, False, fresh_head=True, train_per_class=300),
        ProtocolSpec("cifar-on-fmnist", "cifar10@28x28x1", "fmnist-b5",
                     "the Fashion-MNIST backbone learns CIFAR-10 (1000 train images per class, fixed subset; full "
                     "test split; 28x28 gray) from a fresh head: 5 experiences of 2 classes",
                     _pairs, False, fresh_head=True, train_per_class=1000),
        ProtocolSpec("core50-ni", "core50", "cifar10-b5",
                     "CORe50 ($BNNCL_CORE50): 50 objects, one experience per training session (8), tested on "
                     "sessions 3, 7, 10; fresh head",
                     _core50_ni, False, fresh_head=True),
        ProtocolSpec("core50-nc", "core50", "cifar10-b5",
                     "CORe50 ($BNNCL_CORE50): 50 objects in a seeded order, 10 then 5 per experience (9), tested "
                     "on sessions 3, 7, 10; fresh head",
                     _core50_nc, False, fresh_head=True),
        ProtocolSpec("core50-nic", "core50", "cifar10-b5",
                     "CORe50 ($BNNCL_CORE50): (object, session) units, 10 objects first then 5 units per "
                     "experience (79, NICv2-79 style), tested on sessions 3, 7, 10; fresh head",
                     _core50_nic, False, fresh_head=True),
    )
}


def get_protocol(name: str) -> ProtocolSpec:
    """The protocol called ``name``, or a one-line error listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise BnnclError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}") from None
