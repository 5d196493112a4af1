"""The rounding kernel: integer arithmetic on the bit pattern of a float.

For a container float (float32 or float64, ``P`` stored mantissa bits) with
magnitude ``a = S * 2**(e - P)`` (``S`` the significand with its hidden bit,
``e`` the exponent), a format with ``m`` mantissa bits and smallest spacing
``2**qmin`` has spacing ``2**k`` with ``k = max(e - m, qmin)`` around ``a``.
Rounding drops ``d = k - (e - P)`` low bits of ``S``:

    f = S >> d            (lower neighbour, in units of 2**k)
    rem = S - (f << d)    (exact remainder, in units of 2**(e - P))

and every rounding mode is a decision ``f`` or ``f + 1`` made with integer
comparisons of ``rem`` against ``2**(d-1)``: no division, logarithm or
floating-point rounding is involved, so the result is exact whatever the
container. The result ``(f + up) * 2**k`` is rebuilt exactly as a float (the
format's values are representable in the container by construction).

Stochastic rounding draws its random bits from a counter-based hash of
``(element index, seed)`` inside the same pass, so one fused kernel reads the
input once and writes the output once; the seed is drawn from a
``torch.Generator`` per call. The hash is Chris Wellons' ``lowbias32`` (an
integer hash with low avalanche bias), once per element, on int32 lanes whose
products wrap modulo 2**32.

Speed: the kernel is compute-bound (about 30 integer vector operations per element
for round-to-nearest), so what a format cannot need is left out of its compiled
variant (:class:`Shape`: the flush of formats without subnormals, the sign-dependent
limit of two's complement, 64-bit element counting), and the format's constants are
precomputed once per format (:func:`grid_constants`).

``round_kernel`` is plain torch; :func:`run` calls it fused by inductor (C++/OpenMP on
CPU, called without dynamo and kept on disk by :mod:`.graphs`; Triton on CUDA, through
``torch.compile``) where that pays off, else eagerly (same bits): see :mod:`.backend`.
A new process loads the graphs instead of compiling them again (docs/torch-cache-bug.md:
the graph signature that once made torch's own caches unsafe).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch

from .backend import Compiled, backend

__all__ = ["backend", "constants", "grid_constants", "quantize_into", "round_flat", "round_kernel",
           "round_values", "run"]


def _srl(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int32 ``x`` by a constant ``n`` (torch's ``>>`` is arithmetic)."""
    return (x >> n) & ((1 << (32 - n)) - 1)


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32 integer hash on int32 bit patterns (products wrap mod 2**32)."""
    x = x ^ _srl(x, 16)
    x = x * 0x7FEB352D
    x = x ^ _srl(x, 15)
    x = x * (0x846CA68B - (1 << 32))
    return x ^ _srl(x, 16)


def random_bits(index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """32 uniform random bits per element index, as int32 bit patterns.

    ``seed`` holds int32 words ``[s0, s1]``; the stream is
    ``lowbias32(i_lo ^ s0 ^ lowbias32(i_hi)) ^ s1`` for element index ``i``
    (``lowbias32(0) = 0``; an int32 ``index`` promises ``i < 2**31``, so ``i_hi = 0``).
    One hash per element: a bijection of ``i_lo ^ s0``, so the words of one
    2**32-element block are distinct; ``s0`` is drawn anew for every call.
    """
    if index.dtype == torch.int32:
        return _lowbias32(index ^ seed[0]) ^ seed[1]
    lo = (index & 0xFFFFFFFF).to(torch.int32)  # the same 32 bits, as int32
    hi = (index >> 32).to(torch.int32)
    return _lowbias32(lo ^ seed[0] ^ _lowbias32(hi)) ^ seed[1]


def rand_mask(rand_bits: int) -> int:
    """The top ``rand_bits`` of 30 bits: the random bits stochastic rounding uses."""
    return ((1 << rand_bits) - 1) << (30 - rand_bits)


# container layout: (int dtype of the same width, stored mantissa bits, exponent bias)
_LAYOUT = {
    torch.float32: (torch.int32, 23, 127),
    torch.float64: (torch.int64, 52, 1023),
}


def int_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype the kernel works in for a float container dtype."""
    return _LAYOUT[dtype][0]


