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
``torch.Generator`` per call. The hash is Chris Wellons' ``lowbias32``,
applied twice; 32-bit products are formed from 16-bit halves so that no
intermediate overflows int64 (no undefined behaviour in generated C++).

``round_kernel`` is plain torch; :func:`compiled` returns it fused by
``torch.compile`` (C++/OpenMP on CPU, Triton on CUDA) when available.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch


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


def random_bits(n: int, seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """32 uniform random bits per element ``0..n-1``, as int32 bit patterns.

    ``seed`` holds int32 words ``[s0, s1, ...]``; the stream is
    ``lowbias32(lowbias32(i_lo ^ s0) ^ s1 ^ i_hi)`` for element index ``i``.
    """
    idx = torch.arange(n, device=device, dtype=torch.int64)
    lo = (idx & 0xFFFFFFFF).to(torch.int32)  # the same 32 bits, as int32
    hi = (idx >> 32).to(torch.int32)
    return _lowbias32(_lowbias32(lo ^ seed[0]) ^ seed[1] ^ hi)


# container layout: (int dtype of the same width, stored mantissa bits, exponent bias)
_LAYOUT = {
    torch.float32: (torch.int32, 23, 127),
    torch.float64: (torch.int64, 52, 1023),
}


def int_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype the kernel works in for a float container dtype."""
    return _LAYOUT[dtype][0]


def float_bits(values: tuple[float, ...], dtype: torch.dtype) -> list[int]:
    """Bit patterns of ``values`` in the container ``dtype`` (as Python ints)."""
    return torch.tensor(values, dtype=dtype).view(_LAYOUT[dtype][0]).tolist()


def round_kernel(
    x: torch.Tensor,
    grid: torch.Tensor,
    seed: torch.Tensor,
    mode: str,
    overflow: str,
    parity_from_exponent: bool,
) -> torch.Tensor:
    """Round a flat float32/float64 tensor ``x`` onto a format's grid.

    ``grid`` holds, in the container's integer dtype, ``[m, qmin, code_bias,
    max_bits, max_negative_bits, special_bits, flush]`` (bit patterns of the
    largest magnitudes and of what overflow gives under ``overflow="inf"``, inf or
    NaN; ``flush``: without subnormals, magnitudes below ``2**flush`` round to 0
    or ``2**flush``); ``seed`` = int32 ``[s0, s1, rand_bits]`` for stochastic rounding.

    The result is built on the bit pattern: for ``d <= P`` dropped bits,
    ``u - rem + (up << d)`` is the rounded magnitude, the carry of ``up`` running
    into the exponent field exactly when the significand overflows; when the
    value is below half a spacing (``d > P``) the result is ``0`` or ``2**k``.
    Work is done in int32 for float32 (it vectorises well) and int64 for float64.
    """
    ity, p, bias = _LAYOUT[x.dtype]
    ebits = 8 if p == 23 else 11
    dmax = 30 if p == 23 else 62  # beyond this f = 0 and rem = s: same decisions
    b = x.view(ity)
    neg = b < 0
    u = b & torch.iinfo(ity).max
    ef = u >> p
    mant = u & ((1 << p) - 1)
    special_in = ef == (1 << ebits) - 1
    is_nan = special_in & (mant != 0)
    is_inf = special_in & (mant == 0)
    e = ef.clamp(min=1) - bias  # value exponent (subnormal containers: emin)
    s = mant | ((ef > 0).to(ity) << p)
    m, qmin, code_bias = grid[0], grid[1], grid[2]
    k = torch.maximum(e - m, qmin)
    k = torch.where(e < grid[6], grid[6], k)  # no subnormals: 0 or 2**emin below 2**emin
    d_true = k - (e - p)
    d = d_true.clamp(min=0, max=dmax)
    f = s >> d
    rem = s - (f << d)
    one_d = torch.ones_like(d) << d  # 2**d: rem / 2**d is the fraction of a spacing
    inexact = rem != 0
    # is the lower neighbour's code odd? (man == 0: the code's last bit is the exponent's)
    odd = ((f != 0) & (((k + code_bias) & 1) == 1)) if parity_from_exponent else (f & 1) == 1

    if mode == "nearest":  # 2 rem > 2**d, or a tie (2 rem == 2**d, d >= 1) and f odd
        up = ((rem << 1) | odd.to(ity)) > one_d
    elif mode == "nearest_away":
        up = (rem << 1) >= one_d
    elif mode == "toward_zero":
        up = torch.zeros_like(inexact)
    elif mode == "up":
        up = inexact & ~neg
    elif mode == "down":
        up = inexact & neg
    elif mode == "odd":
        up = inexact & ~odd
    elif mode == "stochastic":
        # the top rand_bits (<= 30) bits of the remainder, taken at its true position
        # d_true (not the clamped d), plus as many random bits; the carry rounds up
        rb = seed[2].to(ity)
        top = torch.where(
            d_true >= rb,
            rem >> (d_true - rb).clamp(min=0, max=8 * x.element_size() - 1),
            rem << (rb - d_true).clamp(min=0),
        )
        h = random_bits(x.numel(), seed, x.device)
        r = ((h >> (32 - rb)) & ((1 << rb) - 1)).to(ity)
        up = inexact & (top + r >= (torch.ones_like(r) << rb))
    else:  # pragma: no cover - validated by the caller
        raise ValueError(mode)

    upi = up.to(ity)
    # d > P means |x| < 2**k (then k > e >= the container's emin, so 2**k is normal)
    res = torch.where(d > p, upi * ((k + bias) << p), u - rem + (upi << d))

    limit = torch.where(neg, grid[4], grid[3])
    over = res > limit
    if overflow == "saturate":
        res = torch.where(over | is_inf, limit, res)
    else:
        if mode in ("nearest", "nearest_away", "stochastic"):
            to_special = over
        elif mode == "up":
            to_special = over & ~neg
        elif mode == "down":
            to_special = over & neg
        else:  # toward_zero, odd
            to_special = torch.zeros_like(over)
        res = torch.where(over, limit, res)
        res = torch.where(to_special | is_inf, grid[5], res)
    res = res | (neg.to(ity) << (p + ebits))
    return torch.where(is_nan, b, res).view(x.dtype)


def quantize_into(
    out: torch.Tensor,
    x: torch.Tensor,
    grid: torch.Tensor,
    seed: torch.Tensor,
    mode: str,
    overflow: str,
    parity_from_exponent: bool,
    compute: torch.dtype,
) -> None:
    """``out[:] = round(x)``: widen to ``compute``, round, narrow to ``out``'s dtype.

    Compiled, the three steps fuse into one pass that reads ``x`` and writes
    ``out`` (which may be ``x`` itself).
    """
    y = round_kernel(x.to(compute), grid, seed, mode, overflow, parity_from_exponent)
    out.copy_(y)


_VARIANTS = 256
_compiled: Callable[..., None] | None = None
_compile_failed = False
_seen: set[tuple] = set()  # variants compiled in this process (their calls skip the patches)


def backend() -> str:
    """``"compiled"`` or ``"eager"``, from ``LOWPREC_BACKEND`` (default ``auto``)."""
    choice = os.environ.get("LOWPREC_BACKEND", "auto")
    if choice not in ("auto", "compiled", "eager"):
        raise ValueError(f"LOWPREC_BACKEND={choice!r} is unknown; allowed: auto, compiled, eager")
    if choice == "auto":
        return "eager" if _compile_failed else "compiled"
    return choice


def run(*args: object) -> None:
    """:func:`quantize_into` through the current backend.

    With ``LOWPREC_BACKEND=auto`` a failing ``torch.compile`` (no C++ toolchain,
    say) warns once and falls back to the eager kernel, which computes the same bits.
    """
    global _compiled, _compile_failed
    if backend() == "eager":
        quantize_into(*args)  # type: ignore[arg-type]
        return
    if _compiled is None:
        _compiled = torch.compile(quantize_into, dynamic=True)
    out, x = args[0], args[1]
    variant = (*args[4:], x.dtype, out.dtype, x.device.type, x.numel() <= 1, x is out)
    try:
        if variant in _seen:
            _compiled(*args)
            return
        # one compiled variant per (mode, overflow, dtype, ...): more than dynamo's default 8.
        # torch's on-disk FX-graph/AOT caches are bypassed while compiling: with this
        # in-place dynamic-shape graph they have returned artifacts compiled for other shapes
        # ("wrong number of dimensions"); the generated C++ is still cached by its own text.
        with (
            torch._dynamo.config.patch(recompile_limit=_VARIANTS),
            torch._inductor.config.patch(fx_graph_cache=False),
            torch._functorch.config.patch(enable_autograd_cache=False),
        ):
            _compiled(*args)
        _seen.add(variant)
    except Exception as exc:
        if os.environ.get("LOWPREC_BACKEND", "auto") == "compiled":
            raise
        _compile_failed = True
        warnings.warn(
            f"lowprec: torch.compile failed ({type(exc).__name__}: {exc}); using the slower "
            "eager kernel. Set LOWPREC_BACKEND=eager to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        quantize_into(*args)  # type: ignore[arg-type]
