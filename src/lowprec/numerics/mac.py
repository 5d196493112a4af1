"""Matrix products whose scalar products and partial sums are rounded, as in MAC hardware.

Hardware does not accumulate in exact arithmetic: FP8 tensor cores sum blocks of products
with limited precision before promoting, low-precision MAC units keep the partial sum in a
narrow adder. :func:`mac_matmul` emulates both. For ``C = A B`` with reduction length ``K``
and block size ``b``, each output ``C[i, j]`` is

.. math::

    p_k = Q_{prod}(A_{ik} B_{kj}), \\qquad
    s_0 = 0, \\qquad
    s_{c+1} = Q_{acc}\\Big(s_c + \\sum_{k = cb}^{\\min((c+1)b, K) - 1} p_k\\Big),

blocks taken in increasing ``k`` (the last one shorter when ``b`` does not divide ``K``),
and ``C[i, j] = s_{\\lceil K / b \\rceil}``. ``block=1`` is a sequential narrow adder,
``block >= K`` a single rounding of the whole sum. ``Q_prod = None`` leaves products exact;
``Q_acc = None`` means no accumulator rounding: with ``product=None`` too this is the plain
``a @ b`` of the input dtype, otherwise the rounded products are summed in float64 and the
sum is rounded (to nearest) into the result dtype.

A rounding (``product``, ``accumulate``) is a callable ``Tensor -> Tensor`` (a
:class:`RoundTo`, ``functools.partial(quantize, fmt=..., rounding=...)``, anything else), or a
:class:`~lowprec.formats.Format` / preset name, which means :class:`RoundTo` with
round-to-nearest-even. It receives float64 tensors holding the exact values to round and
must return float64; stochastic rounding draws from the generator the callable carries.

Exactness (float32, bfloat16 or float16 inputs)
------------------------------------------------
* Products are formed in float64, where they are exact (24 + 24 = 48 <= 53 significant
  bits; every float32 product lies in float64's normal range), and ``Q_prod`` rounds that
  exact value once.
* ``s_c + sum(block)`` is formed in float64 in an unspecified order (a BLAS product). It is
  exact whenever ``s_c`` and the block's terms are integer multiples of a common ``2**q`` with
  ``|s_c| + sum |p_k| < 2**(q + 53)``: then every partial sum, in any order, is representable.
  Example: products rounded to fp16 (multiples of ``2**-24``, at most 65504) into an fp16
  accumulator, any block below 8191. ``Q_acc`` then rounds that exact value once (never via
  float32), so the result is bit-exact for every rounding mode.
* Outside that condition the float64 value is within about ``b 2**-53 (|s_c| + sum |p_k|)``
  of the exact one and ``Q_acc`` rounds it: nearest modes can then differ only when the exact
  value lies that close to a midpoint, directed modes when it lies that close to a value of
  the accumulator format (e.g. ``up`` of ``1 + 1e-20``).
* Float64 inputs are rounded to float64 products first.
* The result has the inputs' promoted dtype (exact when the accumulator's values fit in it);
  a zero result may carry either sign.

Gradients are straight-through: those of the exact ``a @ b``.

Speed
-----
On the CPU, for float32/float16/bfloat16 operands and :class:`RoundTo` roundings onto
unscaled formats (products rounded to nearest-even, if at all), the recurrence runs as one
fused C++ kernel (:mod:`.mac_native`): block sums and running sums stay in registers, so a
block costs its FMAs and one rounding per output element, at 30-40 GMAC/s on the 2-core
development machine for blocks of 32 (float64 BLAS alone: 11-16); convolution operands
are read in place (:func:`windows`). Everything else (CUDA, float64 operands, other
callables, scaled formats) takes the torch path, same values: the block sums of many blocks
at once by one batched float64 product (``product=None``) or by rounding the products of
one in-block position for all blocks at once, then the accumulator through them in order,
``Q_acc`` of 8 consecutive blocks fused into one compiled pass over the output tile
(:class:`_FusedChain`: one graph per rounding rule and chunk length 8 or 1, whatever the
shapes, compiled by :class:`.backend.Compiled` once a variant's eager calls have taken long
enough; ``LOWPREC_BACKEND=eager`` runs it op by op, same bits; calls on small tiles run on
one thread). ``LOWPREC_NATIVE=off`` forces the torch path (``benchmarks/mac.py``,
``benchmarks/train_step.py``, docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from . import kernel, mac_native
from .backend import Compiled
from .formats import Format
from .quantize import RoundTo
from .rounding import check_mode, check_overflow, check_rand_bits
from .scaling import ScaledFormat

__all__ = ["Rounder", "RoundTo", "mac_bmm", "mac_conv2d", "mac_conv2d_weight_grad", "mac_matmul"]

Rounder = Callable[[torch.Tensor], torch.Tensor]
RoundingSpec = Rounder | Format | str | None

#: About the most float64 elements the block sums of one group (and the copies of operand
#: blocks) may hold; small enough to stay in cache between their computation and their use.
_TERMS_BUDGET = 1 << 20


def _rounder(spec: RoundingSpec, name: str) -> Rounder | None:
    """A rounding spec as a callable: formats and names round to nearest-even."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, Format | str):
        return RoundTo(spec)
    raise TypeError(f"{name} must be a callable, a Format, a preset name or None; got {spec!r}")


