"""Exact, independent reference model of the ``lowprec`` number formats and rounding modes.

Everything here is written from the *specification* of the core (not from its source) and
uses :class:`fractions.Fraction`, so every result is exact.  It is validated on its own
against torch / numpy / ml_dtypes casts in ``tests/test_reference_self.py``.

Formats
-------
``FixedSpec(wl, fl)``
    values ``k * 2**-fl`` for integers ``k`` in ``[-2**(wl-1), 2**(wl-1) - 1]``;
    code ``k mod 2**wl`` (two's complement).
``FloatSpec(exp, man, bias, subnormals, specials)``
    sign/exponent/mantissa with code ``s << (exp+man) | E << man | m``.  With
    ``emin = 1 - bias``: ``E >= 1`` is normal, ``(1 + m/2**man) * 2**(E-bias)``; ``E = 0`` is
    ``(m/2**man) * 2**emin`` (only ``m = 0``, i.e. zero, when ``subnormals`` is false).
    ``specials="ieee"``: ``E = 2**exp-1`` is inf (``m = 0``) or NaN; ``"fn"``: only the
    all-ones magnitude code is NaN; ``"none"``: every code is finite.
``pot_spec(exp_bits, emax)``
    ``FloatSpec(exp_bits, 0, 2**exp_bits - 1 - emax, True, "none")``.

Rounding
--------
The exact real ``x`` is located between its two neighbours ``lo <= x <= hi`` in the
*unbounded* format (the format's finite values, extended beyond ``±max`` by continuing the
code sequence: for floats with an unbounded exponent, for fixed point with unbounded ``k``).
Consecutive values of the unbounded format have consecutive codes, so exactly one of two
neighbours has an odd code (parity = code LSB).  One convention is *ours*, because the
specification leaves it open: with ``subnormals=False`` and ``man >= 1`` both ``0`` and
``min_normal`` have even codes; in that gap we use the parity of ``k = v / min_normal``
(quantum of the gap), i.e. ``0`` is even and ``min_normal`` odd.

Modes (``r`` = chosen neighbour):
``nearest`` closer one, tie -> even code; ``nearest_away`` tie -> larger ``|.|``;
``toward_zero`` smaller ``|.|``; ``down`` ``lo``; ``up`` ``hi``; ``odd`` -> ``x`` if representable,
else the odd-code neighbour; ``stochastic`` -> larger magnitude with probability
``p = (|x| - |small|) / (|large| - |small|)`` (``floor(p * 2**k) / 2**k`` with ``rand_bits=k``).

Overflow (``r`` outside ``[min_value, max_value]``): ``"saturate"`` -> ``±max`` (fixed point:
``k_max 2**-fl`` or ``k_min 2**-fl``); ``"inf"`` -> ``±max`` for ``toward_zero``, ``odd``,
``up`` with ``x < 0`` and ``down`` with ``x > 0``; otherwise ``±inf`` (ieee) or NaN (fn).
Zero results carry the sign of ``x`` for float formats.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

Number = Fraction | float | int

DETERMINISTIC_MODES: tuple[str, ...] = (
    "nearest",
    "nearest_away",
    "toward_zero",
    "down",
    "up",
    "odd",
)
ALL_MODES: tuple[str, ...] = (*DETERMINISTIC_MODES, "stochastic")
OVERFLOW_MODES: tuple[str, ...] = ("saturate", "inf")

#: Formats with at most this many bits are handled by enumeration + bisection.
TABLE_MAX_BITS = 16


# --------------------------------------------------------------------------------------
# format descriptions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedSpec:
    """Two's-complement fixed point: value ``k * 2**-fl``, ``-2**(wl-1) <= k < 2**(wl-1)``."""

    wl: int
    fl: int

    @property
    def bits(self) -> int:
        """Code width ``wl``."""
        return self.wl

    @property
    def kmin(self) -> int:
        """Smallest integer mantissa ``-2**(wl-1)``."""
        return -(1 << (self.wl - 1))

    @property
    def kmax(self) -> int:
        """Largest integer mantissa ``2**(wl-1) - 1``."""
        return (1 << (self.wl - 1)) - 1

    @property
    def scale(self) -> Fraction:
        """Quantum ``2**-fl``."""
        return Fraction(2) ** (-self.fl)

    @property
    def is_float(self) -> bool:
        """False: fixed point has no signed zero / specials."""
        return False


