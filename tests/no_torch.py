"""Python source that, run first in a subprocess, makes ``import torch`` fail as on a device install."""

BLOCK_TORCH = '''
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not available on the device")
        return None

sys.meta_path.insert(0, NoTorch())
sys.modules.pop("torch", None)
'''
