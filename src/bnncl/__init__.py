"""bnncl: on-device continual learning with binary neural networks."""

__version__ = "0.1.0"