@dataclass(frozen=True)
class FloatSpec:
    """Binary floating point ``E<exp>M<man>`` (see module docstring)."""

    exp: int
    man: int
    bias: int
    subnormals: bool = True
    specials: str = "ieee"

    def __post_init__(self) -> None:
        if self.specials not in ("ieee", "fn", "none"):
            raise ValueError(f"bad specials {self.specials!r}")

    @property
    def bits(self) -> int:
        """Code width ``1 + exp + man``."""
        return 1 + self.exp + self.man

    @property
    def is_float(self) -> bool:
        """True: floats carry a signed zero."""
        return True

    @property
    def top_e(self) -> int:
        """All-ones biased exponent ``2**exp - 1``."""
        return (1 << self.exp) - 1

    @property
    def emin(self) -> int:
        """Smallest normal exponent ``1 - bias``."""
        return 1 - self.bias

    @property
    def max_mag_code(self) -> int:
        """Largest magnitude code (sign bit clear) that encodes a finite value.

        ieee: ``(top_e << man) - 1``; fn: all-ones minus one; none: all ones.
        """
        if self.specials == "ieee":
            return (self.top_e << self.man) - 1
        if self.specials == "fn":
            return ((self.top_e + 1) << self.man) - 2
        return ((self.top_e + 1) << self.man) - 1


Spec = FixedSpec | FloatSpec


def float_spec(
    exp: int,
    man: int,
    bias: int | None = None,
    subnormals: bool = True,
    specials: str = "ieee",
) -> FloatSpec:
    """``FloatSpec`` with the default bias ``2**(exp-1) - 1``."""
    if bias is None:
        bias = (1 << (exp - 1)) - 1
    return FloatSpec(exp, man, bias, subnormals, specials)


def pot_spec(exp_bits: int, emax: int) -> FloatSpec:
    """PowerOfTwo as ``FloatingPoint(exp_bits, 0, bias=2**exp_bits-1-emax, specials="none")``."""
    return FloatSpec(exp_bits, 0, (1 << exp_bits) - 1 - emax, True, "none")


#: Presets whose parameters the specification fixes completely.
PRESET_SPECS: dict[str, Spec] = {
    "fp32": float_spec(8, 23),
    "bf16": float_spec(8, 7),
    "fp16": float_spec(5, 10),
    "fp8_e4m3": float_spec(4, 3, specials="fn"),
    "fp8_e5m2": float_spec(5, 2),
    "fp6_e3m2": float_spec(3, 2, specials="none"),
    "fp6_e2m3": float_spec(2, 3, specials="none"),
    "fp4_e2m1": float_spec(2, 1, specials="none"),
    "int8": FixedSpec(8, 0),
}


def spec_of(fmt: Any) -> Spec:
    """Read a lowprec format object's public attributes into a reference spec.

    Duck-typed: ``wl``/``fl`` -> fixed point; ``exp_bits``/``emax`` -> power of two;
    otherwise ``exp, man, bias, subnormals, specials`` (``bias=None`` means the default
    ``2**(exp-1) - 1``).
    """
    if hasattr(fmt, "wl"):
        return FixedSpec(int(fmt.wl), int(fmt.fl))
    if hasattr(fmt, "exp_bits"):
        return pot_spec(int(fmt.exp_bits), int(fmt.emax))
    exp, man = int(fmt.exp), int(fmt.man)
    bias = fmt.bias if fmt.bias is not None else (1 << (exp - 1)) - 1  # None = default
    return FloatSpec(exp, man, int(bias), bool(fmt.subnormals), str(fmt.specials))


def default_overflow(spec: Spec) -> str:
    """``"inf"`` for ieee floats, ``"saturate"`` for everything else."""
    if isinstance(spec, FloatSpec) and spec.specials == "ieee":
        return "inf"
    return "saturate"