def _roundings(product: RoundingSpec, accumulate: RoundingSpec) -> tuple[
        Rounder | None, Rounder | None]:
    return _rounder(product, "product"), _rounder(accumulate, "accumulate")


def _check_block(block: int) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    return block


def _round(rounder: Rounder, x: torch.Tensor) -> torch.Tensor:
    """``rounder(x)``, in place when ``rounder`` is a :class:`RoundTo` (x is a scratch tensor)."""
    return rounder(x, out=x) if isinstance(rounder, RoundTo) else rounder(x)


#: element-steps below which a chain call runs on one thread (see :func:`_threads_for`)
_GRAIN = mac_native.GRAIN
#: elements before a block's sums in the buffers handed to the compiled chain: storage
#: offsets are then never 0 or 1, which dynamo would compile graphs of their own for
_LEAD = 2


@contextlib.contextmanager
def _threads_for(work: int, device: torch.device) -> Iterator[None]:
    """One CPU thread for a call on fewer than :data:`_GRAIN` element-steps.

    Inductor's C++ kernels for dynamic shapes open an OpenMP parallel region whatever the
    size (eager torch ops stay on one thread below a grain of 32768 elements), and waking
    the second thread costs more than it saves on a small tile: tens of microseconds on a
    quiet machine, milliseconds on a loaded one, where the weight gradients' thousands of
    small sequential calls made it the main cost.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or work >= _GRAIN:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _FusedChain:
    """``acc <- Q(acc + P[c])`` for the blocks ``c`` in order, ``_UNROLL`` blocks per kernel call.

    ``Q`` is a :class:`RoundTo` onto an unscaled format. The ``U = _UNROLL`` steps of a
    chunk are :func:`kernel.round_kernel` chained in one function, which ``torch.compile``
    fuses into one pass over ``acc`` that reads the ``U`` slices of ``P`` and keeps the
    partial sum in registers. The last ``r < U`` blocks run as one chunk padded with
    ``-0.0`` blocks when ``r >= U / 2`` (``x + (-0) = x`` for every ``x``, ``-0`` and NaN
    included, and ``Q`` leaves the values it returns unchanged: the padded steps change no
    bit), else one call per block. Every call hands the compiled function the same layout
    (flat, contiguous, storage offset ``>= 2`` for the blocks, 0 for ``acc``), so one graph
    per rounding rule and chunk length (``U`` or 1) serves every shape: dynamo has nothing
    else to specialise on. Eagerly (``LOWPREC_BACKEND=eager``, or when compiling fails)
    the same function runs op by op: the same bits.
    """

    def __init__(self, rounder: RoundTo, device: torch.device) -> None:
        fmt = rounder.format
        mode = check_mode(rounder.rounding)
        bits = check_rand_bits(rounder.rand_bits, mode)
        self.overflow = check_overflow(rounder.overflow, fmt.has_inf, fmt.has_nan, fmt.name)
        self.mode, self.generator = mode, rounder.generator
        _, self.grid, self.shape, _ = kernel.constants(fmt, torch.float64, bits, device)

    def __call__(self, acc: torch.Tensor, parts: torch.Tensor) -> None:
        """``acc`` (contiguous float64 ``[m, n]``) updated in place by ``parts`` (contiguous
        ``[blocks, m, n]``), block after block."""
        used, size = parts.shape[0], acc.numel()
        flat_acc = acc.view(-1).detach()
        blocks = parts.view(used, size).detach()
        c0 = 0
        while c0 < used:
            left = used - c0
            if left >= _UNROLL:
                chunk = blocks[c0:c0 + _UNROLL]
            elif 2 * left >= _UNROLL:
                pad = acc.new_empty(_LEAD + _UNROLL * size)[_LEAD:].view(_UNROLL, size)
                pad[:left].copy_(blocks[c0:])
                pad[left:].fill_(-0.0)
                chunk = pad
            else:
                chunk = blocks[c0:c0 + 1]
            self._run(flat_acc, chunk.detach())
            c0 += chunk.shape[0]

    def _run(self, acc: torch.Tensor, chunk: torch.Tensor) -> None:
        """One compiled (or eager) call: ``acc`` (flat) through the ``u`` blocks of ``chunk``."""
        u, size = chunk.shape
        index = None
        seeds = kernel.zeros((u, 2), acc.device)
        if self.mode == "stochastic":
            seeds = torch.randint(-(2**31), 2**31, (u, 2), generator=self.generator,
                                  dtype=torch.int32).to(acc.device)
            index = torch.arange(size, dtype=torch.int32, device=acc.device)
        args = (acc, chunk, self.grid, seeds, index, self.mode, self.overflow, self.shape)
        with _threads_for(u * size, acc.device):
            # what dynamo specialises: sizes and storage offsets of 0 and 1, thread count
            variant = (u, self.mode, self.overflow, self.shape, acc.device.type, min(size, 2),
                       min(acc.storage_offset(), 2), min(chunk.storage_offset(), 2),
                       torch.get_num_threads())
            _CHAIN(variant, *args)


@torch.no_grad()
def _chain(acc: torch.Tensor, parts: torch.Tensor, grid: torch.Tensor, seeds: torch.Tensor,
           index: torch.Tensor | None, mode: str, overflow: str, shape: kernel.Shape) -> None:
    """``acc <- round(acc + parts[c])`` for every ``c``, in order (:class:`_FusedChain`)."""
    x = acc
    for c in range(parts.shape[0]):
        x = kernel.round_kernel(x + parts[c], grid, seeds[c], mode, overflow, shape, index)
    acc.copy_(x)


#: the chain, compiled once a variant's eager calls have taken long enough (:mod:`.backend`)
_CHAIN = Compiled(_chain, "mac_matmul accumulation")
#: blocks per fused chunk (:class:`_FusedChain`)
_UNROLL = 8


def _accumulator(rounder: Rounder, device: torch.device) -> Callable[
        [torch.Tensor, torch.Tensor], None]:
    """``f(acc, parts)``: ``acc <- Q(acc + parts[c])`` in order, in place (fused and, once it
    pays, compiled for unscaled :class:`RoundTo` roundings)."""
    if isinstance(rounder, RoundTo):
        fmt = rounder.format
        if not isinstance(fmt, ScaledFormat):
            return _FusedChain(rounder, device)

    def generic(acc: torch.Tensor, parts: torch.Tensor) -> None:
        for part in parts:
            acc.copy_(_round(rounder, acc + part))
    return generic


def _block_sums(out: torch.Tensor, ab: torch.Tensor, bb: torch.Tensor,
                product: Rounder | None) -> None:
    """``out[c] = sum_j Q_prod(ab[c, :, j] bb[c, j, :])`` for blocks ``c``, in float64 (BLAS
    when ``product`` is None)."""
    if product is None:
        torch.bmm(ab, bb, out=out)
        return
    out.zero_()
    for j in range(ab.shape[2]):
        out.add_(_round(product, ab[:, :, j, None] * bb[:, j, None, :]))


def _mac(a: torch.Tensor, b: torch.Tensor, product: Rounder | None,
         accumulate: Rounder | None, block: int) -> torch.Tensor:
    """The recurrence of the module docstring on ``[B, M, K] @ [B, K, N]``, in float64.

    Rows of ``M`` are independent: they are taken ``mc`` at a time and, for those rows, the
    ``nb = ceil(K / block)`` blocks ``g`` at a time (both chosen so that the float64 copies
    of operand blocks and the ``[g, mc, N]`` block sums hold about ``_TERMS_BUDGET``
    elements; ``g`` a multiple of ``_UNROLL`` unless it is ``nb``). The block sums of a group
    are formed at once (:func:`_block_sums`), then the accumulator runs through them
    (:func:`_accumulator`). The ragged last block is padded with exact zeros. The result and
    the block sums live ``_LEAD`` elements into their buffers (:class:`_FusedChain`).
    """
    batch, m, k = a.shape
    n = b.shape[2]
    out = a.new_zeros(_LEAD + batch * m * n, dtype=torch.float64)[_LEAD:].view(batch, m, n)
    if k == 0:
        return out
    step = block if accumulate is not None else min(k, 32)
    nb = -(-k // step)
    width = max(n, step)
    mc = min(m, max(1, _TERMS_BUDGET // (min(nb, _UNROLL) * width)))
    g = min(nb, max(_UNROLL, _TERMS_BUDGET // (mc * width)))
    g = g if g == nb else g - g % _UNROLL
    run = None if accumulate is None else _accumulator(accumulate, a.device)
    # a's blocks in float64: [blocks, rows, step] when a's rows are contiguous, else k-major
    # [k, rows] (a transposed view, as weight gradients get): BLAS reads both without copies
    rows_major = a.stride(2) == 1
    ab = a.new_zeros(g * mc * step if rows_major else (g * step, mc), dtype=torch.float64)
    bb = a.new_zeros((g * step, n), dtype=torch.float64)
    parts = a.new_empty(_LEAD + g * mc * n, dtype=torch.float64)[_LEAD:]
    for i in range(batch):
        for r0 in range(0, m, mc):
            rows = min(mc, m - r0)
            acc = out[i, r0:r0 + rows]
            for k0 in range(0, k, g * step):
                t = min(g * step, k - k0)
                used = -(-t // step)
                src = a[i, r0:r0 + rows, k0:k0 + t]
                dirty = k0 > 0  # the ragged block's padding, if an earlier group wrote there
                if rows_major:  # blocks [used, rows, step], contiguous (BLAS's fast case)
                    blocks = ab[:used * rows * step].view(used, rows, step)
                    full, r = divmod(t, step)
                    blocks[:full].copy_(src[:, :full * step].unflatten(1, (full, step))
                                        .transpose(0, 1))
                    if r:
                        blocks[full, :, :r].copy_(src[:, full * step:])
                        blocks[full, :, r:].zero_()
                else:
                    if dirty:
                        ab[t:used * step, :rows].zero_()
                    ab[:t, :rows].copy_(src.T)
                    blocks = ab[:used * step, :rows].view(used, step, rows).transpose(1, 2)
                if dirty:
                    bb[t:used * step].zero_()
                bb[:t].copy_(b[i, k0:k0 + t])
                p = parts[:used * rows * n].view(used, rows, n)
                _block_sums(p, blocks, bb[:used * step].view(used, step, n), product)
                if run is None:
                    acc += p.sum(0)
                else:
                    run(acc, p)
    return out


Split = tuple[int, int, int]


def _as3d(t: torch.Tensor, split: Split, reduction_last: bool) -> torch.Tensor:
    """``t``'s dimensions, grouped ``split`` = (batch, outer, inner) counts, as 3-D; a left
    operand (``reduction_last``) of more than 3 dimensions is copied k-major, the layout
    :func:`_mac` reads without another copy."""
    if t.dim() == 3:
        return t
    nb, nr, nc = split
    sizes = [math.prod(t.shape[:nb]), math.prod(t.shape[nb:nb + nr]),
             math.prod(t.shape[nb + nr:])]
    if not reduction_last:
        return t.reshape(sizes)
    order = [*range(nb), *range(nb + nr, t.dim()), *range(nb, nb + nr)]
    return t.permute(order).reshape(sizes[0], sizes[2], sizes[1]).transpose(1, 2)


class _MacProduct(torch.autograd.Function):
    """:func:`_mac` forward (natively where :mod:`.mac_native` runs it), straight-through
    (exact-product) backward. ``a`` is ``[B, M, K]`` and ``b`` ``[B, K, N]`` after grouping
    their dimensions by ``a_split`` / ``b_split`` (views such as im2col's windows, never
    copied on the native path)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, a_split: Split, b_split: Split,
                product: Rounder | None, accumulate: Rounder | None,
                block: int) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.splits = a_split, b_split
        dtype = torch.promote_types(a.dtype, b.dtype)
        out = None
        if isinstance(accumulate, RoundTo) and (product is None or isinstance(product, RoundTo)):
            out = mac_native.run(a, a_split, b, b_split, product, accumulate, block)
        if out is None:
            out = _mac(_as3d(a, a_split, True), _as3d(b, b_split, False), product, accumulate,
                       block)
        return out.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        a3, b3 = _as3d(a, ctx.splits[0], False), _as3d(b, ctx.splits[1], False)
        ga = (grad @ b3.mT).to(a.dtype).reshape(a.shape)
        gb = (a3.mT @ grad).to(b.dtype).reshape(b.shape)
        return ga, gb, None, None, None, None, None


