"""Quantizers as small objects that say their precision (1-bit sign, b-bit uniform min/max).

Sign: ``sign(0) = +1``; gradient by the clipped straight-through estimator (``1_{|x|<=1}``) or
ApproxSign (``2 - 2|x|`` on ``|x| <= 1``, Bi-Real Net). Uniform: DESIGN.md §1.5, per tensor from its
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
    """b-bit uniform min/max quantizer (DESIGN.md §1.5); ``precision`` = bits (32 = no quantization)."""

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        if not 1 <= bits <= 32:
            raise ValueError(f"bits must be in [1, 32], got {bits}")
        self.precision = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_quantize(x, self.precision)

    def extra_repr(self) -> str:
        return f"precision={self.precision}"
