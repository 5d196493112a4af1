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

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _MASK32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def random_bits(n: int, seed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """32 uniform random bits (int64 in ``[0, 2**32)``) for elements ``0..n-1``.

    ``seed`` is an int64 tensor ``[s0, s1]`` with 32-bit words.
    """
    idx = torch.arange(n, device=like.device, dtype=torch.int64)
    h = _lowbias32((idx & _MASK32) ^ seed[0])
    return _lowbias32(h ^ seed[1] ^ (idx >> 32))


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


def _pow2_bits(k: torch.Tensor, p: int, bias: int) -> torch.Tensor:
    """Bit pattern of ``2**k`` (normal or subnormal) for integer ``k`` in the container's range."""
    normal = (k + bias).clamp(min=0) << p
    sub = torch.ones_like(k) << (k + bias - 1 + p).clamp(min=0, max=p)
    return torch.where(k >= 1 - bias, normal, sub)


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
    max_bits, max_negative_bits, special_bits]`` (the last three: bit patterns of
    the largest magnitudes and of what overflow gives under ``overflow="inf"``,
    inf or NaN); ``seed`` = int64 ``[s0, s1, rand_bits]`` for stochastic rounding.

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
    d = (k - (e - p)).clamp(min=0, max=dmax)
    f = s >> d
    rem = s - (f << d)
    half = (torch.ones_like(d) << d) >> 1
    inexact = rem != 0
    if parity_from_exponent:
        odd = (f != 0) & (((k + code_bias) & 1) == 1)
    else:
        odd = (f & 1) == 1

    if mode == "nearest":
        up = (rem > half) | ((rem == half) & inexact & odd)
    elif mode == "nearest_away":
        up = (rem >= half) & inexact
    elif mode == "toward_zero":
        up = torch.zeros_like(inexact)
    elif mode == "up":
        up = inexact & ~neg
    elif mode == "down":
        up = inexact & neg
    elif mode == "odd":
        up = inexact & ~odd
    elif mode == "stochastic":
        # top rand_bits bits of the remainder plus as many random bits; carry rounds up
        rb = seed[2]
        r64 = rem.to(torch.int64)
        d64 = d.to(torch.int64)
        top = torch.where(d64 >= rb, r64 >> (d64 - rb).clamp(min=0), r64 << (rb - d64).clamp(min=0))
        r = random_bits(x.numel(), seed, x) >> (32 - rb)
        up = inexact & (top + r >= (torch.ones_like(r) << rb))
    else:  # pragma: no cover - validated by the caller
        raise ValueError(mode)

    upi = up.to(ity)
    res = torch.where(d > p, upi * _pow2_bits(k, p, bias), u - rem + (upi << d))

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


_VARIANTS = 256
_compiled: Callable[..., torch.Tensor] | None = None
_compile_failed = False


def backend() -> str:
    """``"compiled"`` or ``"eager"``, from ``LOWPREC_BACKEND`` (default ``auto``)."""
    choice = os.environ.get("LOWPREC_BACKEND", "auto")
    if choice not in ("auto", "compiled", "eager"):
        raise ValueError(f"LOWPREC_BACKEND={choice!r} is unknown; allowed: auto, compiled, eager")
    if choice == "auto":
        return "eager" if _compile_failed else "compiled"
    return choice


def kernel() -> Callable[..., torch.Tensor]:
    """The kernel for the current backend (compiled lazily, eager on failure)."""
    global _compiled
    if backend() == "eager":
        return round_kernel
    if _compiled is None:
        _compiled = torch.compile(round_kernel, dynamic=True)
    return _compiled


def run(*args: object, **kwargs: object) -> torch.Tensor:
    """Call the kernel; if compilation fails under ``auto``, warn once and use eager."""
    global _compile_failed
    fn = kernel()
    if fn is round_kernel:
        return round_kernel(*args, **kwargs)  # type: ignore[arg-type]
    try:
        # one compiled variant per (mode, overflow, dtype, ...): more than dynamo's default 8
        with torch._dynamo.config.patch(recompile_limit=_VARIANTS):
            return fn(*args, **kwargs)
    except Exception as exc:  # torch.compile can fail without a C++ toolchain
        if os.environ.get("LOWPREC_BACKEND", "auto") == "compiled":
            raise
        _compile_failed = True
        warnings.warn(
            f"lowprec: torch.compile failed ({type(exc).__name__}: {exc}); using the slower "
            "eager kernel. Set LOWPREC_BACKEND=eager to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return round_kernel(*args, **kwargs)  # type: ignore[arg-type]

