"""Host side (PyTorch): quantizers, binary layers, backbones, pretraining, export."""
