"""On-device training of the tail: the last K binary blocks + GAP + bias-free head, hybrid-quantized.

The tail starts at a split point of the backbone and takes the latents there (float32 NHWC; exactly ±1
at a split listed in ``binary_latents``, where the first block skips its own bias + sign and feeds the
±1 latent to both its conv and its shortcut). Block ``i``::

    xb  = sign(x + b)                       (1 bit, packed; x itself at a binary split)
    y   = dot(xb, sign(W)) * mean|W|        (C kernel ``binary_conv2d_int32`` on packed bits, +1 padding)
    z   = y * a + c + shortcut(x or xb)     (batch norm = frozen affine from the running statistics)
    out = Q_f(RPReLU(z))

then ``f = Q_f(GAP(out))`` and ``logits = f @ Q_f(H)^T``; the head's products (forward and gradients)
sum in a fixed order (:func:`bnncl.device.kernels.linear.matmul`), so they do not depend on BLAS.
What trains: the latent real weights ``W``
of the tail's binary convs and the head ``H``. The learnable bias ``b``, batch norm and RPReLU stay as
deployed (docs/tail-training.md says why).

Quantization (docs/design.md §1.5; ``Q_n`` = :func:`bnncl.device.quantize.quantize` at n bits, 32 = float32):

* forward at ``q_f``: the tail input, each block output, the pooled features, the head weights used
  in the forward pass, the softmax output;
* backward at ``q_b``: ``dlogits = (Q_f(p) - onehot) / B``, the gradient arriving at every forward
  quantization point (features, block outputs), the gradient at each conv output (``dy``, the operand
  of the weight gradient), every parameter gradient (the update is ``lr`` times it);
* storage: conv latent weights at ``q_w`` bits (codes + min/max), after each update clipped to the
  range the tensor had before the update and re-quantized (at ``q_w = 32``: float32, no clipping);
  the head at ``q_b`` bits (its update precision; not clipped, so rows zeroed by CWR* can grow). Saved for the
  backward pass: the packed ±1 block inputs, 1-bit masks of the sign STE (``|x + b| <= 1``) and of RPReLU
  (``z - shift_in > 0``), and the features at ``q_f``.

Backward of a binary conv (STE): the weight gradient ``G = sum_p xb * dy`` uses additions and
subtractions only (at ``q_b < 32`` exact integer sums of the ``q_b`` codes, C kernel
``tailgrad.wgrad_minus_tiled``; at 32 a float GEMM with a ±1 operand,
:func:`bnncl.device.tail_layers.pm1_weight_grad`);
the latent weight receives ``mean|W| * G + (sum_k sign(W) G) / n * sgn(W)`` (identity STE through sign,
plus the gradient of the ``mean|W|`` scale, as torch autograd gives for ``bnncl.nn.layers``); the input
gradient goes through sign by the clipped STE. Plain SGD, optional momentum (off by default).

Execution: every step of a block is a C pass on the active kernel path, or its NumPy oracle on the
``numpy`` path, bit for bit the same (:mod:`bnncl.device.kernels.tail_elementwise` for the element-wise chains
— block input, block output, pooling, backward prologue/epilogue, latent weight gradient —,
:mod:`bnncl.device.kernels.tailgrad` for the weight gradient and the input gradient with its col2im);
quantizers that need a tensor's min/max get it from the pass that produced the tensor and are applied
by the pass that reads it (:class:`bnncl.device.kernels.tail_elementwise.QParams`). ``q_b = 32`` keeps the
NumPy + BLAS backward (:meth:`TailTrainer._block_backward_float`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnncl.device import kernels
from bnncl.device.bitpack import pack_signs, unpack_signs
from bnncl.device.kernels import tail_elementwise, tailgrad
from bnncl.device.kernels.linear import matmul
from bnncl.device.kernels.tail_elementwise import QParams
from bnncl.device.quantize import (
    FLOAT_BITS,
    QTensor,
    check_bits,
    check_rounding,
    fake_quantize,
    grid_scale,
    quantize,
    requantize_update,
    rounding_noise,
)
from bnncl.device.shapes import (
    MAX_TAIL_BLOCKS,
    architecture_dict,
    block_geometry,
    conv_out_hw,
    feature_dim,
    split_latent_shape,
)
from bnncl.device.tail_layers import col2im, im2col_pm1, pm1_weight_grad, shortcut_backward

BN_EPS = 1e-5


def expand_head(head: np.ndarray, num_classes: int | None, head_classes: Any = None) -> np.ndarray:
    """The pretrained head ``(R, D)`` placed into a ``(num_classes, D)`` head (zero rows elsewhere):
    row ``j`` goes to ``head_classes[j]`` (default ``j``)."""
    rows = head.shape[0]
    if num_classes is None and head_classes is None:
        return head
    n = rows if num_classes is None else int(num_classes)
    idx = np.arange(rows) if head_classes is None else np.asarray(head_classes, dtype=np.int64)
    if n < 1 or idx.shape != (rows,) or len(set(idx.tolist())) != rows or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"head_classes: expected {rows} distinct rows in [0, {n}) for the pretrained head, "
                         f"got {np.asarray(head_classes).tolist() if head_classes is not None else 'default'}")
    out = np.zeros((n, head.shape[1]), dtype=np.float32)
    out[idx] = head
    return out


@dataclass
class _Block:
    index: int
    cin: int
    cout: int
    stride: int
    skip_sign: bool  # first tail block at a binary split: input is already sign(x + b)
    binary_input: bool  # shortcut sees sign(x + b) too
    move_bias: np.ndarray
    bn_a: np.ndarray
    bn_c: np.ndarray
    shift_in: np.ndarray
    slope: np.ndarray
    shift_out: np.ndarray
    weight: QTensor  # latent weights (O, KH, KW, I) at q_w
    w_packed: np.ndarray = field(default=None)  # type: ignore[assignment]
    w_values: np.ndarray = field(default=None)  # type: ignore[assignment]
    scale: np.ndarray = field(default=None)  # type: ignore[assignment]
    velocity: np.ndarray | None = None

    def refresh(self) -> None:
        """Derived forward data after the latent weights changed: values, packed signs, mean|W|."""
        self.w_values = self.weight.dequantize()
        self.w_packed = pack_signs(self.w_values)
        self.scale = np.abs(self.w_values).reshape(self.cout, -1).mean(axis=1, dtype=np.float32)

    @property
    def repeat(self) -> int:
        return self.cout // self.cin

    def fused_nbytes(self) -> int:
        arrays = (self.bn_a, self.bn_c, self.shift_in, self.slope, self.shift_out)
        return sum(int(a.nbytes) for a in arrays) + (0 if self.skip_sign else int(self.move_bias.nbytes))


class TailTrainer:
    """The trainable tail from ``split`` to the logits, trained on device with hybrid quantization.

    ``architecture``: a ``BackboneConfig`` or the architecture dict of a device model file;
    ``params``: float32 arrays by torch state_dict name for the tail blocks and ``head.weight``
    (``DeviceModel.tail_parameters(K)``, or a torch ``Backbone.state_dict()`` as NumPy);
    ``split``: ``config.split_for_tail(K)``. ``qf``/``qb``/``qw``: bit widths (32 = float32).
    ``num_classes``: head capacity when larger than the pretrained head (new rows start at zero);
    ``head_classes``: the row of the larger head that each pretrained row goes to (default 0, 1, ...).
    ``threads``: C core threads of the weight- and input-gradient kernels (and of the conv).
    ``weight_rounding``: how the latent weights return to ``q_w`` bits after each update,
    ``"stochastic"`` (default) or ``"nearest"`` (:func:`~bnncl.device.quantize.requantize_update`);
    the noise is a function of ``rounding_seed``, the update count and the block.
    """

    def __init__(self, architecture: Any, params: Mapping[str, np.ndarray], split: str, *, qf: int = 8,
                 qb: int = 16, qw: int = 8, momentum: float = 0.0, threads: int = 1,
                 num_classes: int | None = None, head_classes: Any = None,
                 weight_rounding: str = "stochastic", rounding_seed: int = 0) -> None:
        arch = architecture_dict(architecture)
        if arch["binary"] is not True:
            raise ValueError("architecture: the device tail trains binary backbones only (binary=True)")
        if arch["sign_gradient"] != "ste":
            raise ValueError(f"architecture.sign_gradient: the device tail implements 'ste', got "
                             f"{arch['sign_gradient']!r}")
        self.arch = arch
        self.qf, self.qb, self.qw = check_bits("qf", qf), check_bits("qb", qb), check_bits("qw", qw)
        self.weight_rounding, self.rounding_seed = check_rounding(weight_rounding), int(rounding_seed)
        self.updates = 0  # SGD steps taken (the stochastic-rounding noise stream's position)
        self._softmax_exp = "numpy"
        if not (np.isfinite(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.threads = int(threads)
        n = len(arch["blocks"])
        self.latent_shape = split_latent_shape(arch, split)
        self.split = split
        self.start = n if split == "gap" else int(split[len("block"):])
        if n - self.start > MAX_TAIL_BLOCKS:
            raise ValueError(f"split: a tail holds at most {MAX_TAIL_BLOCKS} blocks, {split!r} gives {n - self.start}")
        self.binary_split = split in arch["binary_latents"] and split != "gap"
        self.head_dim = feature_dim(arch)
        self._blocks = [self._make_block(i, params, arch) for i in range(self.start, n)]
        head = self._param(params, "head.weight", (int(arch["num_classes"]), self.head_dim))
        head = expand_head(head, num_classes, head_classes)
        self.num_classes = int(head.shape[0])
        self._head = quantize(head, self.qb)
        self._head_velocity: np.ndarray | None = None
        self._refresh_head()
        self._deployed = self._snapshot()

    # -- construction --------------------------------------------------------------------------
    @staticmethod
    def _param(params: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in params:
            raise ValueError(f"params: missing {name!r} (expected torch state_dict names of the tail and head)")
        a = np.asarray(params[name], dtype=np.float32)
        if a.shape != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"params[{name!r}]: contains NaN or inf")
        return a.copy()

    def _make_block(self, i: int, params: Mapping[str, np.ndarray], arch: Mapping[str, Any]) -> _Block:
        g = block_geometry(arch)[i]
        cin, cout, stride = g["in_channels"], g["out_channels"], g["stride"]
        p = f"blocks.{i}."
        get = lambda k, s: self._param(params, p + k, s)
        w = get("conv.weight", (cout, cin, 3, 3)).transpose(0, 2, 3, 1)  # OIHW -> OHWI
        gamma, beta = get("bn.weight", (cout,)), get("bn.bias", (cout,))
        mean, var = get("bn.running_mean", (cout,)), get("bn.running_var", (cout,))
        invstd = (np.float32(1.0) / np.sqrt(var + np.float32(BN_EPS))).astype(np.float32)
        a = (invstd * gamma).astype(np.float32)
        c = (beta - mean * a).astype(np.float32)
        skip = i == self.start and self.binary_split
        block = _Block(
            index=i, cin=cin, cout=cout, stride=stride, skip_sign=skip,
            binary_input=skip or f"block{i}" in arch["binary_latents"],
            move_bias=get("move.bias", (cin,)), bn_a=a, bn_c=c,
            shift_in=get("act.shift_in", (cout,)), slope=get("act.slope", (cout,)),
            shift_out=get("act.shift_out", (cout,)), weight=quantize(np.ascontiguousarray(w), self.qw),
        )
        block.refresh()
        return block

    def _refresh_head(self) -> None:
        self._head_f = fake_quantize(self._head.dequantize(), self.qf)  # forward copy at q_f
        self._head_ft = np.ascontiguousarray(self._head_f.T)

    @property
    def softmax_exp(self) -> str:
        """The softmax's exp: ``numpy`` (``np.exp``, the default) or ``portable`` (the C core's, as libbnncl computes
        it: :func:`bnncl.device.kernels.tail_elementwise.softmax_exp`; RuntimeError when the C core is not built);
        the learner with ``rng="portable"`` sets it."""
        return self._softmax_exp

    @softmax_exp.setter
    def softmax_exp(self, kind: str) -> None:
        if kind not in ("numpy", "portable"):
            raise ValueError(f"softmax_exp: expected 'numpy' or 'portable', got {kind!r}")
        if kind == "portable":
            tail_elementwise.softmax_exp(np.zeros(1, np.float32))  # the C core answers now, not mid-experience
        self._softmax_exp = kind

    # -- forward -------------------------------------------------------------------------------
    def _check_latents(self, latents: np.ndarray) -> np.ndarray:
        x = np.asarray(latents)
        if x.ndim != 1 + len(self.latent_shape) or x.shape[1:] != self.latent_shape:
            want = ", ".join(map(str, self.latent_shape))
            raise ValueError(f"latents: expected shape (N, {want}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("latents contain NaN or inf")
        return x.astype(np.float32, copy=False)

    def _block_forward(self, blk: _Block, x: np.ndarray, q: QParams, cache: list | None,
                       path: str) -> tuple[np.ndarray, QParams]:
        """``x``: the block input before its ``Q_f`` (``q``), a fresh C-contiguous float32 array that is
        quantized in place; returns the block output before its ``Q_f`` and that quantizer."""
        xb_packed, ste = tail_elementwise.fwd_input(x, q, None if blk.skip_sign else blk.move_bias,
                                           cache is not None and not blk.skip_sign, path)
        dot = kernels.binary_conv2d_int32(xb_packed, blk.w_packed, blk.cin, blk.stride, 1, threads=self.threads)
        out, pos, (lo, hi) = tail_elementwise.fwd_out(
            dot, None if blk.binary_input else x, xb_packed if blk.binary_input else None, x.shape, blk.stride,
            blk.scale, blk.bn_a, blk.bn_c, blk.shift_in, blk.slope, blk.shift_out, path)
        if cache is not None:
            cache.append((xb_packed, ste, pos, x.shape))
        return out, QParams.of(lo, hi, self.qf)

    def _forward(self, x: np.ndarray, caches: list | None) -> tuple[np.ndarray, QTensor]:
        """Logits and features of checked float32 latents ``x`` (:meth:`_check_latents`)."""
        if not self._blocks:
            feats = quantize(fake_quantize(x, self.qf), self.qf)
        else:
            path = kernels.active_path()
            x = np.array(x, dtype=np.float32, order="C", copy=True)
            q = QParams.of(*tail_elementwise.minmax(x, path), self.qf)
            for blk in self._blocks:
                x, q = self._block_forward(blk, x, q, caches, path)
            feats = quantize(tail_elementwise.gap(x, q, path), self.qf)
        logits = matmul(feats.dequantize(), self._head_ft)
        return logits.astype(np.float32, copy=False), feats

    def logits(self, latents: np.ndarray) -> np.ndarray:
        """Tail + head forward (no state change): ``(N, *latent_shape)`` -> ``(N, num_classes)``."""
        return self._forward(self._check_latents(latents), None)[0]

    def features(self, latents: np.ndarray) -> np.ndarray:
        """The pooled features (head input) at ``q_f``."""
        return self._forward(self._check_latents(latents), None)[1].dequantize()

    # -- training ------------------------------------------------------------------------------
    def gradients(self, latents: np.ndarray, labels: np.ndarray) -> tuple[float, list[np.ndarray], np.ndarray]:
        """Forward + backward of one minibatch: ``(mean loss, conv weight grads (O,KH,KW,I) at q_b,
        head grad at q_b)``; changes nothing."""
        x = self._check_latents(latents)
        return self._gradients(x, self._check_labels(labels, len(x)))

    def _check_labels(self, labels: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(labels)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels: expected integers of shape ({n},), got {y.dtype} {y.shape}")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels: expected values in [0, {self.num_classes}), got [{y.min()}, {y.max()}]")
        return y

    def _gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray], np.ndarray]:
        """:meth:`gradients` of checked latents and labels."""
        n = len(x)
        caches: list = []
        logits, feats = self._forward(x, caches)
        z = logits - logits.max(axis=1, keepdims=True)
        e = tail_elementwise.softmax_exp(z) if self.softmax_exp == "portable" else np.exp(z)
        p = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        logp = z.astype(np.float64) - np.log(e.astype(np.float64).sum(axis=1, keepdims=True))
        loss = float(-np.mean(logp[np.arange(n), y]))
        onehot = np.zeros_like(p)
        onehot[np.arange(n), y] = 1.0
        dlogits = fake_quantize((fake_quantize(p, self.qf) - onehot) / np.float32(n), self.qb)
        f = feats.dequantize()
        g_head = fake_quantize(matmul(dlogits.T, f), self.qb)
        grads: list[np.ndarray] = [None] * len(self._blocks)  # type: ignore[list-item]
        if self._blocks:
            df = fake_quantize(matmul(dlogits, self._head_f), self.qb)
            last = self._blocks[-1]
            h, w = self._out_hw(last, caches[-1][3])
            # Q_b of the (N, H, W, C) broadcast of df / (H W) = the broadcast of Q_b of the (N, C) array
            # (same min/max, same values): kept per image, broadcast over H*W by the kernels
            d: tuple = (fake_quantize(df / np.float32(h * w), self.qb), h * w, tail_elementwise.OFF)
            path = kernels.active_path()
            for j in range(len(self._blocks) - 1, -1, -1):
                grads[j], d = self._block_backward(self._blocks[j], caches[j], d, j > 0, path)
        return loss, grads, g_head

    @staticmethod
    def _out_hw(blk: _Block, in_shape: tuple[int, ...]) -> tuple[int, int]:
        return conv_out_hw(in_shape[1], in_shape[2], 3, blk.stride, 1)

    def _block_backward(self, blk: _Block, cache: tuple, dsrc: tuple, need_dx: bool,
                        path: str) -> tuple[np.ndarray, tuple | None]:
        """``dsrc = (dout, bcast, q)``: the gradient at the block output is ``Q_b(dout)`` by ``q``,
        ``dout`` (P, O) or, with ``bcast = H*W``, one row per image. Returns the latent weight gradient
        and the same triple for the block input (None without ``need_dx``)."""
        if self.qb == FLOAT_BITS:
            return self._block_backward_float(blk, cache, dsrc, need_dx)
        xb_packed, ste, pos, in_shape = cache
        dout, bcast, qd = dsrc
        n, ho, wo = (in_shape[0], *self._out_hw(blk, in_shape))
        p = n * ho * wo
        v, (lo, hi) = tail_elementwise.bwd_v(dout, bcast, qd, pos, blk.slope, blk.bn_a, path)
        ctile, colsum, dt = tail_elementwise.bwd_codes(v, lo, hi, self.qb, blk.scale, need_dx, path)
        # G = sum_p xb * dy as exact integer sums of the q_b codes c (dy = lo + c / s): G = lo * sum_p xb
        # + (sum_p c - 2 * sum of c where xb = -1) / s; additions only (tailgrad.wgrad_minus_tiled)
        pat = tailgrad.patterns(xb_packed, blk.stride, path)
        s_minus, ones = tailgrad.wgrad_minus_tiled(pat, ctile, blk.cout, (1 << self.qb) - 1, path, self.threads)
        grid = grid_scale(lo, hi, self.qb)
        constant = grid is None
        s = np.float32(0.0) if constant else grid
        g = tail_elementwise.weight_g(s_minus, ones, colsum, p, blk.cin, lo, s, constant, path)  # (O, 9 I)
        dw = tail_elementwise.latent_grad(g, blk.w_values.reshape(blk.cout, -1), blk.scale, path)
        dw = fake_quantize(dw.reshape(blk.weight.shape), self.qb)
        if not need_dx:
            return dw, None
        wpat = tailgrad.weight_patterns((blk.w_values < 0).reshape(blk.cout, -1))
        dxb = tailgrad.dgrad_col2im(dt, wpat, in_shape, blk.stride, path, self.threads)
        dx, (lo2, hi2) = tail_elementwise.bwd_dx(dxb, dout, bcast, qd, pos, blk.slope, blk.stride, ste,
                                                 blk.binary_input, path)
        return dw, (dx, 0, QParams.of(lo2, hi2, self.qb))

    def _block_backward_float(self, blk: _Block, cache: tuple, dsrc: tuple,
                              need_dx: bool) -> tuple[np.ndarray, tuple | None]:
        """``q_b = 32``: float32 GEMMs with a ±1 operand (NumPy + BLAS)."""
        xb_packed, ste, pos_bits, in_shape = cache
        dout, bcast, _ = dsrc  # no quantization at 32 bits
        n, ho, wo = (in_shape[0], *self._out_hw(blk, in_shape))
        p = n * ho * wo
        d = np.repeat(dout, bcast, axis=0) if bcast else dout.reshape(p, blk.cout)
        pos = tail_elementwise.unpack_bits(pos_bits, blk.cout).reshape(p, blk.cout)
        dz = np.where(pos, d, d * blk.slope).astype(np.float32)
        dy = dz * blk.bn_a
        xb = unpack_signs(xb_packed, blk.cin, np.int8)
        cols = im2col_pm1(xb, 3, blk.stride, 1)  # (P, 9*I) ±1
        g = pm1_weight_grad(cols, dy).T  # (O, 9*I): sum_p xb * dy
        w = blk.w_values.reshape(blk.cout, -1)
        dw = tail_elementwise.latent_grad(np.ascontiguousarray(g), w, blk.scale, kernels.active_path())
        dw = dw.reshape(blk.weight.shape)
        if not need_dx:
            return dw, None
        sw = np.where(blk.w_values < 0, np.float32(-1.0), np.float32(1.0)).reshape(blk.cout, -1)
        dxb = col2im((dy * blk.scale) @ sw, in_shape, 3, blk.stride, 1)  # real x ±1: signed sums
        dxs = shortcut_backward(dz.reshape(n, ho, wo, blk.cout), blk.stride, blk.repeat)
        mask = tail_elementwise.unpack_bits(ste, blk.cin)
        dx = (dxb + dxs) * mask if blk.binary_input else dxb * mask + dxs
        return dw, (dx.astype(np.float32).reshape(-1, blk.cin), 0, tail_elementwise.OFF)

    def train_batch(self, latents: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One SGD step on the tail's conv latent weights and the head; returns the mean loss."""
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        x = self._check_latents(latents)
        return self._train_batch(x, self._check_labels(labels, len(x)), lr)

    def _train_batch(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """:meth:`train_batch` without input checks: float32 ``(N, *latent_shape)`` latents, integer labels
        in ``[0, num_classes)`` and ``lr > 0``, as the learner passes them after checking at its edge."""
        if len(x) == 0:
            return 0.0
        loss, grads, g_head = self._gradients(np.asarray(x, dtype=np.float32), y)
        lr32 = np.float32(lr)
        for j, (blk, g) in enumerate(zip(self._blocks, grads)):
            step = self._momentum_step(blk, "velocity", g)
            w = blk.w_values
            new = w - lr32 * step
            if self.qw == FLOAT_BITS:
                blk.weight = quantize(new, self.qw)
            else:  # stored at q_w: keep the range the codes had (docs/design.md §1.5)
                if self.weight_rounding == "nearest":  # the grid follows the values' min/max
                    blk.weight = requantize_update(new, w.min(), w.max(), self.qw)
                else:  # a fixed grid, the stored range; noise drawn in torch's (O, I, KH, KW) order
                    noise = rounding_noise(self.rounding_seed, self.updates, j,
                                           (blk.cout, blk.cin, 3, 3)).transpose(0, 2, 3, 1)
                    blk.weight = requantize_update(new, blk.weight.lo, blk.weight.hi, self.qw, noise)
            blk.refresh()
        self.updates += 1
        step = self._momentum_step(self, "_head_velocity", g_head)
        self._head = quantize(self._head.dequantize() - lr32 * step, self.qb)
        self._refresh_head()
        return loss

    def _momentum_step(self, owner: Any, attr: str, g: np.ndarray) -> np.ndarray:
        if self.momentum == 0.0:
            return g
        v = getattr(owner, attr)
        v = g.copy() if v is None else (np.float32(self.momentum) * v + g).astype(np.float32)
        setattr(owner, attr, v)
        return v

    # -- head and state ------------------------------------------------------------------------
    def get_head(self) -> np.ndarray:
        return self._head.dequantize()

    def set_head(self, w: np.ndarray) -> None:
        w = np.asarray(w)
        if w.shape != (self.num_classes, self.head_dim):
            raise ValueError(f"head: expected shape {(self.num_classes, self.head_dim)}, got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("head contains NaN or inf")
        self._head = quantize(w.astype(np.float32), self.qb)
        self._head_velocity = None
        self._refresh_head()

    def conv_weights(self) -> dict[str, np.ndarray]:
        """The latent conv weights as float32 (O, I, KH, KW) by state_dict name (de-quantized)."""
        return {f"blocks.{b.index}.conv.weight": b.w_values.transpose(0, 3, 1, 2).copy() for b in self._blocks}

    def conv_qtensors(self) -> dict[str, QTensor]:
        """The stored latent conv weights (codes in (O, KH, KW, I) order)."""
        return {f"blocks.{b.index}.conv.weight": b.weight for b in self._blocks}

    def tail_state(self) -> dict[str, np.ndarray]:
        """Conv latent weights as stored: ``.codes`` (O, I, KH, KW) + ``.range`` (min, max), or float32
        ``blocks.{i}.conv.weight`` at ``q_w = 32``; ``updates`` (the SGD step count, which positions the
        stochastic-rounding noise, so a resumed run continues the same stream)."""
        out: dict[str, np.ndarray] = {"updates": np.array([self.updates], dtype=np.int64)}
        for b in self._blocks:
            name = f"blocks.{b.index}.conv.weight"
            if self.qw == FLOAT_BITS:
                out[name] = b.w_values.transpose(0, 3, 1, 2).copy()
            else:
                out[name + ".codes"] = np.ascontiguousarray(b.weight.codes.transpose(0, 3, 1, 2))
                out[name + ".range"] = np.array([b.weight.lo, b.weight.hi], dtype=np.float32)
        return out

    def load_tail_state(self, state: Mapping[str, np.ndarray]) -> None:
        new: list[QTensor] = []
        for b in self._blocks:
            name = f"blocks.{b.index}.conv.weight"
            shape = (b.cout, b.cin, 3, 3)
            if name + ".codes" in state and self.qw != FLOAT_BITS:
                codes = np.asarray(state[name + ".codes"])
                rng = np.asarray(state.get(name + ".range", ()), dtype=np.float32)
                if codes.shape != shape or codes.dtype != b.weight.codes.dtype or rng.shape != (2,):
                    raise ValueError(f"tail state {name}: expected codes {shape} {b.weight.codes.dtype} and "
                                     f"range (2,), got {codes.shape} {codes.dtype} and {rng.shape}")
                new.append(QTensor(np.ascontiguousarray(codes.transpose(0, 2, 3, 1)), rng[0], rng[1], self.qw))
            elif name in state:
                w = self._param(state, name, shape)
                new.append(quantize(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), self.qw))
            else:
                raise ValueError(f"tail state: missing {name!r} (or its .codes/.range)")
        updates = np.asarray(state.get("updates", np.zeros(1, np.int64)))
        if updates.shape != (1,) or not np.issubdtype(updates.dtype, np.integer) or updates[0] < 0:
            raise ValueError(f"tail state updates: expected one non-negative integer, got {updates!r}")
        known = {f"blocks.{b.index}.conv.weight{s}" for b in self._blocks for s in ("", ".codes", ".range")}
        extra = set(state) - known - {"updates"}
        if extra:
            raise ValueError(f"tail state: unexpected keys {sorted(extra)[:5]}")
        self.updates = int(updates[0])
        for b, q in zip(self._blocks, new):
            b.weight, b.velocity = q, None
            b.refresh()

    def _snapshot(self) -> tuple[list[QTensor], QTensor]:
        return [b.weight for b in self._blocks], self._head

    def mark_deployed(self) -> None:
        """Make the current tail and head the state :meth:`reset` restores."""
        self._deployed = self._snapshot()

    def reset(self) -> None:
        """Restore the tail and head to their deployment state (momentum buffers cleared)."""
        weights, head = self._deployed
        for b, q in zip(self._blocks, weights):
            b.weight, b.velocity = q, None
            b.refresh()
        self._head, self._head_velocity = head, None
        self._refresh_head()

    def memory_breakdown(self) -> dict[str, int]:
        """Real bytes: ``tail_weights`` (latent codes + ranges), ``tail_packed`` (packed sign(W) for the
        kernel), ``tail_fused`` (frozen per-channel params), ``tail_momentum``, ``head``."""
        vel = sum(int(b.velocity.nbytes) for b in self._blocks if b.velocity is not None)
        return {
            "tail_weights": sum(b.weight.nbytes for b in self._blocks),
            "tail_packed": sum(int(b.w_packed.nbytes) for b in self._blocks),
            "tail_fused": sum(b.fused_nbytes() for b in self._blocks),
            "tail_momentum": vel,
            "head": self._head.nbytes + (0 if self._head_velocity is None else int(self._head_velocity.nbytes)),
        }

    def memory_bytes(self) -> dict[str, int]:
        """``{"tail": ..., "head": ...}`` real storage bytes."""
        m = self.memory_breakdown()
        return {"tail": m["tail_weights"] + m["tail_packed"] + m["tail_fused"] + m["tail_momentum"],
                "head": m["head"]}

    @property
    def tail_blocks(self) -> int:
        return len(self._blocks)