def has_overflow_code(spec: Spec) -> bool:
    """True if the format has an inf or NaN code to overflow into (ieee or fn floats)."""
    return isinstance(spec, FloatSpec) and spec.specials in ("ieee", "fn")


# --------------------------------------------------------------------------------------
# exact helpers
# --------------------------------------------------------------------------------------


def floor_log2(a: Fraction) -> int:
    """``floor(log2(a))`` for a positive rational ``a``, exactly."""
    if a <= 0:
        raise ValueError("floor_log2 needs a > 0")
    n, d = a.numerator, a.denominator
    e = n.bit_length() - d.bit_length()
    # 2**(e-1) < a < 2**(e+1); decide whether a >= 2**e
    if e >= 0:
        if n < (d << e):
            e -= 1
    elif (n << -e) < d:
        e -= 1
    return e


def pow2(e: int) -> Fraction:
    """Exact ``2**e`` for any integer ``e``."""
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


def to_fraction(x: Number) -> Fraction:
    """Exact rational value of a finite float / int / Fraction."""
    return x if isinstance(x, Fraction) else Fraction(x)


def _exact_float(v: Fraction) -> float:
    """``float(v)``, asserting that the conversion is exact."""
    f = float(v)
    if Fraction(f) != v:
        raise AssertionError(f"{v} is not exactly representable in float64")
    return f


# --------------------------------------------------------------------------------------
# decode / encode / enumeration
# --------------------------------------------------------------------------------------


def decode_exact(code: int, spec: Spec) -> tuple[int, Fraction | None, str]:
    """Decode a code to ``(sign, magnitude, kind)``.

    ``kind`` is ``"finite"`` (magnitude exact), ``"inf"``, ``"nan"`` or ``"undefined"``
    (the E=0, m!=0 codes of a float format without subnormals).  ``sign`` is 0 or 1; for
    fixed point the magnitude is signed-free ``|k| 2**-fl``.
    """
    if not 0 <= code < (1 << spec.bits):
        raise ValueError(f"code {code} out of range")
    if isinstance(spec, FixedSpec):
        k = code - (1 << spec.wl) if code >= (1 << (spec.wl - 1)) else code
        return (1 if k < 0 else 0), abs(k) * spec.scale, "finite"
    s = (code >> (spec.exp + spec.man)) & 1
    e_field = (code >> spec.man) & spec.top_e
    m = code & ((1 << spec.man) - 1)
    mag_code = code & ((1 << (spec.exp + spec.man)) - 1)
    if spec.specials == "ieee" and e_field == spec.top_e:
        return s, None, ("inf" if m == 0 else "nan")
    if spec.specials == "fn" and mag_code == ((spec.top_e + 1) << spec.man) - 1:
        return s, None, "nan"
    if e_field == 0:
        if m != 0 and not spec.subnormals:
            return s, None, "undefined"
        return s, m * pow2(spec.emin - spec.man), "finite"
    return s, ((1 << spec.man) + m) * pow2(e_field - spec.bias - spec.man), "finite"


def decode_ref(code: int, spec: Spec) -> float | None:
    """Decode to a Python float (exact): ``-0.0``, ``±inf``, ``nan``; ``None`` if undefined."""
    s, mag, kind = decode_exact(code, spec)
    if kind == "undefined":
        return None
    if kind == "nan":
        return math.nan
    if kind == "inf":
        return -math.inf if s else math.inf
    assert mag is not None
    v = _exact_float(mag)
    return -v if s else v


def encode_ref(value: float | Fraction, spec: Spec) -> int:
    """Canonical code of a representable value; ``ValueError`` otherwise.

    ``-0.0`` encodes to the sign-bit code for floats and to 0 for fixed point; ``±inf``
    only for ieee formats; NaN never.
    """
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN has no canonical code")
        if math.isinf(value):
            if isinstance(spec, FloatSpec) and spec.specials == "ieee":
                return (int(value < 0) << (spec.exp + spec.man)) | (spec.top_e << spec.man)
            raise ValueError("inf not representable")
        neg = math.copysign(1.0, value) < 0
    else:
        neg = value < 0
    v = to_fraction(value)
    if isinstance(spec, FixedSpec):
        k = v / spec.scale
        if k.denominator != 1 or not spec.kmin <= k.numerator <= spec.kmax:
            raise ValueError(f"{value} not representable")
        return k.numerator % (1 << spec.wl)
    sign = int(neg) << (spec.exp + spec.man)
    a = abs(v)
    if a == 0:
        return sign
    mag_code = _unbounded_float_code(a, spec)
    if mag_code is None or mag_code > spec.max_mag_code:
        raise ValueError(f"{value} not representable")
    return sign | mag_code


