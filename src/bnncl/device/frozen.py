"""Frozen-backbone engine: runs a :class:`DeviceModel` with the C kernels (torch-free).

Pipeline per chunk of images (uint8 NHWC):

* stem: 3x3 conv of the raw pixels (zero padding) with the weights that fold in the input
  normalisation, float32 (default) or int8 (integer sums, exact in float32 below 2^24), summed in a
  fixed order (:func:`kernels.im2col.stem_conv3x3_u8`: the same result on every path and batch size),
  minus the precomputed border correction ``conv(255 * mean, zero padding)`` that makes it equal
  to torch's conv of the *normalised*, zero-padded input; fused batch norm; RPReLU;
* binary block: binary conv of the packed signs of ``t = x + b`` with the fused ``mean|W| * BN``
  output transform (:func:`kernels.binary_conv2d`); then one fused pass
  (:func:`kernels.epilogue.block_epilogue`): + shortcut (2x2 average pool, channel repeat; of
  ``sign(t)`` at a binary split), RPReLU, and the packed signs of ``output + b`` for the next block;
* global average pooling (summed over H*W in order) and the float32 head (:func:`kernels.linear.matmul`,
  summed in a fixed order): a row's logits do not depend on the chunk size or the thread count.

On every native kernel path the stem and the whole block loop run as ONE C call per chunk
(:class:`kernels.forward.ForwardPlan`, ``fused=True``, the default): the same operations in the same
order, so the same bits and floats as the per-layer path above (``fused=False``, kept as its oracle),
without the per-layer call overhead that dominated batch 1.

Everything is float32 channels-last; the differences from torch are float rounding of the fused
transforms and, with ``stem="int8"``, the stem weight rounding (measured: ``benchmarks/inference.md``).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnncl.device import kernels
from bnncl.device.bitpack import WORD_DTYPE, unpack_signs, words_for
from bnncl.device.kernels import forward as one_call
from bnncl.device.kernels.epilogue import block_epilogue, native_epilogue
from bnncl.device.kernels.im2col import reference_im2col3x3, stem_conv3x3_u8
from bnncl.device.kernels.linear import matmul
from bnncl.device.kernels.prepacked import PackedBinaryConv
from bnncl.device.kernels.tail_elementwise import OFF, gap
from bnncl.device.modelfile import DeviceModel
from bnncl.device.shapes import block_geometry, split_index

DEFAULT_CHUNK = 256
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters
_heap_tuned = False


def keep_heap_pages(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Serve activation-sized allocations from the heap and keep freed heap pages (glibc ``mallopt``).

    Each block allocates MB-sized NumPy arrays; with glibc's defaults every one is a fresh ``mmap``
    whose pages fault in on first touch and are unmapped on free, which doubled the batch-32 latency
    (measured: 176 -> 90 us/image on fmnist).  Process-wide, once; peak memory is unchanged (freed
    memory is reused rather than returned).  Returns whether it applied (False off glibc).
    """
    global _heap_tuned
    if _heap_tuned:
        return True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    _heap_tuned = ok
    return ok
STEM_PRECISIONS = ("auto", "float32", "int8")


def resolve_stem(architecture: dict, stem: str = "auto") -> str:
    """The stem precision to run: ``"auto"`` is the int8 stem for a model trained with it
    (``stem_bits`` 8, quantization-aware) and the float32 stem otherwise (the one a float-trained stem
    matches); ``"float32"`` and ``"int8"`` force one."""
    if stem not in STEM_PRECISIONS:
        raise ValueError(f"stem: expected one of {', '.join(STEM_PRECISIONS)}, got {stem!r}")
    if stem != "auto":
        return stem
    return "int8" if architecture.get("stem_bits", 32) == 8 else "float32"


