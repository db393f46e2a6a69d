"""A NumPy reference :class:`~bnncl.cl.engine.Engine`: fixed features + float32 softmax linear head.

The "backbone" maps uint8 images to ``x = img / 127.5 - 1`` flattened, optionally followed by a
fixed random projection to ``proj_dim`` features (seeded, Gaussian, scaled by 1/sqrt(in)) and
optionally by sign (``binary=True``: ±1 latents, as a binary LR layer). There are no tail blocks
(K = 0); the head is a bias-free ``(num_classes, D)`` float32 matrix trained by plain SGD on the
softmax cross-entropy. Used in tests and as the K = 0 float baseline.
"""

from __future__ import annotations

import numpy as np


class NumpyLinearEngine:
    """K = 0 engine: frozen (projected) pixels -> linear softmax head without bias."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        proj_dim: int | None = None,
        binary: bool = False,
        seed: int = 0,
        head: np.ndarray | None = None,
    ) -> None:
        if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
            raise ValueError(f"image_shape must be (H, W, C) positive, got {image_shape}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.binary = bool(binary)
        in_dim = int(np.prod(self.image_shape))
        rng = np.random.default_rng(seed)
        self._proj: np.ndarray | None = None
        if proj_dim is not None:
            if proj_dim < 1:
                raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
            self._proj = (rng.standard_normal((in_dim, proj_dim)) / np.sqrt(in_dim)).astype(np.float32)
        self.head_dim = int(proj_dim) if proj_dim is not None else in_dim
        self.latent_shape: tuple[int, ...] = (self.head_dim,)
        self._head = np.zeros((self.num_classes, self.head_dim), dtype=np.float32)
        if head is not None:
            self.set_head(head)
        self._deployed_head = self._head.copy()

    def mark_deployed(self) -> None:
        """Make the current head the state :meth:`reset_tail` restores (after host pretraining)."""
        self._deployed_head = self._head.copy()

    def extract(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` -> float32 ``(N, D)`` (±1 if ``binary``)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            want = ", ".join(map(str, self.image_shape))
            raise ValueError(f"images must be uint8 (N, {want}), got {images.dtype} {images.shape}")
        x = images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0
        if self._proj is not None:
            x = x @ self._proj
        if self.binary:
            x = np.where(x < 0, -1.0, 1.0).astype(np.float32)
        return x

    def get_head(self) -> np.ndarray:
        return self._head.copy()

    def set_head(self, w: np.ndarray) -> None:
        w = np.asarray(w)
        if w.shape != self._head.shape:
            raise ValueError(f"head must have shape {self._head.shape}, got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("head contains NaN or inf")
        self._head = w.astype(np.float32, copy=True)

    def _check_latents(self, latents: np.ndarray) -> np.ndarray:
        latents = np.asarray(latents)
        if latents.ndim != 2 or latents.shape[1] != self.head_dim:
            raise ValueError(f"latents must have shape (N, {self.head_dim}), got {latents.shape}")
        if not np.all(np.isfinite(latents)):
            raise ValueError("latents contain NaN or inf")
        return latents.astype(np.float32, copy=False)

    def logits(self, latents: np.ndarray) -> np.ndarray:
        return self._check_latents(latents) @ self._head.T

    def train_batch(self, latents: np.ndarray, labels: np.ndarray, lr: float) -> float:
        x = self._check_latents(latents)
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (len(x),) or (y.size and (y.min() < 0 or y.max() >= self.num_classes)):
            raise ValueError(f"labels must be ({len(x)},) in [0, {self.num_classes}), got shape {y.shape}")
        if len(x) == 0:
            return 0.0
        z = x @ self._head.T
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        p[np.arange(len(y)), y] -= 1.0
        self._head -= np.float32(lr) * ((p / len(y)).T @ x).astype(np.float32)
        return loss

    def reset_tail(self) -> None:
        self._head = self._deployed_head.copy()

    def tail_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_tail_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"NumpyLinearEngine has no tail blocks; got state keys {sorted(state)}")

    def memory_bytes(self) -> dict[str, int]:
        return {
            "backbone": 0 if self._proj is None else int(self._proj.nbytes),
            "tail": 0,
            "head": int(self._head.nbytes),
        }
