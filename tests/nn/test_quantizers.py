import pytest
import torch

from bnncl.nn.quantizers import SignQuantizer, UniformQuantizer, binarize_weights, sign, uniform_quantize


def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-2.0, -1e-9, 0.0, 1e-9, 3.0])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_clipped_ste_gradient():
    x = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 2.0], requires_grad=True)
    q = SignQuantizer("ste")
    assert q.precision == 1
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_approx_sign_gradient():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 1.0], requires_grad=True)
    SignQuantizer("approx")(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 1.0, 2.0, 1.5, 0.0]))


def test_sign_quantizer_rejects_unknown_gradient():
    with pytest.raises(ValueError, match="gradient must be"):
        SignQuantizer("magic")


def test_weight_binarization_is_straight_through():
    w = torch.tensor([-0.2, 0.0, 0.5], requires_grad=True)
    out = binarize_weights(w)
    assert out.tolist() == [-1.0, 1.0, 1.0]
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_uniform_quantizer_levels_and_range(bits):
    torch.manual_seed(0)
    x = torch.randn(10_000) * 3
    q = uniform_quantize(x, bits)
    lo, hi = x.min(), x.max()
    assert torch.isclose(q.min(), lo) and torch.isclose(q.max(), hi, rtol=1e-5)
    assert q.unique().numel() <= 2**bits
    step = (hi - lo) / (2**bits - 1)
    assert (q - x).abs().max() <= step / 2 + 1e-5
    # values are exactly on the grid lo + k * step
    k = (q - lo) / step
    assert torch.allclose(k, k.round(), atol=1e-3)


def test_uniform_quantizer_formula_by_hand():
    x = torch.tensor([0.0, 0.1, 0.5, 0.74, 1.0])
    # 2 bits: s = 3, grid {0, 1/3, 2/3, 1}
    assert torch.allclose(uniform_quantize(x, 2), torch.tensor([0.0, 0.0, 2 / 3, 2 / 3, 1.0]))


def test_uniform_quantizer_ste_and_constant_tensor():
    x = torch.randn(50, requires_grad=True)
    UniformQuantizer(4)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(50))
    zeros = torch.zeros(7)
    assert torch.equal(uniform_quantize(zeros, 8), zeros)
    assert UniformQuantizer(32)(x) is x
    assert UniformQuantizer(8).precision == 8
    with pytest.raises(ValueError):
        UniformQuantizer(0)
