"""The device :class:`~bnncl.cl.engine.Engine`: frozen forward (C kernels) + hybrid-quantized tail.

* frozen part: :class:`bnncl.device.frozen.FrozenEngine` ``latents(images, split)`` on a device model
  file, or any callable ``images -> latents`` (tests, a torch backbone converted by hand);
* tail + head: :class:`bnncl.device.tail.TailTrainer` (q_f / q_b / q_w, docs/tail-training.md).

``memory_bytes()`` is real storage: ``backbone`` = the frozen part's tensors as the frozen forward
holds them (stem, packed binary weights and fused per-channel params of the blocks below the split),
``tail`` = latent weight codes at q_w + their packed signs + the frozen per-channel params of the tail
blocks (+ momentum buffers if any), ``head`` = the head codes at q_b.

Build one from a model file::

    engine = DeviceEngine.from_model_file("model.bnn", tail_blocks=2, qf=8, qb=16, qw=8,
                                          num_classes=10, head_classes=model.pretrained_classes)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnncl.device.bitpack import words_for
from bnncl.device.shapes import architecture_dict, block_geometry, split_index
from bnncl.device.tail import TailTrainer

if TYPE_CHECKING:
    from bnncl.device.modelfile import DeviceModel

Frozen = Callable[[np.ndarray], np.ndarray]


def estimated_backbone_bytes(architecture: Any, split: str, stem_bits: int = 8) -> int:
    """Bytes of the frozen part as the device model file lays it out (stem weights at ``stem_bits``
    + float32 per-channel params; per block packed sign(W) + input bias + fused scale/bias + RPReLU)."""
    arch = architecture_dict(architecture)
    stop = split_index(arch, split)
    c, o = arch["input_shape"][2], arch["stem_channels"]
    total = o * 9 * c * stem_bits // 8 + 4 * (c + 6 * o)
    for g in block_geometry(arch)[:stop]:
        cin, cout = g["in_channels"], g["out_channels"]
        total += cout * 9 * words_for(cin) * 8 + 4 * (cin + 5 * cout)
    return int(total)


class DeviceEngine:
    """:class:`~bnncl.cl.engine.Engine` on the device: ``frozen`` maps uint8 NHWC images to the latents
    at ``tail.split``; ``tail`` trains on them."""

    def __init__(self, tail: TailTrainer, frozen: Frozen, image_shape: Sequence[int], backbone_bytes: int) -> None:
        if not callable(frozen):
            raise ValueError(f"frozen: expected a callable images -> latents, got {type(frozen).__name__}")
        self.tail = tail
        self._frozen = frozen
        self.image_shape = tuple(int(v) for v in image_shape)
        self.backbone_bytes = int(backbone_bytes)
        self.num_classes = tail.num_classes
        self.latent_shape = tuple(tail.latent_shape)
        self.head_dim = tail.head_dim
        self.split = tail.split
        self.binary_split = tail.binary_split  # the LR latents are exactly ±1 (1-bit replay is exact)

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_device_model(cls, model: DeviceModel, tail_blocks: int, *, qf: int | None = None,
                          qb: int | None = None, qw: int | None = None, momentum: float = 0.0, threads: int = 1,
                          num_classes: int | None = None, head_classes: Sequence[int] | None = None,
                          stem: str = "auto", weight_rounding: str | None = None,
                          rounding_seed: int | None = None) -> DeviceEngine:
        """Frozen forward + tail of a loaded :class:`~bnncl.device.modelfile.DeviceModel`.

        ``qf``/``qb``/``qw``/``weight_rounding``/``rounding_seed`` left out: the defaults of
        :data:`bnncl.settings.SETTINGS`. With ``num_classes`` larger than the pretrained head,
        ``head_classes`` defaults to the model's ``pretrained_classes`` (the dataset class of each head row)."""
        from bnncl.device.frozen import FrozenEngine
        from bnncl.settings import DEFAULTS

        qf, qb, qw = (DEFAULTS[k] if v is None else v for k, v in (("qf", qf), ("qb", qb), ("qw", qw)))
        weight_rounding = DEFAULTS["qw_rounding"] if weight_rounding is None else weight_rounding
        rounding_seed = DEFAULTS["seed"] if rounding_seed is None else rounding_seed

        split = model.split_for_tail(tail_blocks)
        if num_classes is not None and head_classes is None:
            head_classes = model.pretrained_classes
        tail = TailTrainer(model.architecture, model.tail_parameters(tail_blocks), split, qf=qf, qb=qb, qw=qw,
                           momentum=momentum, threads=threads, num_classes=num_classes, head_classes=head_classes,
                           weight_rounding=weight_rounding, rounding_seed=rounding_seed)
        fe = FrozenEngine(model, threads=threads, stem=stem)
        stem = fe.stem_precision
        stop = len(model.architecture["blocks"]) - tail_blocks
        unused = {"stem.weight", "stem.weight_scale"} if stem == "float32" else {"stem.weight_float"}
        keep = lambda k: (k.startswith("stem.") and k not in unused) or any(  # noqa: E731
            k.startswith(f"fused.blocks.{i}.") for i in range(stop))
        backbone = sum(int(v.nbytes) for k, v in model.tensors.items() if keep(k))
        return cls(tail, lambda images: fe.latents(images, split), model.architecture["input_shape"], backbone)

    @classmethod
    def from_model_file(cls, path: str | os.PathLike, tail_blocks: int, **kwargs: Any) -> DeviceEngine:
        """:meth:`from_device_model` of ``DeviceModel.load(path)``."""
        from bnncl.device.modelfile import DeviceModel

        return cls.from_device_model(DeviceModel.load(path), tail_blocks, **kwargs)

    @classmethod
    def from_params(cls, architecture: Any, params: Mapping[str, np.ndarray], tail_blocks: int, frozen: Frozen,
                    *, backbone_bytes: int | None = None, **kwargs: Any) -> DeviceEngine:
        """Tail from float32 parameters by torch state_dict name (e.g. a ``Backbone.state_dict()`` as
        NumPy), frozen part from a callable; ``backbone_bytes`` defaults to
        :func:`estimated_backbone_bytes`. ``kwargs`` go to :class:`TailTrainer`."""
        arch = architecture_dict(architecture)
        n = len(arch["blocks"])
        if isinstance(tail_blocks, bool) or not isinstance(tail_blocks, (int, np.integer)) \
                or not 0 <= tail_blocks <= min(3, n):
            raise ValueError(f"tail_blocks: expected 0..{min(3, n)}, got {tail_blocks!r}")
        split = "gap" if tail_blocks == 0 else f"block{n - tail_blocks}"
        tail = TailTrainer(arch, params, split, **kwargs)
        if backbone_bytes is None:
            backbone_bytes = estimated_backbone_bytes(arch, split)
        return cls(tail, frozen, arch["input_shape"], backbone_bytes)

    # -- Engine protocol -----------------------------------------------------------------------
    def extract(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.image_shape:
            want = ", ".join(map(str, self.image_shape))
            raise ValueError(f"images: expected uint8 (N, {want}), got {images.dtype} {images.shape}")
        out = np.asarray(self._frozen(images), dtype=np.float32)
        if out.shape != (len(images),) + self.latent_shape:
            raise ValueError(f"frozen forward returned {out.shape}, expected {(len(images),) + self.latent_shape}")
        return out

    def get_head(self) -> np.ndarray:
        return self.tail.get_head()

    def set_head(self, w: np.ndarray) -> None:
        self.tail.set_head(w)

    def train_batch(self, latents: np.ndarray, labels: np.ndarray, lr: float) -> float:
        return self.tail.train_batch(latents, labels, lr)

    def _train_batch(self, latents: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """:meth:`train_batch` on inputs the caller has checked (the learner; Engine docstring): the
        tail's unchecked step."""
        return self.tail._train_batch(latents, labels, lr)

    def logits(self, latents: np.ndarray) -> np.ndarray:
        return self.tail.logits(latents)

    def reset_tail(self) -> None:
        self.tail.reset()

    def mark_deployed(self) -> None:
        """Make the current tail and head the state :meth:`reset_tail` restores."""
        self.tail.mark_deployed()

    def tail_state(self) -> dict[str, np.ndarray]:
        return self.tail.tail_state()

    def load_tail_state(self, state: dict[str, np.ndarray]) -> None:
        self.tail.load_tail_state(state)

    def memory_bytes(self) -> dict[str, int]:
        return {"backbone": self.backbone_bytes, **self.tail.memory_bytes()}

    def __repr__(self) -> str:
        t = self.tail
        latents = f"{'binary' if self.binary_split else 'real'} latents {'x'.join(map(str, self.latent_shape))}"
        return (f"DeviceEngine({'x'.join(map(str, self.image_shape))}, split {self.split} ({latents}), "
                f"q {t.qf}/{t.qb}/{t.qw}, {self.num_classes} head rows)")
