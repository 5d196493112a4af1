"""Per-block and per-channel power-of-two scaling fused into one pass.

``y = 2**X * round(x * 2**-X)`` per slice (:mod:`.scaling` gives the rules) computed as
one kernel: the slice's amax, its exponent ``X``, the rounding
(:func:`.kernel.round_kernel`) and, if asked, the telemetry, so that a compiled kernel
reads ``x`` once and writes ``y`` once (the unfused steps cost about five passes, most of
them in small strided reductions). Rounding ``x / 2**X`` onto a format and multiplying
back is rounding ``x`` onto the format scaled by ``2**X`` (same codes, exponents moved):
where every slice's scaled grid holds in the container (:func:`_shiftable`), ``x`` is
rounded onto it directly (:func:`_shifted_grid`), else scaled, rounded and unscaled in
the same pass (``_compute_dtype`` of :mod:`.scaling` says when float32 is exact for that).

Layout: a tensor with ``axis`` of length ``n`` is viewed, without a copy when contiguous,
as ``(outer, n, inner)`` (the dims before and after ``axis``). Blocks split ``n`` into
``(nb, size)`` (zero-padded when ``size`` does not divide ``n``: zeros change no amax)
and reduce over ``size``; channels are ``(1, n, 1, inner)`` after moving ``outer`` in and
reduce over everything but ``n``. Stochastic rounding indexes each element by its
position in the unfused layout (blocks: ``axis`` moved last and padded; channels: ``x``
itself), so its random bits, and so the results, are the unfused path's.

The exponent: with ``amax`` widened to float64 (exact), its exponent field ``E`` and
52-bit fraction field ``M``, ``floor(log2 amax) = E - 1023`` and, with ``Mmax`` the
fraction field of the format's ``max``, ``amax / max`` compares with ``2**(E - 1023 -
emax)`` as ``M`` with ``Mmax``: ``X = E - 1023 - emax`` (``"floor"``), ``+ (M > Mmax)``
(``"ceil"``), and for ``"even"`` the midpoint ``3/2`` of a binade is compared on the
53-bit significands (``2 (2**52 + M)`` or ``4 (2**52 + M)`` against ``3 (2**52 + Mmax)``,
a tie to the even ``X``). Then ``X + margin`` clamped to ``[-127, 127]``; an all-zero
slice gets ``-127``. These are integer operations, exact, and the same bits as
:func:`.scaling._pow2_exponent`'s ``frexp`` formulation. The fused kernel recomputes
them for every element where slices run across rows; in 64-bit lanes that cost as much
as the rounding. So a float32 ``amax`` of a format with ``emax > margin`` takes the same
steps on 32-bit lanes: its exponent field ``E'`` and 23-bit fraction ``M'`` are the
float64 ones rebiased (``E' - 127 = E - 1023``, ``M = M' 2**29``; ``Mmax' = Mmax / 2**29``,
a float32 format's ``max`` having no more fraction bits), so every comparison is the
float64 one scaled by ``2**29``. A subnormal ``amax`` (``E' = 0``) then gets ``X <= -127 -
emax + 1 + margin <= -127`` whatever the rule, clamped to ``-127`` as its exact exponent is.
"""

from __future__ import annotations

import functools
import math
import struct

import torch
import torch.nn.functional as F

from . import block_native, kernel
from .backend import Compiled
from .cast import _draw_seed, overlaps
from .formats import Format
from .rounding import check_mode, check_overflow, check_rand_bits

__all__ = ["slice_round"]

_FRACTION = (1 << 52) - 1
_INF_BITS = {torch.float32: 0x7F800000, torch.float64: 0x7FF << 52}


@functools.lru_cache(maxsize=256)
def _consts(fmt: Format, margin: int, strides: tuple[int, ...],
            device: torch.device) -> torch.Tensor:
    """``(emax, Mmax, margin)`` (what :func:`pow2_exponent` reads, module docstring) and
    ``strides`` (the stochastic index's), as an int64 tensor on ``device``."""
    if not fmt.max > 0:
        raise ValueError(f"{fmt.name} has no positive values to scale onto")
    emax = math.frexp(fmt.max)[1] - 1
    mmax = struct.unpack("<q", struct.pack("<d", fmt.max))[0] & _FRACTION
    return torch.tensor((emax, mmax, margin, *strides), dtype=torch.int64, device=device)