def _unbounded_float_code(a: Fraction, spec: FloatSpec) -> int | None:
    """Magnitude code of ``a > 0`` in the unbounded-exponent format, or None if ``a`` is
    not on its grid.  Codes of consecutive unbounded values are consecutive integers."""
    min_normal = pow2(spec.emin)
    if a < min_normal:
        m = a / pow2(spec.emin - spec.man)
        if m.denominator != 1 or not spec.subnormals:
            return None
        return m.numerator
    e = floor_log2(a)
    sig = a / pow2(e - spec.man)
    if sig.denominator != 1:
        return None
    return ((e + spec.bias) << spec.man) | (sig.numerator - (1 << spec.man))


@cache
def values_ref(spec: Spec) -> tuple[Fraction, ...]:
    """Every distinct finite value, ascending, zero once, by decoding every code."""
    if spec.bits > 20:
        raise ValueError("too many codes to enumerate")
    vals: set[Fraction] = set()
    for code in range(1 << spec.bits):
        s, mag, kind = decode_exact(code, spec)
        if kind == "finite":
            assert mag is not None
            vals.add(-mag if s else mag)
    return tuple(sorted(vals))


@cache
def max_ref(spec: Spec) -> Fraction:
    """Largest finite value."""
    if isinstance(spec, FixedSpec):
        return spec.kmax * spec.scale
    _, mag, kind = decode_exact(spec.max_mag_code, spec)
    assert kind == "finite" and mag is not None
    return mag


@cache
def min_value_ref(spec: Spec) -> Fraction:
    """Most negative finite value (``-max`` for floats, ``k_min 2**-fl`` for fixed)."""
    if isinstance(spec, FixedSpec):
        return spec.kmin * spec.scale
    return -max_ref(spec)


def min_normal_ref(spec: Spec) -> Fraction:
    """``2**emin`` for floats; ``2**-fl`` for fixed point."""
    if isinstance(spec, FixedSpec):
        return spec.scale
    return pow2(spec.emin)


def min_subnormal_ref(spec: Spec) -> Fraction:
    """Smallest positive value: ``2**(emin-man)`` (``2**emin`` without subnormals)."""
    if isinstance(spec, FixedSpec):
        return spec.scale
    if spec.subnormals and spec.man > 0:
        return pow2(spec.emin - spec.man)
    return pow2(spec.emin)


# --------------------------------------------------------------------------------------
# neighbours
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbours:
    """``lo <= x <= hi`` in the unbounded format; ``plo``/``phi`` are their code parities."""

    x: Fraction
    lo: Fraction
    hi: Fraction
    plo: int
    phi: int

    @property
    def exact(self) -> bool:
        """``x`` is a value of the unbounded format."""
        return self.lo == self.x


@dataclass(frozen=True)
class _Table:
    vals: tuple[Fraction, ...]  # extended by one unbounded value at each end
    fvals: tuple[float, ...]
    par: tuple[int, ...]


def _parity_of_value(v: Fraction, spec: Spec) -> int:
    """Code LSB of ``v`` in the unbounded format (see the gap convention in the docstring)."""
    if isinstance(spec, FixedSpec):
        k = v / spec.scale
        assert k.denominator == 1
        return k.numerator & 1
    a = abs(v)
    if a == 0:
        return 0
    code = _unbounded_float_code(a, spec)
    assert code is not None
    return code & 1


