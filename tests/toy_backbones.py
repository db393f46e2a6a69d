"""Tiny backbones with non-trivial parameters, shared by the engine tests."""

import torch

from bnncl.nn.backbones import Backbone, BackboneConfig

CFG = BackboneConfig("tiny", (12, 12, 1), 8, ((8, 1), (16, 2), (16, 1)), 4, binary_latents=("block1",),
                     mean=(0.5,), std=(0.25,))


def make_model(cfg: BackboneConfig = CFG, seed: int = 0) -> Backbone:
    """A backbone with non-trivial parameters and batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    m = Backbone(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()