def pow2_exponent(amax: torch.Tensor, consts: torch.Tensor, scale_rounding: str,
                  lanes32: bool = False) -> torch.Tensor:
    """The clamped scale exponent ``X`` (int64; int32 with ``lanes32``) of each nonnegative
    ``amax``; ``consts``: :func:`_consts`. ``lanes32``: a float32 ``amax`` of a format with
    ``emax > margin`` on 32-bit lanes (module docstring)."""
    if lanes32:
        bits, c = amax.view(torch.int32), consts.to(torch.int32)
        p, bias, mmax = 23, 127, (consts[1] >> 29).to(torch.int32)
    else:
        bits, c = amax.to(torch.float64).view(torch.int64), consts
        p, bias, mmax = 52, 1023, consts[1]
    x = (bits >> p) - bias - c[0]
    m = bits & ((1 << p) - 1)
    if scale_rounding == "ceil":
        x = x + (m > mmax).to(x.dtype)
    elif scale_rounding == "even":
        top = m >= mmax
        mi, mid = m + (1 << p), 3 * (mmax + (1 << p))
        mid2 = torch.where(top, 2 * mi, 4 * mi)
        lo = torch.where(top, x, x - 1)
        x = lo + ((mid2 > mid) | (mid2 == mid) & (lo & 1 == 1)).to(x.dtype)
    return torch.where(bits > 0, x + c[2], -127).clamp(-127, 127)


def exp2_exact(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``2**x`` for integer-valued ``x`` in [-127, 127], exactly, in ``dtype``: from int32
    ``x`` into float32 a float32 bit pattern (``2**-127``, float32's one subnormal here, is
    ``1 << 22``), from any other ``x`` (int64, or a float holding integers) a float64 one."""
    if x.dtype == torch.int32 and dtype == torch.float32:
        return torch.where(x > -127, (x + 127) << 23, 1 << 22).view(torch.float32)
    return ((x.to(torch.int64) + 1023) << 52).view(torch.float64).to(dtype)


def _shifted_grid(grid: torch.Tensor, exps: torch.Tensor, compute: torch.dtype
                  ) -> list[torch.Tensor]:
    """:func:`.kernel.grid_constants` of the format scaled by ``2**X`` per slice (the
    constants :meth:`Format.scaled_by` would give): exponents move by ``X``, the parity
    offset by ``-X``, the bit patterns of the largest magnitudes and of the smallest step
    are those of the values times ``2**X`` (exact products: see :func:`_shiftable`)."""
    ity = kernel.int_dtype(compute)
    xi, p2 = exps.to(ity), exp2_exact(exps, compute)
    values = grid[3:9].view(compute)  # max, max_negative, (special, flushes,) 2**kmin

    def times(k: int) -> torch.Tensor:
        return (values[k] * p2).view(ity)

    return [grid[0], grid[1] + xi, grid[2] - xi, times(0), times(1), grid[5], grid[6] + xi,
            grid[7] + xi, times(5), grid[9]]


def fused_round(out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, seed: torch.Tensor,
                consts: torch.Tensor, mode: str, overflow: str, shape: kernel.Shape,
                compute: torch.dtype, scale_rounding: str, nan_block: bool,
                dims: tuple[int, ...], stats: bool, shifted: bool, size: int,
                lanes32: bool = False) -> tuple[torch.Tensor | None, ...]:
    """``out[:] = 2**X * round(x * 2**-X)`` with one ``X`` per slice, the slices being
    ``x``'s (4-d) extent over ``dims``; returns the scales (float64, keepdim; NaN for a
    NaN slice) and the :func:`.kernel.telemetry` when ``stats`` (else ``(None, None)``).
    ``size``: ``x``'s dim 2, made a constant of the compiled graph (a block's loop is then
    unrolled: 1.3x faster on blocks of 32 along rows).

    ``consts``: :func:`_consts`, the exponent's constants and the stochastic index's
    strides of the four dims. ``nan_block``: a slice holding a non-finite element becomes
    NaN, else the amax is that of the finite elements. ``shifted``: round ``x`` onto each
    slice's shifted grid (:func:`_shifted_grid`; no scaling passes, ``shape`` must allow
    subnormal inputs) instead of scaling, rounding and unscaling: the same result.
    ``lanes32``: the exponents on 32-bit lanes (:func:`pow2_exponent`).
    """
    x = x.view(x.shape[0], x.shape[1], size, x.shape[3])
    out = out.view(x.shape)
    xc = x.to(compute)
    ity = kernel.int_dtype(compute)
    finite = (xc.view(ity) & torch.iinfo(ity).max) < _INF_BITS[compute]
    amax = torch.where(finite, xc.abs(), 0).amax(dim=dims, keepdim=True)
    exps = pow2_exponent(amax, consts, scale_rounding, lanes32)
    bad = (~finite).any(dim=dims, keepdim=True) if nan_block else None
    index = None
    if mode == "stochastic":
        ix = torch.int64 if shape.wide_index else torch.int32
        index = sum(torch.arange(n, dtype=ix, device=x.device).view(
            [-1 if d == k else 1 for d in range(4)]) * consts[3 + k].to(ix)
            for k, n in enumerate(x.shape))
    sc = exp2_exact(exps, compute)
    if shifted:
        g = _shifted_grid(grid, exps, compute)
        y = kernel.round_kernel(xc, g, seed, mode, overflow, shape, index)
        if bad is not None:
            y, sc = torch.where(bad, math.nan, y), torch.where(bad, math.nan, sc)
    else:
        inv = exp2_exact(-exps, compute)
        if bad is not None:
            inv, sc = torch.where(bad, math.nan, inv), torch.where(bad, math.nan, sc)
        v = xc * inv
        y = kernel.round_kernel(v, grid, seed, mode, overflow, shape, index) * sc
    y = y.to(out.dtype)
    measured = scales = None
    if stats:
        if shifted:  # a NaN slice counts no overflow
            if bad is not None:
                top = torch.iinfo(ity).max
                g[3], g[4] = torch.where(bad, top, g[3]), torch.where(bad, top, g[4])
            measured = kernel.telemetry(xc, y.to(compute), g, shape)
        else:
            measured = kernel.telemetry(xc, y.to(compute), grid, shape, scaled=v)
        scales = sc.to(torch.float64)
    out.copy_(y)
    return scales, measured


def _shiftable(fmt: Format, compute: torch.dtype, scale_rounding: str, margin: int) -> bool:
    """Whether every slice's shifted grid holds in ``compute`` (float32: ``X <= 127 - emax``,
    true for ``"floor"`` with ``margin <= 0``, and spacings ``2**(qmin + X) >= 2**-149``;
    float64 holds every ``X`` in [-127, 127] for formats within float32's range)."""
    if not fmt.signed:
        return False
    if compute == torch.float64:
        return fmt.float32_exact
    return scale_rounding == "floor" and margin <= 0 and fmt.grid_qmin >= -22


