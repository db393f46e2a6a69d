import pytest
import torch

from bnncl.nn.backbones import BackboneConfig, build_backbone, cifar_config, fmnist_config
from bnncl.nn.summary import summarize


@pytest.mark.parametrize("make", [cifar_config, fmnist_config])
def test_forward_shapes_and_split_composition(make):
    torch.manual_seed(0)
    cfg = make(num_classes=7)
    model = build_backbone(cfg).eval()
    h, w, c = cfg.input_shape
    x = torch.randn(3, c, h, w)
    logits = model(x)
    assert logits.shape == (3, 7)
    for k in range(4):
        split = cfg.split_for_tail(k)
        z = model.forward_to(x, split)
        torch.testing.assert_close(model.forward_from(z, split), logits)
    assert cfg.split_for_tail(0) == "gap"
    assert cfg.split_for_tail(1) == f"block{len(cfg.blocks) - 1}"
    with pytest.raises(ValueError, match="tail_blocks"):
        cfg.split_for_tail(4)


def test_binary_latent_split_is_exact_at_one_bit():
    """At a split in ``binary_latents`` the tail only sees sign(z + b): storing 1 bit loses nothing."""
    torch.manual_seed(0)
    cfg = cifar_config(num_classes=5)
    model = build_backbone(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    split = cfg.binary_latents[0]
    block = model.blocks[int(split[5:])]
    x = torch.randn(4, 3, 32, 32)
    z = model.forward_to(x, split)
    bits = torch.where(block.move(z) < 0, -1.0, 1.0)
    # feed back a real latent that has the same signs after the learnable bias: same logits
    z_from_bits = bits - block.move.bias.view(1, -1, 1, 1) + 0.5 * bits
    torch.testing.assert_close(model.forward_from(z_from_bits, split), model.forward_from(z, split))
    latent = model.latent(x, split)
    assert set(latent.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(model.tail_from_latent(latent, split), model(x))
    other_latent = model.latent(x, cfg.split_for_tail(0))
    torch.testing.assert_close(model.tail_from_latent(other_latent, "gap"), model(x))
    # a split that is not binary depends on magnitudes
    other = cfg.split_for_tail(1)
    z1 = model.forward_to(x, other)
    assert not torch.allclose(model.forward_from(z1 * 1.5, other), model.forward_from(z1, other))


def test_float_twin_and_config_json_round_trip():
    cfg = fmnist_config(num_classes=5)
    twin = cfg.float_twin()
    assert not twin.binary and twin.binary_latents == () and twin.name.endswith("-fp32")
    assert BackboneConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="binary latent split"):
        BackboneConfig("x", (8, 8, 1), 8, ((8, 1),), 2, binary_latents=("block5",))


def test_summary_counts_bits_and_macs():
    model = build_backbone(fmnist_config(num_classes=10))
    s = summarize(model)
    assert s.params == sum(p.numel() for p in model.parameters())
    # first binary block: 28x28 output, 32 -> 32 channels, 3x3
    first = next(r for r in s.rows if r.name == "blocks.0.conv")
    assert first.bits == 1 and first.binary_macs == 28 * 28 * 32 * 32 * 9
    binary_weights = sum(b.conv.weight.numel() for b in model.blocks)
    assert s.bytes_by_bits()[1] == sum((b.conv.weight.numel() + 7) // 8 for b in model.blocks)
    assert s.binary_macs > 50 * s.real_macs
    assert s.bytes < s.params * 4 / 10
    assert binary_weights > 0.9 * s.params
    twin = summarize(build_backbone(fmnist_config(num_classes=10, binary=False)))
    assert twin.binary_macs == 0 and set(twin.bytes_by_bits()) == {32}