def mac_bmm(a: torch.Tensor, b: torch.Tensor, *, product: RoundingSpec = None,
            accumulate: RoundingSpec = None, block: int = 1) -> torch.Tensor:
    """``a @ b`` for ``[..., M, K] @ [..., K, N]`` (batch dimensions broadcast as in
    :func:`torch.matmul`) with rounded products and blocked, rounded accumulation; see the
    module docstring for the recurrence and its exactness."""
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"cannot multiply shapes {tuple(a.shape)} and {tuple(b.shape)}")
    (prod, acc), blk = _roundings(product, accumulate), _check_block(block)
    if prod is None and acc is None:
        return torch.matmul(a, b)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(math.prod(batch), *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(math.prod(batch), *b.shape[-2:])
    out = _MacProduct.apply(a3, b3, (1, 1, 1), (1, 1, 1), prod, acc, blk)
    return out.reshape(*batch, a.shape[-2], b.shape[-1])


def mac_matmul(a: torch.Tensor, b: torch.Tensor, *, product: RoundingSpec = None,
               accumulate: RoundingSpec = None, block: int = 1) -> torch.Tensor:
    """``[M, K] @ [K, N]``: ``C[i, j] = s_K`` with ``s <- Q_acc(s + sum_block Q_prod(a b))``
    over blocks of ``block`` consecutive ``k`` (module docstring)."""
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"mac_matmul takes 2-D tensors, got {a.dim()}-D and {b.dim()}-D; "
                         "use mac_bmm for batches")
    return mac_bmm(a, b, product=product, accumulate=accumulate, block=block)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def windows(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int],
            groups: int) -> torch.Tensor:
    """im2col without a copy: the view ``[groups, N, H_out, W_out, C_in / groups, kh, kw]``
    of ``x_pad`` (``x`` zero-padded: the only copy) whose element ``(g, n, y, x, c, r, s)``
    is ``x_pad[n, g C_in / groups + c, y sh + r dh, x sw + s dw]``."""
    n, c_in, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    s_n, s_c, s_h, s_w = xp.stride()
    c_g = c_in // groups
    return xp.as_strided((groups, n, h_out, w_out, c_g, kh, kw),
                         (c_g * s_c, s_n, sh * s_h, sw * s_w, s_c, dh * s_h, dw * s_w),
                         xp.storage_offset())