@dataclass(frozen=True)
class _Block:
    weight: np.ndarray  # packed (O, 3, 3, words)
    scale: np.ndarray
    bias: np.ndarray
    input_bias: np.ndarray
    act: tuple[np.ndarray, np.ndarray, np.ndarray]  # RPReLU shift_in, slope, shift_out
    in_channels: int
    stride: int
    binary_input: bool
    conv: PackedBinaryConv

    @property
    def ptrs(self) -> dict[str, int | None]:
        """Addresses of the per-channel vectors (the arrays live as long as the block)."""
        cached = self.__dict__.get("_ptrs")
        if cached is None:
            cached = {k: a.ctypes.data for k, a in zip(("shift_in", "slope", "shift_out"), self.act)}
            cached["src_bias"] = self.input_bias.ctypes.data if self.binary_input else None
            self.__dict__["_ptrs"] = cached
        return cached


def _vec(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class FrozenEngine:
    """Inference on a device model: logits, split activations and 1-bit latents.

    ``threads`` goes to the binary kernels; ``chunk`` images are processed at a time (bounds memory).
    ``stem="auto"`` (default, :func:`resolve_stem`) runs the int8 stem on a model trained with it and
    the float32 stem otherwise; ``stem="float32"`` forces the float weights (matches a float-trained
    stem to float rounding); ``stem="int8"`` the int8 weights (integer conv, exact sums; on a
    float-trained stem its weight rounding changes downstream signs, ``benchmarks/inference.md``).
    ``tune_heap`` applies :func:`keep_heap_pages` (process-wide glibc malloc thresholds) once.
    ``fused=True`` runs the stem and all blocks in one C call per chunk on native kernel paths
    (bit-identical to ``fused=False``, the per-layer path).
    """

    def __init__(self, model: DeviceModel, threads: int = 1, chunk: int = DEFAULT_CHUNK,
                 stem: str = "auto", tune_heap: bool = True, fused: bool = True) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk: expected an integer >= 1, got {chunk!r}")
        self.model, self.threads, self.chunk, self.fused = model, threads, chunk, bool(fused)
        self._plan: one_call.ForwardPlan | None = None
        if tune_heap and sys.platform.startswith("linux"):
            keep_heap_pages()
        self.arch = model.architecture
        t = model.tensors
        self.input_shape = tuple(self.arch["input_shape"])
        stem = self.stem_precision = resolve_stem(self.arch, stem)
        # stem: weights as float32 (C*9, O) in the im2col column order
        if stem == "int8":
            wq, scale = t["stem.weight"], t["stem.weight_scale"].astype(np.float64) * t["stem.scale"]
        else:
            wq, scale = t["stem.weight_float"], t["stem.scale"].astype(np.float64)
        self._stem_w = np.ascontiguousarray(wq.reshape(wq.shape[0], -1).T, dtype=np.float32)  # (9C, O)
        h, w, c = self.input_shape
        offset = np.broadcast_to(t["stem.input_offset"].astype(np.float64), (1, h, w, c))
        corr = reference_im2col3x3(offset, np.float64) @ self._stem_w.astype(np.float64)
        corr = corr.reshape(h, w, -1)
        self._stem_scale = scale.astype(np.float32)
        self._stem_bias = (t["stem.bias"].astype(np.float64) - corr * scale).astype(np.float32)
        self._stem_act = (t["stem.act.shift_in"], t["stem.act.slope"], t["stem.act.shift_out"])
        self.blocks: list[_Block] = []
        for i, g in enumerate(block_geometry(self.arch)):
            p = f"fused.blocks.{i}."
            self.blocks.append(_Block(
                weight=np.ascontiguousarray(t[p + "weight"]), scale=_vec(t[p + "scale"]), bias=_vec(t[p + "bias"]),
                input_bias=_vec(t[p + "input_bias"]),
                act=(_vec(t[p + "act.shift_in"]), _vec(t[p + "act.slope"]), _vec(t[p + "act.shift_out"])),
                in_channels=g["in_channels"], stride=g["stride"],
                binary_input=f"block{i}" in self.arch["binary_latents"],
                conv=PackedBinaryConv(t[p + "weight"], g["in_channels"], g["stride"], 1, t[p + "scale"],
                                      t[p + "bias"])))
        self._head_t = np.ascontiguousarray(t["head.weight"].T)
        self._geometry = block_geometry(self.arch)

    def plan(self, path: str | None = None) -> one_call.ForwardPlan | None:
        """The one-call forward plan (built on first use), or None when it does not apply: ``fused=False``,
        the ``numpy`` kernel path (``path``, default the active one), or no C core."""
        if not self.fused or (path or kernels.active_path()) == "numpy" or not one_call.available():
            return None
        if self._plan is None:
            h, w, c = self.input_shape
            self._plan = one_call.ForwardPlan(
                (h, w, self._stem_w.shape[1]), c, self._stem_w, (self._stem_scale, self._stem_bias, *self._stem_act),
                [b.weight for b in self.blocks],
                [(g["in_channels"], g["out_channels"], g["stride"], g["in_h"], g["in_w"], b.binary_input)
                 for g, b in zip(self._geometry, self.blocks)],
                [(b.scale, b.bias, b.input_bias, *b.act) for b in self.blocks])
        return self._plan

    # -- stages (one chunk, no input checks) ------------------------------------------------
    def run_stem(self, images: np.ndarray, pack: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Stem on uint8 (N, H, W, C): float32 (N, H, W, stem_channels) and, with ``pack``, the packed
        signs of ``x + b`` for block 0."""
        acc = stem_conv3x3_u8(images, self._stem_w, self.threads)
        bits = block_epilogue(acc, self._stem_act, mul=self._stem_scale, addmap=self._stem_bias,
                              next_bias=self._next_bias(0, pack), threads=self.threads)
        return acc, bits

    def run_block(self, i: int, x: np.ndarray, bits: np.ndarray,
                  pack: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Binary block ``i`` from its input ``x`` and the packed signs ``bits`` of ``x + b``: its output
        and, with ``pack``, the packed signs of ``output + b`` of block ``i + 1``."""
        b = self.blocks[i]
        nb = self._next_bias(i + 1, pack)
        path = kernels.active_path()
        epi = native_epilogue()
        if path == "numpy" or epi is None:
            y = kernels.binary_conv2d(bits, b.weight, b.in_channels, b.stride, 1, b.scale, b.bias, self.threads)
            nxt = block_epilogue(y, b.act, src=x, stride=b.stride,
                                 src_bias=b.input_bias if b.binary_input else None, next_bias=nb,
                                 threads=self.threads)
            return y, nxt
        # fast path (batch 1 is call-overhead bound): pre-packed weights, raw pointers
        n, h, w, _ = bits.shape
        y = b.conv(bits, self.threads)
        _, ho, wo, o = y.shape
        nxt = None if nb is None else np.empty((n, ho, wo, words_for(o)), WORD_DTYPE)
        epi(y.ctypes.data, n, ho, wo, o, None, None, x.ctypes.data, h, w, b.in_channels, b.stride,
            b.ptrs["src_bias"], b.ptrs["shift_in"], b.ptrs["slope"], b.ptrs["shift_out"],
            None if nb is None else nb.ctypes.data, None if nxt is None else nxt.ctypes.data, self.threads,
            path == "avx512")
        return y, nxt

    def stem(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, H, W, stem_channels)."""
        return self.run_stem(images, pack=False)[0]

    def block(self, i: int, x: np.ndarray) -> np.ndarray:
        """Binary block ``i`` on float32 NHWC activations."""
        bits = kernels.pack_signs_f32(np.ascontiguousarray(x + self.blocks[i].input_bias), self.threads)
        return self.run_block(i, np.ascontiguousarray(x, dtype=np.float32), bits, pack=False)[0]

    def pool(self, x: np.ndarray) -> np.ndarray:
        """Global average pooling (N, H, W, F) -> (N, F): summed over H*W in order, then / (H*W)."""
        return gap(np.ascontiguousarray(x, dtype=np.float32), OFF, kernels.active_path())

    def head(self, x: np.ndarray) -> np.ndarray:
        """Global average pooling + bias-free linear head: (N, H, W, F) -> (N, classes), in a fixed order."""
        return matmul(self.pool(x), self._head_t)

    # -- public API ------------------------------------------------------------------------
    def forward_to(self, images: np.ndarray, split: str) -> np.ndarray:
        """Real activations at ``split`` (before that block's bias and sign), float32 NHWC."""
        stop = split_index(self.arch, split)
        return self._chunked(images, lambda x: self._run(x, stop)[0])

    def latents(self, images: np.ndarray, split: str | None = None, packed: bool = False) -> np.ndarray:
        """Latent-replay activations at ``split`` (default: the model's LR split).

        At a binary split: ``sign(z + b)`` as float32 ±1 (N, H, W, C), or with ``packed=True`` as
        packed bits uint64 (N, H, W, words) (:mod:`bnncl.device.bitpack` convention).  At a real
        split: float32 (N, H, W, C) (``packed=True`` is then an error); at ``gap``: the pooled feature
        vector float32 (N, C).
        """
        split = split or self.model.lr_split
        stop = split_index(self.arch, split)
        if not self.model.is_binary_split(split):
            if packed:
                raise ValueError(f"split {split!r} is not a binary latent split; packed latents exist only at "
                                 f"{', '.join(self.arch['binary_latents']) or 'none'}")
            z = self.forward_to(images, split)
            return self.pool(z) if split == "gap" else z
        channels = self.blocks[stop].in_channels

        def run(x: np.ndarray) -> np.ndarray:
            bits = self._run(x, stop, pack_last=True)[1]
            return bits if packed else unpack_signs(bits, channels, np.float32)

        return self._chunked(images, run)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Float32 logits (N, num_classes); column ``j`` is dataset class ``pretrained_classes[j]``."""
        return self._chunked(images, lambda x: self.head(self._run(x, len(self.blocks))[0]))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted dataset class index per image (int64)."""
        return np.asarray(self.model.pretrained_classes, np.int64)[self.logits(images).argmax(axis=1)]

    # -- internals -------------------------------------------------------------------------
    def _run(self, images: np.ndarray, stop: int, pack_last: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Activations at split index ``stop`` and (``pack_last``) the packed signs of ``z + b[stop]``."""
        path = kernels.active_path()
        plan = self.plan(path)
        if plan is None:
            return self.run_layers(images, stop, pack_last)
        return plan.run(images, stop, pack_last, self.threads, path)

    def run_layers(
        self, images: np.ndarray, stop: int, pack_last: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_run` stage by stage (stem, then one conv + one epilogue call per block): the oracle of
        the one-call path, and the path on ``numpy``."""
        x, bits = self.run_stem(images, pack=stop > 0 or pack_last)
        for i in range(stop):
            x, bits = self.run_block(i, x, bits, pack=i + 1 < stop or pack_last)
        return x, bits

    def _next_bias(self, i: int, pack: bool) -> np.ndarray | None:
        return self.blocks[i].input_bias if pack and i < len(self.blocks) else None

    def _chunked(self, images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        images = self._check(images)
        parts = [fn(images[i:i + self.chunk]) for i in range(0, len(images), self.chunk)]
        if not parts:  # no images: the output shape of one, with 0 rows
            return fn(np.zeros((1, *self.input_shape), np.uint8))[:0]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __repr__(self) -> str:
        name = self.arch.get("name", "?") if self.model.path == "<memory>" else Path(self.model.path).stem
        return (f"FrozenEngine({name!r}, {'x'.join(map(str, self.input_shape))}, {len(self.blocks)} blocks, "
                f"{self.stem_precision} stem, {self.threads} thread(s), chunk {self.chunk})")

    def _check(self, images: object) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            what = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"images: expected a uint8 array (N, H, W, C), got {what}")
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ValueError(f"images: expected shape (N, {', '.join(map(str, self.input_shape))}) for "
                             f"{self.arch['name']}, got {images.shape}")
        return np.ascontiguousarray(images)
