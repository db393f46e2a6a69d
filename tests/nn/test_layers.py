import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnncl.device.bitpack import pack_signs, xnor_dot
from bnncl.nn.layers import BinaryConv2d, BinaryLinear, LearnableBias, RPReLU


def _pm1(x):
    return torch.where(x < 0, -1.0, 1.0)


def _reference_conv(x_pm1: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Explicit loops: ±1 input padded with +1, sign(W), scaled by mean|W| per output channel."""
    n, c, h, wd = x_pm1.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x_pm1, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=1.0)
    wb = np.where(w < 0, -1.0, 1.0)
    alpha = np.abs(w).mean(axis=(1, 2, 3))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, wb)
    return out * alpha[None, :, None, None]


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,hw", [(3, 5, 3, 1, 1, 7), (16, 8, 3, 2, 1, 8), (70, 4, 1, 1, 0, 5), (5, 6, 3, 2, 0, 9)]
)
def test_binary_conv_equals_pm1_reference(cin, cout, k, stride, pad, hw):
    torch.manual_seed(cin * 7 + cout)
    layer = BinaryConv2d(cin, cout, k, stride, pad)
    x = _pm1(torch.randn(2, cin, hw, hw + 1))
    got = layer(x).detach().double().numpy()
    want = _reference_conv(x.double().numpy(), layer.weight.detach().double().numpy(), stride, pad)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_binary_conv_equals_xnor_popcount():
    """The float emulation divided by mean|W| is exactly the integer XNOR-popcount dot product."""
    torch.manual_seed(1)
    cin, cout = 67, 3
    layer = BinaryConv2d(cin, cout, 3, 1, 1)
    x = _pm1(torch.randn(1, cin, 4, 4))
    y = (layer(x) / layer.scale().view(1, -1, 1, 1)).detach().numpy()
    xp = F.pad(x, (1, 1, 1, 1), value=1.0)[0].permute(1, 2, 0).numpy()  # HWC, +1 padding
    w = layer.weight.detach().permute(0, 2, 3, 1).numpy()  # O, KH, KW, C
    for o in range(cout):
        for i in range(4):
            for j in range(4):
                a = pack_signs(xp[i:i + 3, j:j + 3].reshape(9, cin))
                b = pack_signs(w[o].reshape(9, cin))
                dot = int(xnor_dot(a, b, cin).sum())
                assert abs(y[0, o, i, j] - dot) < 1e-3


def test_binary_linear_equals_pm1_reference():
    torch.manual_seed(2)
    layer = BinaryLinear(33, 4)
    x = _pm1(torch.randn(5, 33))
    w = layer.weight.detach()
    want = (x @ _pm1(w).T) * w.abs().mean(1)
    torch.testing.assert_close(layer(x), want)


def test_float_twin_is_plain_conv():
    torch.manual_seed(3)
    layer = BinaryConv2d(4, 6, 3, 1, 1, binary=False)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, None, 1, 1))
    lin = BinaryLinear(4, 2, binary=False)
    torch.testing.assert_close(lin(x[:, :, 0, 0]), x[:, :, 0, 0] @ lin.weight.T)


def test_binary_conv_gradient_reaches_latent_weights():
    layer = BinaryConv2d(4, 2, 3, 1, 1)
    layer(_pm1(torch.randn(1, 4, 5, 5))).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_rprelu_and_learnable_bias():
    act = RPReLU(2)
    with torch.no_grad():
        act.shift_in.copy_(torch.tensor([1.0, 0.0]))
        act.slope.copy_(torch.tensor([0.5, 0.1]))
        act.shift_out.copy_(torch.tensor([0.0, 2.0]))
    x = torch.tensor([[[[3.0]], [[-1.0]]]])
    assert act(x).flatten().tolist() == pytest.approx([2.0, 1.9])
    bias = LearnableBias(2)
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([1.0, -1.0]))
    assert bias(x).flatten().tolist() == [4.0, -2.0]
