"""The engine interface the continual learner talks to.

An engine owns a model split at the latent-replay (LR) layer:

* the **frozen part** (stem + lower blocks) maps images to LR latents: :meth:`Engine.extract`;
* the **trainable tail** (the last K blocks, K = 0..3, + global average pooling) and the
  **head** (a bias-free linear classifier, ``(num_classes, D)`` float32 rows, one per class) are
  trained by :meth:`Engine.train_batch` on latents.

The learner never looks inside: it reads/writes the head (for CWR*), trains on mixed minibatches of
new and replayed latents, asks for logits to evaluate, and snapshots/restores the tail.
Implementations: :class:`bnncl.cl.linear_engine.NumpyLinearEngine` (tests, K = 0 float baseline),
the device engine (NumPy + C, hybrid-quantized) and a torch reference engine.

Conventions every implementation follows:

* images are uint8 NHWC; latents are float32 ``(N, *latent_shape)`` (channels-last), exactly ±1
  when the LR layer is binary;
* ``train_batch`` does ONE optimizer step on the whole tail (blocks + head) with the given learning
  rate and returns the minibatch's mean cross-entropy loss (softmax over all ``num_classes``); an
  engine may also have ``_train_batch``, the same step without input checks, which the learner
  uses on the minibatches it has checked (float32 latents, int64 labels in range, lr > 0);
* ``logits`` runs the tail + head without changing any state;
* ``reset_tail`` restores the tail and head to the state they had when the engine was built or
  last loaded (the deployment state), for the naive/joint baselines;
* ``tail_state``/``load_tail_state`` round-trip the trainable tail (blocks only; the head goes
  through ``get_head``/``set_head``) as a dict of NumPy arrays (safetensors-ready).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """What :class:`bnncl.cl.learner.ContinualLearner` needs from a model (see module docstring)."""

    num_classes: int
    """Head capacity: rows of the head, classes the model can ever predict."""
    latent_shape: tuple[int, ...]
    """Shape of one LR latent, channels-last, e.g. ``(4, 4, 256)``."""
    head_dim: int
    """D, the input size of the head (channels after the tail and global average pooling)."""

    def extract(self, images: np.ndarray) -> np.ndarray:
        """Frozen forward: uint8 ``(N, H, W, C)`` -> float32 ``(N, *latent_shape)``."""
        ...

    def get_head(self) -> np.ndarray:
        """A copy of the head, ``(num_classes, head_dim)`` float32."""
        ...

    def set_head(self, w: np.ndarray) -> None:
        """Replace the head with ``w`` ``(num_classes, head_dim)`` (copied, re-quantized if needed)."""
        ...

    def train_batch(self, latents: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One SGD step of the tail + head on a minibatch; returns the mean loss."""
        ...

    def logits(self, latents: np.ndarray) -> np.ndarray:
        """Tail + head forward: ``(N, *latent_shape)`` -> ``(N, num_classes)`` float32."""
        ...

    def reset_tail(self) -> None:
        """Restore the tail and head to their deployment state."""
        ...

    def mark_deployed(self) -> None:
        """Make the current tail and head the deployment state :meth:`reset_tail` restores (e.g. after a
        protocol of another domain cleared the head)."""
        ...

    def tail_state(self) -> dict[str, np.ndarray]:
        """The trainable tail's parameters (without the head), as NumPy arrays."""
        ...

    def load_tail_state(self, state: dict[str, np.ndarray]) -> None:
        """Load what :meth:`tail_state` returned."""
        ...

    def memory_bytes(self) -> dict[str, int]:
        """Real storage bytes of the model's parts: keys ``backbone``, ``tail``, ``head``."""
        ...
