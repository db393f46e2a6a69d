"""Binary layers (Bi-Real / ReActNet style) with a float twin mode (``binary=False``).

Binary conv/dense: weights ``sign(W)`` scaled per output channel by ``mean |W|``, the scale applied
*after* the ±1 product, so the float emulation equals an XNOR-popcount kernel exactly. Spatial padding
of a binary conv is +1 (the device packs it as bit 0; docs/design.md §4.1 bit convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnncl.nn.quantizers import binarize_weights


class LearnableBias(nn.Module):
    """Per-channel learnable shift ``x + b`` (ReActNet's RSign threshold when placed before sign)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x + self.bias.view(shape)


class RPReLU(nn.Module):
    """ReActNet RPReLU: ``PReLU(x - gamma) + zeta``, all per channel."""

    def __init__(self, channels: int, init_slope: float = 0.25) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), init_slope))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.prelu(x - self.shift_in.view(shape), self.slope) + self.shift_out.view(shape)


class BinaryConv2d(nn.Conv2d):
    """Conv with 1-bit weights (``binary=True``) or real weights (float twin), no bias.

    Binary mode expects ±1 inputs; it pads them with +1 and returns ``conv(x, sign(W)) * mean|W|``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, binary: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.binary = binary

    def scale(self) -> torch.Tensor:
        """Per-output-channel scale ``mean |W|`` (shape ``(O,)``)."""
        return self.weight.abs().mean(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binary:
            return super().forward(x)
        p = self.padding[0]
        if p:
            x = F.pad(x, (p, p, p, p), value=1.0)
        y = F.conv2d(x, binarize_weights(self.weight), None, self.stride, 0)
        return y * self.scale().view(1, -1, 1, 1)


class BinaryLinear(nn.Linear):
    """Dense layer with 1-bit weights scaled per output by ``mean |W|`` (or real weights), no bias."""

    def __init__(self, in_features: int, out_features: int, binary: bool = True) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.binary = binary

    def scale(self) -> torch.Tensor:
        return self.weight.abs().mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binary:
            return super().forward(x)
        return F.linear(x, binarize_weights(self.weight)) * self.scale()