def _gap_fix(spec: Spec, lo: Fraction, hi: Fraction, plo: int, phi: int) -> tuple[int, int]:
    """Our convention for the no-subnormal gap: 0 even, ``min_normal`` odd."""
    if isinstance(spec, FloatSpec) and not spec.subnormals:
        mn = pow2(spec.emin)
        if lo == 0 and hi == mn:
            return 0, 1
        if lo == -mn and hi == 0:
            return 1, 0
    return plo, phi


@cache
def _table(spec: Spec) -> _Table:
    vals = list(values_ref(spec))
    if isinstance(spec, FixedSpec):
        lo_ext = (spec.kmin - 1) * spec.scale
        hi_ext = (spec.kmax + 1) * spec.scale
    else:
        mx = max_ref(spec)
        hi_ext = mx + pow2(floor_log2(mx) - spec.man)
        lo_ext = -hi_ext
    vals = [lo_ext, *vals, hi_ext]
    par = [_parity_of_value(v, spec) for v in vals]
    return _Table(tuple(vals), tuple(_exact_float(v) for v in vals), tuple(par))


def extended_values(spec: Spec) -> tuple[Fraction, ...]:
    """The finite values plus one unbounded-format value beyond each end: ``±(max + ulp)``
    for floats, ``(k_min - 1) 2**-fl`` and ``(k_max + 1) 2**-fl`` for fixed point."""
    return _table(spec).vals


def neighbours_analytic(x: Fraction, spec: Spec) -> Neighbours:
    """Neighbours from the grid formula (used for large formats / beyond the table)."""
    if isinstance(spec, FixedSpec):
        k = math.floor(x / spec.scale)
        lo = k * spec.scale
        hi = lo if lo == x else lo + spec.scale
        return Neighbours(x, lo, hi, _parity_of_value(lo, spec), _parity_of_value(hi, spec))
    a = abs(x)
    if a == 0:
        return Neighbours(x, x, x, 0, 0)
    mn = pow2(spec.emin)
    if a < mn and not spec.subnormals:
        lo_m, hi_m = Fraction(0), mn
    else:
        e = max(floor_log2(a), spec.emin)
        q = pow2(e - spec.man)
        lo_m = math.floor(a / q) * q
        hi_m = lo_m if lo_m == a else lo_m + q
    lo, hi = (lo_m, hi_m) if x > 0 else (-hi_m, -lo_m)
    plo, phi = _parity_of_value(lo, spec), _parity_of_value(hi, spec)
    plo, phi = _gap_fix(spec, lo, hi, plo, phi)
    return Neighbours(x, lo, hi, plo, phi)


def neighbours_table(x: Number, spec: Spec) -> Neighbours | None:
    """Neighbours by bisection over the sorted (extended) value list; None if ``x`` lies
    beyond the extended list (then every rounding overflows)."""
    t = _table(spec)
    if isinstance(x, float):
        seq: Sequence[Any] = t.fvals
        key: Any = x
    else:
        seq = t.vals
        key = to_fraction(x)
    i = bisect.bisect_left(seq, key)
    if i == len(seq) or (i == 0 and seq[0] != key):
        return None
    xf = to_fraction(x)
    if seq[i] == key:
        return Neighbours(xf, t.vals[i], t.vals[i], t.par[i], t.par[i])
    lo, hi = t.vals[i - 1], t.vals[i]
    plo, phi = _gap_fix(spec, lo, hi, t.par[i - 1], t.par[i])
    return Neighbours(xf, lo, hi, plo, phi)


def neighbours(x: Number, spec: Spec) -> Neighbours:
    """Neighbours of finite ``x``: table + bisection for small formats, else analytic."""
    if spec.bits <= TABLE_MAX_BITS:
        nb = neighbours_table(x, spec)
        if nb is not None:
            return nb
    return neighbours_analytic(to_fraction(x), spec)


# --------------------------------------------------------------------------------------
# rounding
# --------------------------------------------------------------------------------------


def _check_overflow_arg(spec: Spec, overflow: str | None) -> str:
    if overflow is None:
        return default_overflow(spec)
    if overflow not in OVERFLOW_MODES:
        raise ValueError(f"unknown overflow {overflow!r}")
    if overflow == "inf" and not has_overflow_code(spec):
        raise ValueError("overflow='inf' needs a format with inf/NaN codes")
    return overflow


