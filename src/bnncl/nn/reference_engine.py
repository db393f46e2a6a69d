"""Torch reference :class:`~bnncl.cl.engine.Engine`: the same protocol on a torch ``Backbone``.

The tail (last K blocks + GAP + head) is the backbone's own modules, run in eval mode, float32
(``qf = qb = qw = 32``) or fake-quantized with the semantics of the device trainer
(:mod:`bnncl.device.tail`, docs/tail-training.md):

* forward at ``qf`` (:func:`bnncl.nn.quantizers.uniform_quantize`, STE): the tail input, each block
  output, the pooled features, the head weights in the forward pass, the softmax output;
* backward at ``qb``: ``dlogits = Q_qb((Q_qf(softmax) - onehot) / B)`` is fed to ``logits.backward``;
  :class:`GradQuantize` (identity forward, quantizes the incoming gradient) sits at every forward
  quantization point and at each conv output; parameter gradients are quantized before the update;
* storage: conv latent weights re-quantized at ``qw`` after each update (clipped to the range they had
  before it; no clipping at ``qw = 32``) by the device's own
  :func:`~bnncl.device.quantize.requantize_update` (stochastic rounding by default, the same noise
  stream as the device trainer), the head at ``qb`` (not clipped).

Trainable: the tail's conv latent weights and the head; bias before sign, batch norm (running
statistics, eval mode) and RPReLU stay frozen, as on the device. Plain SGD (optional momentum).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bnncl.device.quantize import QTensor, check_bits, check_rounding, requantize_update, rounding_noise
from bnncl.device.shapes import architecture_dict, split_latent_shape
from bnncl.device.tail import expand_head
from bnncl.nn.augment import to_input
from bnncl.nn.backbones import Backbone
from bnncl.nn.checkpoint import load_model
from bnncl.nn.quantizers import uniform_quantize


class GradQuantize(torch.autograd.Function):
    """Identity forward; backward quantizes the incoming gradient at ``bits`` (uniform, per tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        ctx.bits = bits
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return uniform_quantize(grad, ctx.bits), None


def grad_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    return x if bits >= 32 else GradQuantize.apply(x, bits)


class TorchEngine:
    """Tail training of a torch ``Backbone`` from the split of ``tail_blocks`` (module docstring).

    The model is copied (the caller's stays untouched). ``num_classes``/``head_classes``: a larger head
    with the pretrained rows placed at ``head_classes`` (as :func:`bnncl.device.tail.expand_head`).
    """

    def __init__(self, model: Backbone, tail_blocks: int, *, qf: int = 32, qb: int = 32, qw: int = 32,
                 momentum: float = 0.0, num_classes: int | None = None, head_classes: Any = None,
                 weight_rounding: str = "stochastic", rounding_seed: int = 0) -> None:
        self.qf, self.qb, self.qw = check_bits("qf", qf), check_bits("qb", qb), check_bits("qw", qw)
        self.weight_rounding, self.rounding_seed = check_rounding(weight_rounding), int(rounding_seed)
        self.updates = 0
        if not (np.isfinite(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.model = copy.deepcopy(model).float().eval()
        cfg = self.model.config
        self.config = cfg
        self.split = cfg.split_for_tail(tail_blocks)
        self.start = len(cfg.blocks) - tail_blocks
        self.binary_split = self.split in cfg.binary_latents and self.split != "gap"
        self.head_dim = int(self.model.feature_dim)
        head = expand_head(self.model.head.weight.detach().numpy(), num_classes, head_classes)
        self.num_classes = int(head.shape[0])
        self.model.head = torch.nn.Linear(self.head_dim, self.num_classes, bias=False)
        with torch.no_grad():
            self.model.head.weight.copy_(torch.from_numpy(head))
        self.latent_shape = split_latent_shape(architecture_dict(cfg), self.split)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._tail = list(self.model.blocks[self.start:])
        self._weights = [b.conv.weight for b in self._tail]
        self._head = self.model.head.weight
        for p in self._weights + [self._head]:
            p.requires_grad_(True)
        c = cfg.input_shape[2]
        self._mean = tuple(cfg.mean) if cfg.mean else (0.0,) * c
        self._std = tuple(cfg.std) if cfg.std else (1.0,) * c
        with torch.no_grad():
            # the q_w grid of each conv (its float range; stochastic rounding keeps it fixed)
            self._ranges = [(np.float32(w.min()), np.float32(w.max())) for w in self._weights]
            for w in self._weights:
                w.copy_(uniform_quantize(w, self.qw))
            self._head.copy_(uniform_quantize(self._head, self.qb))
        self._velocity: list[torch.Tensor | None] = [None] * (len(self._weights) + 1)
        self._deployed = self._snapshot()
        self._deployed_ranges = list(self._ranges)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, tail_blocks: int, **kwargs) -> TorchEngine:
        """Load a torch model file (:func:`bnncl.nn.checkpoint.load_model`) and build the engine."""
        model, _ = load_model(path)
        return cls(model, tail_blocks, **kwargs)

    # -- frozen part ---------------------------------------------------------------------------
    def extract(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images -> float32 NHWC latents at the split (±1 at a binary split)."""
        images = np.asarray(images)
        shape = tuple(self.config.input_shape)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise ValueError(f"images: expected uint8 (N, {', '.join(map(str, shape))}), got {images.dtype} "
                             f"{images.shape}")
        with torch.no_grad():
            x = to_input(torch.from_numpy(np.ascontiguousarray(images)), self._mean, self._std)
            z = self.model.latent(x, self.split)  # (N, C) pooled features at "gap", else NCHW
        return np.ascontiguousarray((z.permute(0, 2, 3, 1) if z.ndim == 4 else z).numpy(), dtype=np.float32)

    # -- tail ----------------------------------------------------------------------------------
    def _fq(self, t: torch.Tensor) -> torch.Tensor:
        return grad_quantize(uniform_quantize(t, self.qf), self.qb)

    def _check_latents(self, latents: np.ndarray) -> torch.Tensor:
        x = np.asarray(latents)
        if x.ndim != 1 + len(self.latent_shape) or x.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (N, {', '.join(map(str, self.latent_shape))}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("latents contain NaN or inf")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return t.permute(0, 3, 1, 2) if t.ndim == 4 else t

    def _logits(self, latents: np.ndarray) -> torch.Tensor:
        x = uniform_quantize(self._check_latents(latents), self.qf)
        for j, block in enumerate(self._tail):
            if j == 0 and self.binary_split:
                xb = xs = x
            else:
                xb = block.sign(block.move(x))
                xs = xb if block.binary_input else x
            y = grad_quantize(block.conv(xb), self.qb)
            x = self._fq(block.act(block.bn(y) + block.shortcut(xs)))
        f = self._fq(torch.flatten(self.model.pool(x), 1) if self._tail else x)
        return F.linear(f, uniform_quantize(self._head, self.qf))

    def logits(self, latents: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._logits(latents).numpy().astype(np.float32, copy=False)

    def gradients(self, latents: np.ndarray, labels: np.ndarray) -> tuple[float, list[np.ndarray], np.ndarray]:
        """Loss and q_b-quantized gradients (conv weights (O, I, KH, KW), head) of one minibatch."""
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        n = len(y)
        if y.shape != (len(np.asarray(latents)),):
            raise ValueError(f"labels: expected shape ({len(np.asarray(latents))},), got {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels: expected values in [0, {self.num_classes})")
        for p in self._weights + [self._head]:
            p.grad = None
        logits = self._logits(latents)
        with torch.no_grad():
            p = uniform_quantize(torch.softmax(logits, dim=1), self.qf)
            onehot = F.one_hot(y, self.num_classes).to(p.dtype)
            dlogits = uniform_quantize((p - onehot) / n, self.qb)
            loss = float(F.cross_entropy(logits.double(), y))
        logits.backward(dlogits)
        with torch.no_grad():
            grads = [uniform_quantize(w.grad, self.qb) if w.grad is not None else torch.zeros_like(w)
                     for w in self._weights]
            g_head = uniform_quantize(self._head.grad, self.qb)
        return loss, [g.numpy().copy() for g in grads], g_head.numpy().copy()

    def train_batch(self, latents: np.ndarray, labels: np.ndarray, lr: float) -> float:
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        if len(np.asarray(latents)) == 0:
            return 0.0
        loss, grads, g_head = self.gradients(latents, labels)
        with torch.no_grad():
            for i, (w, g) in enumerate(zip(self._weights, grads)):
                step = self._step(i, torch.from_numpy(g))
                new = w - lr * step
                if self.qw < 32 and self.weight_rounding == "stochastic":  # fixed grid, as the device
                    noise = rounding_noise(self.rounding_seed, self.updates, i, tuple(w.shape))  # (O, I, KH, KW)
                    q = requantize_update(new.detach().numpy(), *self._ranges[i], self.qw, noise)
                    w.copy_(torch.from_numpy(q.dequantize()))
                    self._ranges[i] = (q.lo, q.hi)
                    continue
                if self.qw < 32:
                    new = torch.clamp(new, w.min(), w.max())
                w.copy_(uniform_quantize(new, self.qw))
                self._ranges[i] = (np.float32(w.min()), np.float32(w.max()))
            self.updates += 1
            step = self._step(len(self._weights), torch.from_numpy(g_head))
            self._head.copy_(uniform_quantize(self._head - lr * step, self.qb))
        return loss

    def _step(self, i: int, g: torch.Tensor) -> torch.Tensor:
        if self.momentum == 0.0:
            return g
        v = self._velocity[i]
        v = g.clone() if v is None else self.momentum * v + g
        self._velocity[i] = v
        return v

    # -- head and state ------------------------------------------------------------------------
    def get_head(self) -> np.ndarray:
        return self._head.detach().numpy().astype(np.float32, copy=True)

    def set_head(self, w: np.ndarray) -> None:
        w = np.asarray(w)
        if w.shape != tuple(self._head.shape):
            raise ValueError(f"head: expected shape {tuple(self._head.shape)}, got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("head contains NaN or inf")
        with torch.no_grad():
            self._head.copy_(uniform_quantize(torch.from_numpy(w.astype(np.float32)), self.qb))
        self._velocity[-1] = None

    def conv_weights(self) -> dict[str, np.ndarray]:
        return {f"blocks.{self.start + j}.conv.weight": w.detach().numpy().copy() for j, w in enumerate(self._weights)}

    def tail_state(self) -> dict[str, np.ndarray]:
        ranges = {f"blocks.{self.start + j}.conv.weight.range": np.array(r, dtype=np.float32)
                  for j, r in enumerate(self._ranges)}
        return self.conv_weights() | ranges | {"updates": np.array([self.updates], dtype=np.int64)}

    def load_tail_state(self, state: dict[str, np.ndarray]) -> None:
        """Conv weights from :meth:`tail_state` (float values + range) or from the device's (codes +
        range): stored values are taken as they are; float values without a range are re-quantized."""
        new, ranges = [], []
        for j, w in enumerate(self._weights):
            name = f"blocks.{self.start + j}.conv.weight"
            rng = np.asarray(state[name + ".range"], np.float32) if name + ".range" in state else None
            if name in state:
                a = np.asarray(state[name], dtype=np.float32)
            elif name + ".codes" in state and rng is not None:
                a = QTensor(
                    np.asarray(state[name + ".codes"]), rng[0], rng[1], self.qw if self.qw < 32 else 8
                ).dequantize()
            else:
                raise ValueError(f"tail state: missing {name!r}")
            if a.shape != tuple(w.shape):
                raise ValueError(f"tail state {name}: expected shape {tuple(w.shape)}, got {a.shape}")
            if rng is None or rng.shape != (2,) or self.qw == 32:
                a = uniform_quantize(torch.from_numpy(a), self.qw).numpy()
                rng = np.array([a.min(), a.max()], np.float32)
            new.append(a)
            ranges.append((np.float32(rng[0]), np.float32(rng[1])))
        with torch.no_grad():
            for w, a in zip(self._weights, new):
                w.copy_(torch.from_numpy(a))
        self._ranges = ranges
        self._velocity = [None] * len(self._velocity)
        self.updates = int(np.asarray(state.get("updates", [0])).reshape(-1)[0])

    def _snapshot(self) -> list[torch.Tensor]:
        return [w.detach().clone() for w in self._weights] + [self._head.detach().clone()]

    def mark_deployed(self) -> None:
        self._deployed = self._snapshot()
        self._deployed_ranges = list(self._ranges)

    def reset_tail(self) -> None:
        with torch.no_grad():
            for p, saved in zip(self._weights + [self._head], self._deployed):
                p.copy_(saved)
        self._ranges = list(self._deployed_ranges)
        self._velocity = [None] * len(self._velocity)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes the torch model holds (float32 parameters and buffers; fake quantization stores float32)."""
        def size(mod: torch.nn.Module) -> int:
            return sum(t.numel() * t.element_size() for t in list(mod.parameters()) + list(mod.buffers()))

        tail = sum(size(b) for b in self._tail)
        head = size(self.model.head)
        return {"backbone": size(self.model) - tail - head, "tail": tail, "head": head}