def float_bits(values: tuple[float, ...], dtype: torch.dtype) -> list[int]:
    """Bit patterns of ``values`` in the container ``dtype`` (as signed Python ints, as
    ``torch.tensor(values, dtype=dtype).view(int_dtype(dtype)).tolist()`` gives them).

    Plain Python, so that ``torch.compile`` traces it without a host round trip: with
    ``|v| = m * 2**e`` (``m`` in [0.5, 1)) the biased exponent is ``E = e - 1 + bias``;
    a normal ``v`` (``E >= 1``) is ``E << P`` plus its significand's ``P`` stored bits, a
    subnormal one ``|v| / 2**(1 - bias - P)``, both rounded to nearest-even (a carry runs
    into the exponent field); beyond the largest finite value it is inf, NaN the quiet
    NaN ``0x7FC00000`` / ``0x7FF8000000000000``; the sign bit is added last."""
    _, p, bias = _LAYOUT[dtype]
    width = 32 if dtype == torch.float32 else 64
    top = (1 << (width - 1 - p)) - 1  # the exponent field of inf and NaN
    out = []
    for v in values:
        if math.isnan(v):
            bits = (top << p) | (1 << (p - 1))
        else:
            a = abs(v)
            e = math.frexp(a)[1] if 0 < a < math.inf else 0
            if a == math.inf:
                bits = top << p
            elif a == 0:
                bits = 0
            elif e - 1 + bias >= 1:
                bits = ((e - 1 + bias) << p) + round(math.ldexp(a, p - e + 1)) - (1 << p)
            else:
                bits = round(math.ldexp(a, bias - 1 + p))
            bits = min(bits, top << p)
            if math.copysign(1.0, v) < 0:
                bits -= 1 << (width - 1)  # the sign bit, as a signed integer
        out.append(bits)
    return out


class Shape(NamedTuple):
    """What a compiled variant of the kernel fixes besides mode and overflow rule."""

    parity_from_exponent: bool  # man == 0: a code's last bit is its exponent's
    flush: bool  # no subnormals
    symmetric: bool  # the largest negative magnitude equals the largest positive one
    wide_index: bool  # more than 2**31 elements: count them in int64
    subnormal_inputs: bool  # the grid changes below the container's smallest normal
    negative_zero: bool  # -0 has a code (else zero results are +0)
    signed: bool  # else no sign and no zero: zero and negative inputs give NaN, tiny ones min


def grid_below_container(grid: tuple[int, ...], flush: bool) -> bool:
    """True when container subnormals need their own exponent (``Shape.subnormal_inputs``).

    A subnormal input's spacing in the format is ``2**max(e - m, qmin)`` for the exponent
    ``e`` of its leading bit; the common kernel takes ``e`` to be the container's ``emin``,
    which is right unless the format has normal values there: its ``emin`` is below the
    container's (``P - m >= qmin + P + bias``), or, without subnormals, its flush
    exponent is at most the container's (``flush + bias <= 1``).
    """
    return grid[0] >= grid[1] or flush and grid[6] <= 1


def grid_constants(fmt: Any, dtype: torch.dtype) -> tuple[int, ...]:
    """The integers :func:`round_kernel` reads for format ``fmt`` in container ``dtype``.

    ``[max(P - m, 0), qmin + P + bias, code_bias - bias - P, max_bits, max_negative_bits,
    special_bits, flush + bias, flush + P + bias, kmin_bits]``: ``P``/``bias`` are the
    container's, ``m``/``qmin``/``flush`` the format's grid (``Format.grid_*``), the
    ``*_bits`` are bit patterns of the largest magnitudes, of what overflow gives under
    ``overflow="inf"`` (inf or NaN) and of the smallest step ``2**kmin`` (``qmin``, or
    ``flush`` without subnormals); the caller appends :func:`rand_mask`.
    """
    _, p, bias = _LAYOUT[dtype]
    flush = fmt.grid_flush
    kmin = max(fmt.grid_qmin, flush)  # flush: a format without subnormals
    special = float("inf") if fmt.has_inf else float("nan")
    limits = float_bits((fmt.max, fmt.max_negative, special, 2.0**kmin), dtype)
    return (max(p - fmt.grid_man, 0), fmt.grid_qmin + p + bias, fmt.code_bias - bias - p,
            *limits[:3], flush + bias, flush + p + bias, limits[3])