def mac_conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
               stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
               dilation: int | tuple[int, int] = 1, groups: int = 1, *,
               product: RoundingSpec = None, accumulate: RoundingSpec = None,
               block: int = 1) -> torch.Tensor:
    """``F.conv2d`` as products of im2col's columns (:func:`windows`) and the weights.

    Output ``[n, o, y, x]`` reduces over the ``C_in/groups * kh * kw`` terms of its group in
    ``F.unfold``'s order: input channel slowest, then kernel row, kernel column fastest,
    i.e. ``k = (c * kh + r) * kw + s``. ``bias`` is added after the reduction, in the output
    dtype. With ``product=accumulate=None`` this is ``F.conv2d`` up to float32 summation order.
    """
    n, c_in = x.shape[:2]
    c_out, c_g, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if c_in != c_g * groups or c_out % groups:
        raise ValueError(f"weight {tuple(w.shape)} does not fit input {tuple(x.shape)} "
                         f"with groups={groups}")
    (prod, acc), blk = _roundings(product, accumulate), _check_block(block)
    if prod is None and acc is None:
        return F.conv2d(x, w, bias, (sh, sw), (ph, pw), (dh, dw), groups)
    cols = windows(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups)
    h_out, w_out = cols.shape[2:4]
    wm = w.reshape(groups, c_out // groups, c_g * kh * kw).transpose(1, 2)
    out = _MacProduct.apply(cols, wm, (1, 3, 3), (1, 1, 1), prod, acc, blk)
    out = out.view(groups, n, h_out * w_out, c_out // groups).permute(1, 0, 3, 2)
    out = out.reshape(n, c_out, h_out, w_out)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def mac_conv2d_weight_grad(x: torch.Tensor, g: torch.Tensor, kernel_size: tuple[int, int],
                           stride: int | tuple[int, int] = 1,
                           padding: int | tuple[int, int] = 0,
                           dilation: int | tuple[int, int] = 1, groups: int = 1, *,
                           product: RoundingSpec = None, accumulate: RoundingSpec = None,
                           block: int = 1) -> torch.Tensor:
    """The weight gradient ``[C_out, C_in / groups, kh, kw]`` of :func:`mac_conv2d` for the
    output gradient ``g``: per group ``g^T im2col(x)``, each weight's sum over the
    ``(n, y, x)`` positions in row-major order, through the same recurrence (no copy of
    ``g`` or of the windows of ``x`` where the native kernel runs)."""
    n, c_in = x.shape[:2]
    c_out, cells = g.shape[1], g.shape[2] * g.shape[3]
    (prod, acc), blk = _roundings(product, accumulate), _check_block(block)
    if prod is None and acc is None:
        return torch.nn.grad.conv2d_weight(x, (c_out, c_in // groups, *_pair(kernel_size)), g,
                                           stride, padding, dilation, groups)
    cols = windows(x, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation),
                   groups)
    gm = g.reshape(n, groups, c_out // groups, cells).permute(1, 2, 0, 3)
    out = _MacProduct.apply(gm, cols, (1, 1, 2), (1, 3, 3), prod, acc, blk)
    return out.reshape(c_out, c_in // groups, *_pair(kernel_size))