def _nearest_side(nb: Neighbours) -> int:
    """Sign of ``2x - lo - hi``: -1 nearer ``lo``, +1 nearer ``hi``, 0 exact tie."""
    d = 2 * nb.x - nb.lo - nb.hi
    return (d > 0) - (d < 0)


def _choose(nb: Neighbours, mode: str, side: int | None = None) -> Fraction:
    """The neighbour selected by a deterministic mode (in the unbounded format);
    ``side`` is ``_nearest_side(nb)`` if already known."""
    if nb.exact:
        return nb.x
    lo, hi, x = nb.lo, nb.hi, nb.x
    small, large = (lo, hi) if x > 0 else (hi, lo)
    if mode in ("nearest", "nearest_away"):
        if side is None:
            side = _nearest_side(nb)
        if side < 0:
            return lo
        if side > 0:
            return hi
        if mode == "nearest_away":
            return large
        assert nb.plo != nb.phi
        return lo if nb.plo == 0 else hi
    if mode == "toward_zero":
        return small
    if mode == "down":
        return lo
    if mode == "up":
        return hi
    if mode == "odd":
        assert nb.plo != nb.phi
        return lo if nb.plo == 1 else hi
    raise ValueError(f"unknown rounding {mode!r}")


def _overflow_result(spec: Spec, negative: bool, mode: str, overflow: str) -> float:
    """Result when the rounded value lies outside the finite range."""
    if overflow == "saturate" or not has_overflow_code(spec):
        return _exact_float(min_value_ref(spec) if negative else max_ref(spec))
    to_max = (
        mode in ("toward_zero", "odd")
        or (mode == "up" and negative)
        or (mode == "down" and not negative)
    )
    if to_max:
        return _exact_float(min_value_ref(spec) if negative else max_ref(spec))
    assert isinstance(spec, FloatSpec)
    if spec.specials == "fn":
        return math.nan
    return -math.inf if negative else math.inf


@cache
def _bounds(spec: Spec) -> tuple[Fraction, Fraction]:
    return min_value_ref(spec), max_ref(spec)


def _finish(r: Fraction, x_negative: bool, spec: Spec, mode: str, overflow: str) -> float:
    lo_b, hi_b = _bounds(spec)
    if r > hi_b or r < lo_b:
        return _overflow_result(spec, x_negative, mode, overflow)
    if r == 0:
        return (-0.0 if x_negative else 0.0) if spec.is_float else 0.0
    return float(r)  # exact: every value of the (extended) grid is a float64


def _special_input(x: float, spec: Spec, overflow: str) -> float:
    """NaN -> NaN; ±inf -> ±inf (ieee) / NaN (fn) / ±max (saturate or no inf code)."""
    if math.isnan(x):
        return math.nan
    neg = x < 0
    if overflow == "saturate" or not has_overflow_code(spec):
        return _exact_float(min_value_ref(spec) if neg else max_ref(spec))
    assert isinstance(spec, FloatSpec)
    return math.nan if spec.specials == "fn" else x


def _is_negative(x: Number) -> bool:
    if isinstance(x, float):
        return math.copysign(1.0, x) < 0
    return x < 0


def round_ref(x: Number, spec: Spec, mode: str = "nearest", overflow: str | None = None) -> float:
    """Exact result of rounding ``x`` (float or Fraction) with a deterministic mode."""
    if mode not in DETERMINISTIC_MODES:
        raise ValueError(f"unknown rounding {mode!r}")
    ov = _check_overflow_arg(spec, overflow)
    if isinstance(x, float) and not math.isfinite(x):
        return _special_input(x, spec, ov)
    nb = neighbours(x, spec)
    return _finish(_choose(nb, mode), _is_negative(x), spec, mode, ov)


def round_ref_modes(
    x: Number, spec: Spec, overflow: str | None = None, modes: Iterable[str] = DETERMINISTIC_MODES
) -> dict[str, float]:
    """``{mode: round_ref(x, spec, mode, overflow)}`` with a single neighbour search."""
    ov = _check_overflow_arg(spec, overflow)
    modes = tuple(modes)
    if isinstance(x, float) and not math.isfinite(x):
        return {m: _special_input(x, spec, ov) for m in modes}
    nb = neighbours(x, spec)
    neg = _is_negative(x)
    side = None if nb.exact else _nearest_side(nb)
    return {m: _finish(_choose(nb, m, side), neg, spec, m, ov) for m in modes}