@functools.lru_cache(maxsize=1024)
def constants(fmt: Any, dtype: torch.dtype, rand_bits: int, device: torch.device) -> tuple[
    torch.dtype, torch.Tensor, Shape, Shape,
]:
    """For rounding inputs of ``dtype`` onto ``fmt``: the compute dtype (float32 where it
    holds the format's values and the input is not float64), :func:`grid_constants` and
    :func:`rand_mask` as a tensor on ``device`` (cached: never written), and the
    :class:`Shape` for up to ``2**31`` elements and for more."""
    compute = torch.float32 if dtype != torch.float64 and fmt.float32_exact else torch.float64
    grid = (*grid_constants(fmt, compute), rand_mask(rand_bits))
    flush = fmt.grid_flush > fmt.grid_qmin
    subnormal_inputs = grid_below_container(grid, flush)
    shapes = (Shape(fmt.parity_from_exponent, flush, fmt.max == fmt.max_negative, wide,
                    subnormal_inputs, fmt.negative_zero, fmt.signed) for wide in (False, True))
    return (compute, torch.tensor(grid, dtype=int_dtype(compute), device=device), *shapes)


def round_kernel(
    x: torch.Tensor,
    grid: torch.Tensor,
    seed: torch.Tensor,
    mode: str,
    overflow: str,
    shape: Shape,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round a flat float32/float64 tensor ``x`` onto a format's grid.

    ``grid`` holds :func:`grid_constants` and :func:`rand_mask` in the container's integer
    dtype; ``seed`` two int32 hash words and ``index`` the elements' indices (broadcast
    to ``x``'s shape) for stochastic rounding. With ``u`` the magnitude's bit
    pattern, ``ef`` its exponent field and ``efc = max(ef, 1)``, rounding drops
    ``d = max(P - m, qmin + P + bias - efc)`` low bits of the significand
    ``s = u - ((efc - 1) << P)`` (with its hidden bit). For ``d <= P`` the rounded
    magnitude is ``u - rem + (up << d)``, the carry of ``up`` running into the exponent
    field exactly when the significand overflows; for ``d > P`` the value is below the
    smallest step and the result is ``0`` or ``2**kmin``. A subnormal input (``ef = 0``)
    has its leading bit at exponent field ``ev = floor(log2 u) - P + 1 <= 0``; where the
    format has normal values there (``shape.subnormal_inputs``) rounding drops
    ``d = max(qmin + P + bias - 1, P - m + ev - 1)`` bits and the flush test compares
    ``ev``. Without negative zero a zero result is ``+0``; unsigned formats give NaN for
    zero and negative inputs and ``2**kmin`` below it. Work is done in int32 for float32
    (it vectorises well) and int64 for float64.
    """
    ity, p, bias = _LAYOUT[x.dtype]
    width = 8 * x.element_size()
    b = x.view(ity)
    u = b & torch.iinfo(ity).max
    inf = ((1 << (width - 1 - p)) - 1) << p  # the bit pattern of +inf
    efc = (u >> p).clamp(min=1)
    d_true = torch.maximum(grid[1] - efc, grid[0])
    ev = efc  # the exponent field of the leading bit
    if shape.subnormal_inputs:  # a subnormal's leading bit is below the hidden one: ev <= 0
        ev = torch.where(u >> p == 0, (u.to(x.dtype).view(ity) >> p) - (bias + p - 1), efc)
        d_true = torch.where(ev < 1, torch.maximum(grid[1] - 1, grid[0] + ev - 1), d_true)
    if shape.flush:  # below 2**flush the step is 2**flush
        d_true = torch.where(ev < grid[6], grid[7] - efc, d_true)
    d = d_true.clamp(max=width - 2)  # beyond this f = 0 and rem = s: the same decisions
    s = u - ((efc - 1) << p)
    f = s >> d
    rem = s - (f << d)
    if mode in ("nearest", "odd"):  # is the lower neighbour's code odd?
        # man == 0: its last bit is the exponent's, k + code_bias (and code 0 is even)
        odd = ((d + efc + grid[2]) & (f != 0).to(ity) if shape.parity_from_exponent else f) & 1
    if mode == "nearest":  # 2 rem > 2**d, or a tie (2 rem == 2**d, d >= 1) and f odd
        up = ((rem << 1) | odd) > (torch.ones_like(d) << d)
    elif mode == "nearest_away":
        up = (rem << 1) >= (torch.ones_like(d) << d)
    elif mode == "toward_zero":
        up = torch.zeros_like(rem, dtype=torch.bool)
    elif mode == "up":
        up = (rem != 0) & (b >= 0)
    elif mode == "down":
        up = (rem != 0) & (b < 0)
    elif mode == "odd":
        up = (rem != 0) & (odd == 0)
    elif mode == "stochastic":
        up = _stochastic_up(rem, d, d_true, random_bits(index, seed), grid[9])
    else:  # pragma: no cover - validated by the caller
        raise ValueError(mode)

    res = torch.where(d > p, torch.where(up, grid[8], 0), u - rem + (up.to(ity) << d))
    limit = grid[3] if shape.symmetric else torch.where(b < 0, grid[4], grid[3])
    over = res > limit  # also for inf and NaN inputs (res = u: no bits are dropped)
    if overflow == "saturate":
        res = torch.where(over, limit, res)
    elif mode in ("nearest", "nearest_away", "stochastic"):  # every overflow gives inf/NaN
        res = torch.where(over, grid[5], res)
    else:  # directed modes: overflow away from zero gives inf/NaN, toward zero the limit
        is_inf = u == inf
        away = over & (b >= 0) if mode == "up" else over & (b < 0) if mode == "down" else None
        res = torch.where(over, limit, res)
        res = torch.where(is_inf if away is None else away | is_inf, grid[5], res)
    sign = b & torch.iinfo(ity).min
    if not shape.negative_zero:
        sign = torch.where(res == 0, 0, sign)
    res = res | sign
    if not shape.signed:  # no zero: below the smallest value it is the result
        res = torch.where(b > 0, torch.maximum(res, grid[8]), grid[5])
    return torch.where(u > inf, b, res).view(x.dtype)  # NaN stays (payload and all)


def _stochastic_up(rem: torch.Tensor, d: torch.Tensor, d_true: torch.Tensor,
                   h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Round up with probability ``floor(q * 2**k) / 2**k``, ``q = rem / 2**d_true`` the
    fraction of a step, ``k`` = ``rand_bits``: ``floor(q * 2**a) + r >= 2**a`` on the
    top ``k`` of ``a`` bits (``a = W - 2``), ``r`` bits ``29 .. 30 - k`` of the hash."""
    ity = rem.dtype
    a = 8 * rem.element_size() - 2
    # q * 2**a exactly: rem << (a - d) when d_true = d <= a, else rem >> (d_true - a)
    top = (rem << (a - d)) >> (d_true - d).clamp(max=a + 1)
    r = h.to(ity) & mask
    if a > 30:
        r, mask = r << (a - 30), mask << (a - 30)
    return (top & mask) + r >= (1 << a)


#: what :func:`telemetry` returns, in this order
STATS = ("finite", "nonzero", "underflows", "overflows", "nonfinite_out", "signal", "noise",
         "amax")


def telemetry(x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, shape: Shape,
              scaled: torch.Tensor | None = None) -> torch.Tensor:
    """What rounding ``x`` to ``y`` (container dtype) did, as a float64 tensor of :data:`STATS`.

    Over the finite elements of ``x`` (magnitude bits ``u`` below inf's): how many,
    how many nonzero, nonzero ones rounded to zero, ``|x|`` beyond the format's largest
    magnitude of ``x``'s sign (``u`` above its bit pattern, ``grid[3]``/``grid[4]``), how
    many ``y`` are inf/NaN (over all elements), ``sum x**2``, ``sum (x - y)**2`` (``inf`` if
    a finite ``x`` gave an inf/NaN ``y``) and ``max |x|``. Widened to float64, ``x**2`` and
    ``x - y`` of float32 values are exact and the sums carry float64 rounding only (relative
    error below ``n * 2**-53``); counts are exact up to ``2**53``. Compiled, these reductions
    fuse with the rounding pass: ``x`` is read once. With scaling, ``scaled`` holds the values
    the format's grid received (``x / s``): overflows compare them with its range (a NaN
    one, from a NaN scale, is none).
    """
    ity, p, _ = _LAYOUT[x.dtype]
    top = torch.iinfo(ity).max
    inf = ((1 << (8 * x.element_size() - 1 - p)) - 1) << p
    b = x.view(ity)
    u, v = b & top, y.view(ity) & top
    finite = u < inf
    nonzero = finite & (u != 0)
    over = u
    if scaled is not None:
        over = scaled.view(ity) & top
        over = torch.where(over <= inf, over, 0)
    limit = grid[3] if shape.symmetric else torch.where(b < 0, grid[4], grid[3])
    x64 = torch.where(finite, x, 0).to(torch.float64)
    err = torch.where(v < inf, x64 - y.to(torch.float64), torch.inf)
    err = torch.where(finite, err, 0.0)
    # counted in 32-bit lanes (cheaper than 64-bit ones) unless there are more than 2**31
    # elements; a count of 2**31 wraps to -2**31, which the float64 modulo 2**32 undoes
    cty = torch.int64 if shape.wide_index else torch.int32
    counts = torch.stack([c.sum(dtype=cty) for c in (
        finite, nonzero, nonzero & (v == 0), finite & (over > limit), v >= inf)])
    sums = torch.stack([(x64 * x64).sum(), (err * err).sum(), x64.abs().amax()])
    counts = counts.to(torch.float64)
    return torch.cat([counts if shape.wide_index else counts % 2.0**32, sums])


def merge_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`telemetry` of two parts pooled: counts and sums add, ``amax`` is the larger."""
    return torch.cat([a[:-1] + b[:-1], torch.maximum(a[-1:], b[-1:])])


def round_values(x: torch.Tensor, grid: torch.Tensor, seed: torch.Tensor, mode: str,
                 overflow: str, shape: Shape, compute: torch.dtype, dtype: torch.dtype,
                 stats: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``round(x)`` for contiguous ``x`` of any shape: widen to ``compute``, round, narrow
    to ``dtype``; with ``stats`` the rounding's :func:`telemetry` too (else None).

    An element's stochastic-rounding index is its position in ``x``'s flat order. Compiled,
    everything fuses into one vectorised pass (the index vector is one
    ``Vectorized::arange``); inside a caller's graph (:mod:`.cast` under ``torch.compile``)
    it also fuses with the ops around it.
    """
    index = None
    if mode == "stochastic":
        itype = torch.int64 if shape.wide_index else torch.int32
        index = torch.arange(x.numel(), device=x.device, dtype=itype).view(x.shape)
    xc = x.to(compute)
    y = round_kernel(xc, grid, seed, mode, overflow, shape, index).to(dtype)
    # of the value stored (a narrower dtype rounds once more)
    return y, telemetry(xc, y.to(compute), grid, shape) if stats else None


def quantize_into(out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, seed: torch.Tensor,
                  mode: str, overflow: str, shape: Shape, compute: torch.dtype,
                  stats: bool = False) -> torch.Tensor | None:
    """``out[:] = round(x)`` (:func:`round_values` into ``out``, which may be ``x`` itself);
    with ``stats``, returns the rounding's :func:`telemetry` too (else None). Compiled, one
    pass that reads ``x`` and writes ``out``."""
    y, measured = round_values(x, grid, seed, mode, overflow, shape, compute, out.dtype, stats)
    out.copy_(y)
    return measured


def round_flat(out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, seed: torch.Tensor,
               mode: str, overflow: str, shape: Shape, compute: torch.dtype,
               stats: bool = False) -> torch.Tensor | None:
    """``out[:] = round(x)`` for flat ``x`` and ``out`` (may be one object), by :func:`run`;
    with ``stats`` returns the :func:`telemetry` of the whole tensor (a device tensor: no
    sync)."""
    return run(out, x, grid, seed, mode, overflow, shape, compute, stats)


@functools.lru_cache(maxsize=32)
def _cached_zeros(size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.zeros(size, dtype=torch.int32, device=device)


def zeros(size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A cached int32 zero tensor (the unused seed of a non-stochastic rounding): never written.
    While ``torch.compile`` traces, a constant of the graph (dynamo keeps no lru_cache)."""
    if torch.compiler.is_compiling():
        return torch.zeros(size, dtype=torch.int32, device=device)
    return _cached_zeros(size, device)


_kernel = Compiled(quantize_into, "rounding kernel")


def run(*args: object) -> torch.Tensor | None:
    """:func:`quantize_into` through the backend (:mod:`.backend`: compiled or eager, same bits).

    A variant is what a graph of its own is compiled for: the arguments after ``shape``,
    dtypes, device, dimensions, aliasing, and the sizes and storage offsets of 0 and 1 it
    specialises. The kernel's inputs are detached and it runs without grad: one graph
    whatever the grad mode.
    """
    out, x = args[0], args[1]
    assert isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor)
    variant = (*args[4:], x.dtype, out.dtype, x.device.type, x.dim(), x is out, x.shape[0] <= 1,
               x.storage_offset() <= 1, out.storage_offset() <= 1)
    with torch.no_grad():
        return _kernel(variant, *args)
