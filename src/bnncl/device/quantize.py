"""The device's uniform quantizer (docs/design.md §1.5), NumPy only: tensors stored at their bit width.

``q(x) = round((x - min) * s) / s + min`` with ``s = (2^b - 1) / (max - min)``, per tensor, from the
tensor's own min/max; a constant tensor (``max == min``, e.g. all zeros) is returned unchanged, and a
range too small for float32 to hold ``s`` (it overflows) gives the constant ``min``; 32 bits
means float32, no quantization. The arithmetic is float32 step by step in the order
:func:`bnncl.nn.quantizers.uniform_quantize` uses (torch computes ``c / t`` for a Python scalar ``c``
and a tensor ``t`` as ``reciprocal(t) * c``), so the de-quantized values agree bit for bit with the
torch fake-quantizer (a test checks it). Rounding is half-to-even in both.

:class:`QTensor` is what the device keeps: the integer codes (``uint8`` up to 8 bits, ``uint16`` up to
16, ``uint32`` up to 24) plus the float32 ``(min, max)`` pair, so ``nbytes`` is the real storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT_BITS = 32
MAX_CODE_BITS = 24  # codes are exact integers in float32 up to 2^24


def check_bits(name: str, bits: object) -> int:
    """``bits`` as an int in 1..24 or 32 (one-line ValueError naming ``name`` otherwise)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer bit width (1..{MAX_CODE_BITS} or 32), got {bits!r}")
    b = int(bits)
    if not (1 <= b <= MAX_CODE_BITS or b == FLOAT_BITS):
        raise ValueError(f"{name}: expected a bit width in 1..{MAX_CODE_BITS} or 32 (float32), got {b}")
    return b