_fused = Compiled(fused_round, "scaled rounding kernel")


def _native(x3: torch.Tensor, out: torch.Tensor | None, dtype: torch.dtype, fmt: Format,
            rand_bits: int, shape: kernel.Shape, rounding: str, overflow: str,
            nan_block: bool, margin: int, size: int, seed: torch.Tensor) -> torch.Tensor | None:
    """Blocks of the contiguous ``(outer, n, inner)`` ``x3`` rounded by
    :mod:`.block_native` (into ``out`` when it is contiguous and is ``x3`` or apart from
    it), or ``None`` where that kernel declines."""
    direct = (out is not None and out.is_contiguous() and out.dtype == dtype
              and (out.data_ptr() == x3.data_ptr() or not overlaps(out, x3)))
    y = out if direct else torch.empty(x3.shape, dtype=dtype, device=x3.device)
    assert y is not None
    if not block_native.run(y.view(x3.shape), x3, fmt, rand_bits, shape, rounding, overflow,
                            nan_block, margin, size, seed):
        return None
    if out is not None and not direct:
        return out.copy_(y.view(out.shape))
    return y


def slice_round(x: torch.Tensor, fmt: Format, rounding: str, granularity: str, axis: int,
                block: int, scale_rounding: str, margin: int, nan_block: bool,
                compute: torch.dtype, dtype: torch.dtype, *,
                generator: torch.Generator | None = None, rand_bits: int | None = None,
                overflow: str = "saturate", out: torch.Tensor | None = None,
                stats: bool = False) -> tuple[torch.Tensor, torch.Tensor | None,
                                              torch.Tensor | None]:
    """``x`` (non-empty) rounded with power-of-two scales per block or channel along
    ``axis``, computed in ``compute``, the result in ``dtype`` (into ``out`` if given,
    which may be ``x``); returns ``(y, scales, telemetry)``, the scales float64 in their
    reported shape (:class:`.scaling.Scaling`) and both ``None`` unless ``stats``."""
    check_mode(rounding)
    bits = check_rand_bits(rand_bits, rounding)
    ovf = check_overflow(overflow, fmt.has_inf, fmt.has_nan, fmt.name)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for a {x.ndim}-d tensor")
    axis %= x.ndim
    n = x.shape[axis]
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    x3 = x.detach().reshape(outer, n, inner).contiguous()
    tracing = torch.compiler.is_compiling()  # dynamo traces through caches (and warns)
    constants, consts = ((kernel.constants.__wrapped__, _consts.__wrapped__) if tracing
                         else (kernel.constants, _consts))
    compute_, grid, narrow, wide = constants(fmt, compute, bits, x.device)
    assert compute_ == compute, (compute_, compute)
    seed = (_draw_seed(generator, x.device) if rounding == "stochastic"
            else kernel.zeros((2,), x.device))
    shifted = _shiftable(fmt, compute, scale_rounding, margin)
    if (granularity != "channel" and shifted and not stats and compute == torch.float32
            and not tracing):  # (a graph holds no foreign call)
        y = _native(x3, out, dtype, fmt, bits, narrow, rounding, ovf, nan_block, margin,
                    min(block, n), seed)
        if y is not None:
            return (y if out is not None else y.view(x.shape)), None, None
    if granularity == "channel":
        x4, dims = x3.view(outer, n, 1, inner), (0, 2, 3)
        strides, nb, pad, size = (n * inner, inner, 0, 1), n, 0, 1
    else:
        size = max(1, min(block, n))  # a block longer than the axis is padded no further
        nb = -(-n // size)
        pad = nb * size - n
        if pad:
            x3 = F.pad(x3, (0, 0, 0, pad))
        x4, dims = x3.view(outer, nb, size, inner), (2,)
        strides = (inner * nb * size, size, 1, nb * size)  # position with axis moved last
    shape = wide if x4.numel() > 2**31 else narrow
    # into out directly unless it is (or overlaps) x: in place, the compiled kernel fails
    # on some shapes (inductor's outer-loop fusion: KeyError), so a fresh buffer is copied
    direct = (out is not None and not pad and out.is_contiguous() and out.dtype == dtype
              and not overlaps(out, x4))
    target = out.view(x4.shape) if direct else torch.empty(x4.shape, dtype=dtype,
                                                           device=x.device)
    if shifted:
        shape = shape._replace(subnormal_inputs=True)
    lanes32 = compute == torch.float32 and math.frexp(fmt.max)[1] - 1 > margin
    variant = (rounding, ovf, shape, compute, scale_rounding, nan_block, dims, stats,
               shifted, size, lanes32, x.dtype, dtype, x.device.type,
               *(s <= 1 for s in x4.shape))
    # detached aliases are no autograd views: dynamo guards on no base tensor's sizes
    # (sizes that happen to be equal, nb == size, share no symbol: .graphs traces without
    # duck sizing)
    with torch.no_grad():
        scales, measured = _fused(variant, target.detach(), x4.detach(), grid,
                                  seed, consts(fmt, margin, strides, x.device),
                                  rounding, ovf, shape, compute, scale_rounding, nan_block,
                                  dims, stats, shifted, size, lanes32)
    if direct:
        y = out
    else:
        y = target.view(outer, -1, inner)[:, :n].reshape(x.shape) if pad else target.view(
            x.shape)
        if out is not None:
            y = out.copy_(y)
    if measured is not None and pad:  # the padding zeros (NaN in a NaN block) are not x's
        measured[0] -= outer * pad * inner
        measured[4] -= pad * scales[:, -1].isnan().sum()  # type: ignore[index]
    if scales is not None:
        scales = (scales.reshape(-1) if granularity == "channel"
                  else scales.reshape(*x.shape[:axis], nb, *x.shape[axis + 1:]))
    return y, scales, measured
