"""Quantizers as small objects that say their precision (1-bit sign, b-bit uniform min/max).

Sign: ``sign(0) = +1``; gradient by the clipped straight-through estimator (``1_{|x|<=1}``) or
ApproxSign (``2 - 2|x|`` on ``|x| <= 1``, Bi-Real Net). Uniform: docs/design.md §1.5, per tensor from its
min/max, ``q(x) = round((x - min) * s) / s + min`` with ``s = (2^b - 1) / (max - min)``, STE gradient;
a constant tensor (max == min, e.g. all zeros) is returned unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0``, -1 where ``x < 0`` (no gradient)."""
    return (x >= 0).to(x.dtype) * 2 - 1


class _Sign(torch.autograd.Function):
    """sign forward; backward by the clipped STE (``approx=False``) or ApproxSign (``approx=True``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, approx: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.approx = approx
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.approx:
            return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0), None
        return grad * (x.abs() <= 1).to(grad.dtype), None


class SignQuantizer(nn.Module):
    """1-bit activation quantizer: ``sign`` forward, ``gradient`` = ``"ste"`` (clipped) or ``"approx"``."""

    precision = 1

    def __init__(self, gradient: str = "ste") -> None:
        super().__init__()
        if gradient not in ("ste", "approx"):
            raise ValueError(f"gradient must be 'ste' or 'approx', got {gradient!r}")
        self.gradient = gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Sign.apply(x, self.gradient == "approx")

    def extra_repr(self) -> str:
        return f"precision=1, gradient={self.gradient}"


def binarize_weights(w: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` forward with an identity (straight-through) gradient, for latent binary weights."""
    return w + (sign(w) - w).detach()


class _UniformSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        lo, hi = x.min(), x.max()
        if hi <= lo:
            return x.clone()
        s = (2.0**bits - 1.0) / (hi - lo)
        if not torch.isfinite(s):  # a range below float32 resolution: one level, as a constant tensor
            return torch.full_like(x, lo.item())
        return torch.round((x - lo) * s) / s + lo

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def uniform_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Uniform per-tensor min/max quantization to ``bits`` bits with an STE gradient (32 = identity)."""
    if bits >= 32:
        return x
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    return _UniformSTE.apply(x, bits)


class UniformQuantizer(nn.Module):
    """b-bit uniform min/max quantizer (docs/design.md §1.5); ``precision`` = bits (32 = no quantization)."""

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        if not 1 <= bits <= 32:
            raise ValueError(f"bits must be in [1, 32], got {bits}")
        self.precision = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_quantize(x, self.precision)

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 (dim 0 = output channel): ``(q int8, scale)`` with
    ``scale = max|w| / 127`` (1 for an all-zero channel) and ``q = clip(round(w / scale), -127, 127)``.

    The one quantizer of the stem weights: the device export (``stem.weight`` / ``stem.weight_scale``)
    and the host's fake-quantized stem (``stem_bits=8``) both call it.  Any float dtype; ``scale`` has
    ``w``'s dtype and shape ``(O,)``.  No gradient (see :func:`fake_int8_per_channel`)."""
    if not w.is_floating_point():
        raise TypeError(f"int8_per_channel: expected a float tensor, got {w.dtype}")
    w = w.detach()
    wmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(wmax > 0, wmax / 127.0, torch.ones_like(wmax))
    q = torch.clamp(torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))), -127, 127).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` per output channel (dim 0), in ``dtype``."""
    return (q.to(torch.float64) * scale.to(torch.float64).view(-1, *([1] * (q.dim() - 1)))).to(dtype)


def fold_stem_weight(w: torch.Tensor, std: tuple[float, ...] | list[float]) -> torch.Tensor:
    """The stem conv weight (O, C, KH, KW) with the input normalisation's ``1/(255 std)`` folded in per
    input channel, in float64: the weights the device applies to ``pixel - 255 mean``."""
    s = torch.as_tensor(std, dtype=torch.float64) * 255.0
    return w.detach().to(torch.float64) / s.view(1, -1, 1, 1)


def stem_int8(w: torch.Tensor, std: tuple[float, ...] | list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``int8_per_channel`` of the folded stem weight: ``(q (O, C, KH, KW) int8, scale (O,) float64)``."""
    return int8_per_channel(fold_stem_weight(w, std))


def fake_int8_stem_weight(w: torch.Tensor, std: tuple[float, ...] | list[float]) -> torch.Tensor:
    """The stem weight as the int8 device stem applies it, back in the normalised-input domain:
    ``dequantize(int8(w / (255 std))) * 255 std`` per input channel (computed in float64, returned in
    ``w``'s dtype), with a straight-through (identity) gradient to ``w``."""
    q, scale = stem_int8(w, std)
    s = torch.as_tensor(std, dtype=torch.float64) * 255.0
    w_eff = (dequantize_per_channel(q, scale, torch.float64) * s.view(1, -1, 1, 1)).to(w.dtype)
    return _StraightThrough.apply(w, w_eff)


class _StraightThrough(torch.autograd.Function):
    """Forward ``value`` exactly (``w + (value - w).detach()`` would round in float32); gradient to ``w``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None