def code_dtype(bits: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ``bits``-bit codes."""
    if bits <= 8:
        return np.dtype(np.uint8)
    if bits <= 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def _scale(lo: np.float32, hi: np.float32, bits: int) -> np.float32:
    """``(2^b - 1) / (max - min)`` computed as torch does: ``reciprocal(max - min) * (2^b - 1)``."""
    with np.errstate(over="ignore", divide="ignore"):
        return np.float32(np.float32(1.0) / np.float32(hi - lo)) * np.float32(2.0**bits - 1.0)


def grid_scale(lo: np.float32, hi: np.float32, bits: int) -> np.float32 | None:
    """The grid's ``s`` for the range ``[lo, hi]`` at ``bits`` bits, or None when the tensor is one level:
    constant (``hi <= lo``) or a range below float32 resolution (``s`` overflows)."""
    if not hi > lo:
        return None
    s = _scale(lo, hi, bits)
    return s if np.isfinite(s) else None


@dataclass
class QTensor:
    """A tensor stored at ``bits`` bits: ``codes`` (unsigned ints) and the float32 ``lo``/``hi`` range.

    At 32 bits ``codes`` holds the float32 values themselves and ``lo``/``hi`` are unused.
    """

    codes: np.ndarray
    lo: np.float32
    hi: np.float32
    bits: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def constant(self) -> bool:
        """True when the tensor was constant (every code 0, every value ``lo``)."""
        return self.bits != FLOAT_BITS and not self.hi > self.lo

    @property
    def scale(self) -> np.float32:
        """``s``: codes per unit (meaningless for a constant or float32 tensor)."""
        return _scale(self.lo, self.hi, self.bits)

    @property
    def step(self) -> float:
        """Value of one code step (1 LSB), ``1 / s``; 0 for a constant or float32 tensor."""
        if self.bits == FLOAT_BITS or self.constant:
            return 0.0
        return float(np.float32(1.0) / self.scale)

    @property
    def nbytes(self) -> int:
        """Real storage: the codes plus, below 32 bits, the two float32 range values."""
        return int(self.codes.nbytes) + (0 if self.bits == FLOAT_BITS else 8)

    def dequantize(self) -> np.ndarray:
        """The float32 values ``code / s + min`` (equal to :func:`fake_quantize` of the source)."""
        if self.bits == FLOAT_BITS:
            return self.codes.copy()
        if self.constant:
            return np.full(self.codes.shape, self.lo, dtype=np.float32)
        return (self.codes.astype(np.float32) / self.scale + self.lo).astype(np.float32, copy=False)


def quantize(x: np.ndarray, bits: int) -> QTensor:
    """Store ``x`` at ``bits`` bits (per-tensor min/max uniform quantizer; 32 = float32 copy)."""
    bits = check_bits("bits", bits)
    x = np.asarray(x, dtype=np.float32)
    if bits == FLOAT_BITS:
        return QTensor(x.copy(), np.float32(0.0), np.float32(0.0), bits)
    if x.size == 0:
        return QTensor(np.zeros(x.shape, dtype=code_dtype(bits)), np.float32(0.0), np.float32(0.0), bits)
    lo, hi = np.float32(x.min()), np.float32(x.max())
    s = grid_scale(lo, hi, bits)
    if s is None:
        return QTensor(np.zeros(x.shape, dtype=code_dtype(bits)), lo, lo, bits)
    codes = np.rint((x - lo) * s)
    return QTensor(codes.astype(code_dtype(bits)), lo, hi, bits)


def fake_quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """``quantize(x, bits).dequantize()``: the float32 values the device computes with."""
    return quantize(x, bits).dequantize()


def codes_on_grid(x: np.ndarray, like: QTensor) -> np.ndarray:
    """Codes of ``x`` on ``like``'s grid (``round((x - min) * s)``, float64 result, not clipped):
    compares two tensors in units of one LSB."""
    if like.bits == FLOAT_BITS or like.constant:
        raise ValueError("codes_on_grid: the reference tensor has no grid (float32 or constant)")
    return np.rint((np.asarray(x, dtype=np.float64) - float(like.lo)) * float(like.scale))


#: How the latent weights are re-quantized after an update (``--qw-rounding``).
WEIGHT_ROUNDINGS = ("stochastic", "nearest")


def check_rounding(rounding: object) -> str:
    """``rounding`` if it is one of :data:`WEIGHT_ROUNDINGS` (one-line ValueError otherwise)."""
    if rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"weight_rounding: expected one of {', '.join(WEIGHT_ROUNDINGS)}, got {rounding!r}")
    return str(rounding)


def rounding_noise(seed: int, step: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) float32 noise for stochastic rounding, a pure function of ``(seed, step, index)``
    (the update step and the tensor), so a run resumed from saved state draws what it would have drawn."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), int(index)]).random(shape, dtype=np.float32)


def requantize_update(new: np.ndarray, lo: np.float32, hi: np.float32, bits: int,
                      noise: np.ndarray | None = None) -> QTensor:
    """Updated latent weights ``new`` stored at ``bits`` (docs/design.md §1.5): clipped to ``[lo, hi]``, the
    range the weights had before the update, then re-quantized.

    ``noise=None`` rounds to nearest (:func:`quantize` of the clipped values): an update smaller than
    half a code step is lost, so at ``q_w = 8`` most SGD steps leave most weights where they were.
    With ``noise`` (uniform [0, 1), :func:`rounding_noise`) the codes are ``floor((x - lo) s + noise)``
    on the grid of ``[lo, hi]``: stochastic rounding, whose expected value is ``x``, so small updates
    survive on average (Gupta et al. 2015, "Deep learning with limited numerical precision")."""
    if check_bits("bits", bits) == FLOAT_BITS:
        raise ValueError("bits: float32 weights are not re-quantized (expected 1..24)")
    lo, hi = np.float32(lo), np.float32(hi)
    new = np.clip(np.asarray(new, dtype=np.float32), lo, hi)
    s = grid_scale(lo, hi, bits)
    if noise is None or s is None:
        return quantize(new, bits)
    codes = np.floor((new - lo) * s + noise)
    np.clip(codes, 0, 2**bits - 1, out=codes)
    return QTensor(codes.astype(code_dtype(bits)), lo, hi, bits)