def sr_up_probability(x: Number, spec: Spec, rand_bits: int | None = None) -> Fraction:
    """Exact probability that stochastic rounding picks the larger-magnitude neighbour.

    ``p = (|x| - |small|) / (|large| - |small|)``; 0 if ``x`` is representable; with
    ``rand_bits=k`` it is ``floor(p 2**k) / 2**k``.
    """
    nb = neighbours(x, spec)
    if nb.exact:
        return Fraction(0)
    lo, hi = abs(nb.lo), abs(nb.hi)
    small, large = min(lo, hi), max(lo, hi)
    p = (abs(nb.x) - small) / (large - small)
    if rand_bits is not None:
        p = Fraction(math.floor(p * (1 << rand_bits)), 1 << rand_bits)
    return p


def sr_outcomes(x: Number, spec: Spec, overflow: str | None = None) -> tuple[float, float]:
    """``(result if rounded to smaller magnitude, result if rounded to larger magnitude)``,
    overflow rules applied (stochastic follows the nearest-family overflow rule)."""
    ov = _check_overflow_arg(spec, overflow)
    if isinstance(x, float) and not math.isfinite(x):
        r = _special_input(x, spec, ov)
        return r, r
    nb = neighbours(x, spec)
    neg = _is_negative(x)
    if nb.exact:
        r = _finish(nb.x, neg, spec, "stochastic", ov)
        return r, r
    small, large = (nb.lo, nb.hi) if nb.x > 0 else (nb.hi, nb.lo)
    return (
        _finish(small, neg, spec, "stochastic", ov),
        _finish(large, neg, spec, "stochastic", ov),
    )


def round_ref_list(
    xs: Iterable[Number], spec: Spec, mode: str = "nearest", overflow: str | None = None
) -> list[float]:
    """``[round_ref(x, spec, mode, overflow) for x in xs]``."""
    return [round_ref(x, spec, mode, overflow) for x in xs]


# --------------------------------------------------------------------------------------
# comparison helpers for the tests (no lowprec import)
# --------------------------------------------------------------------------------------


def same_float(a: float, b: float, signed_zero: bool = True) -> bool:
    """Bitwise-style equality of Python floats: every NaN equals every NaN; ``-0.0`` differs
    from ``0.0`` when ``signed_zero``."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a != b:
        return False
    return not signed_zero or math.copysign(1.0, a) == math.copysign(1.0, b)


def mismatches(
    xs: Sequence[float],
    got: Sequence[float],
    want: Sequence[float],
    signed_zero: bool = True,
    limit: int = 8,
) -> tuple[int, list[tuple[float, float, float]]]:
    """``(count, first few (x, got, want))`` of positions where ``got`` and ``want`` differ
    in the sense of :func:`same_float`."""
    bad = [
        (x, g, w)
        for x, g, w in zip(xs, got, want, strict=True)
        if not same_float(g, w, signed_zero)
    ]
    return len(bad), bad[:limit]


def mismatches_np(
    xs: Any, got: Any, want: Any, signed_zero: bool = True, limit: int = 8
) -> tuple[int, list[tuple[float, float, float]]]:
    """Vectorised :func:`mismatches` for float64 numpy arrays (or anything ``np.asarray``
    accepts): bit-pattern equality, NaN == NaN, ``-0.0 == 0.0`` unless ``signed_zero``."""
    import numpy as np

    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if not signed_zero:
        g, w = g + 0.0, w + 0.0  # -0.0 + 0.0 == +0.0
    same = (g.view(np.int64) == w.view(np.int64)) | (np.isnan(g) & np.isnan(w))
    bad = np.flatnonzero(~same)
    x = np.asarray(xs, dtype=np.float64)
    ex = [(float(x[i]), float(g[i]), float(w[i])) for i in bad[:limit]]
    return int(bad.size), ex
