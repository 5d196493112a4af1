"""Number formats: which values exist and how they are encoded in bits.

A format is a finite set of real numbers plus an encoding of each as an unsigned
integer code of ``bits`` bits. Three families cover the study and the field:

* :class:`FixedPoint` ``(wl, fl)``: the values ``k * 2**-fl`` for integers
  ``k`` in ``[-2**(wl-1), 2**(wl-1) - 1]``; code ``k mod 2**wl`` (two's complement).
* :class:`FloatingPoint` ``(exp, man, bias, subnormals, specials)``: sign,
  ``exp`` exponent bits and ``man`` mantissa bits. With biased exponent ``E``
  and mantissa ``M``, a normal value is ``(1 + M / 2**man) * 2**(E - bias)``
  (``E >= 1``) and a subnormal one ``(M / 2**man) * 2**emin`` (``E = 0``),
  ``emin = 1 - bias``. ``specials`` says what the top codes mean:

  - ``"ieee"``: biased exponent all ones is inf (``M = 0``) or NaN (fp16, bf16, E5M2);
  - ``"fn"``: no inf, only the all-ones code is NaN (OCP E4M3, ``float8_e4m3fn``);
  - ``"none"``: every code is a finite number (OCP FP6/FP4, the study's emulation).

* :class:`PowerOfTwo` ``(exp_bits, emax)``: sign and exponent only, the values
  ``0`` and ``±2**e`` for the ``2**exp_bits - 1`` exponents ending at ``emax``.
  It *is* ``FloatingPoint(exp=exp_bits, man=0, specials="none")`` with the bias
  that puts the top exponent at ``emax``: exponent field 0 is zero.

Rounding into a format lives in :mod:`lowprec.quantize`; the rounding modes in
:mod:`lowprec.rounding`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "Format",
    "FixedPoint",
    "FloatingPoint",
    "PowerOfTwo",
    "ParameterError",
    "STANDARD",
    "standard",
]

SPECIALS = ("ieee", "fn", "none")

_NO_FLUSH = -(2**20)  # a grid_flush exponent no value reaches

# float64 can hold (and our kernel can compute with) quanta down to 2**-1074
# and values up to just below 2**1024.
_F64_MIN_QUANTUM_EXP = -1074
_F64_MAX_EXP = 1023


class ParameterError(ValueError, TypeError):
    """An invalid format/scaling parameter (a ``ValueError``, and a ``TypeError`` for types)."""


def _require_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if lo is not None and value < lo or hi is not None and value > hi:
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name}={value} is out of range; allowed: {rng}")
    return value


@dataclass(frozen=True)
class Format:
    """Base of all formats.

    Every format is described to the rounding kernel by a *grid*: for a
    magnitude ``a`` with binary exponent ``e = floor(log2 a)``, the spacing of
    representable magnitudes is ``2**max(e - man, qmin)`` where ``qmin`` is the
    exponent of the smallest spacing. Subclasses fill in the grid parameters.
    """

    @property
    def bits(self) -> int:
        raise NotImplementedError

    # -- grid description used by the kernel -----------------------------------------
    @property
    def grid_man(self) -> int:
        """Mantissa bits ``m``: spacing ``2**(e - m)`` for magnitudes in ``[2**e, 2**(e+1))``."""
        raise NotImplementedError

    @property
    def grid_qmin(self) -> int:
        """Exponent of the smallest spacing (the subnormal / fixed-point quantum)."""
        raise NotImplementedError

    @property
    def grid_flush(self) -> int:
        """Below ``2**grid_flush`` the only values are 0 and ``2**grid_flush`` (no subnormals)."""
        return _NO_FLUSH

    @property
    def max(self) -> float:
        """Largest finite value."""
        raise NotImplementedError

    @property
    def max_negative(self) -> float:
        """Largest magnitude of a negative value (``max`` except for two's complement)."""
        return self.max

    @property
    def min_normal(self) -> float:
        """Smallest positive value with full precision."""
        raise NotImplementedError

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value."""
        raise NotImplementedError

    @property
    def has_inf(self) -> bool:
        return False

    @property
    def has_nan(self) -> bool:
        return False

    @property
    def parity_from_exponent(self) -> bool:
        """True when the code's last bit is the exponent's (``man == 0``)."""
        return False

    @property
    def code_bias(self) -> int:
        """Added to the value exponent to get the exponent field (floats only)."""
        return 0

    @property
    def name(self) -> str:
        return repr(self)

    @property
    def float32_exact(self) -> bool:
        """True when float32 holds every value rounding can produce (else float64 is used)."""
        return self.grid_qmin >= -149 and all(
            float(torch.tensor(v, dtype=torch.float32)) == v for v in (self.max, self.max_negative)
        )

    # -- encodings ---------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Bit patterns (int64, unsigned, in ``[0, 2**bits)``) of the values in ``y``.

        Raises ``ValueError`` if any element is not exactly representable
        (quantize first).
        """
        raise NotImplementedError

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values of the bit patterns ``codes`` (an integer tensor of values in
        ``0 .. 2**bits - 1``; ValueError otherwise)."""
        raise NotImplementedError

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` as int64, or ValueError if one is outside ``0 .. 2**bits - 1``."""
        if codes.dtype.is_floating_point or codes.dtype.is_complex:
            raise TypeError(f"decode expects an integer tensor of codes, got {codes.dtype}")
        c = codes.to(torch.int64)
        bad = c[(c < 0) | (c >= 2**self.bits)]
        if bad.numel():
            raise ValueError(f"{self.name} codes are 0 .. {2**self.bits - 1} ({self.bits} bits); "
                             f"got {bad[:3].tolist()}")
        return c

    def values(self) -> torch.Tensor:
        """Every distinct finite value, ascending, as float64 (zero once)."""
        codes = torch.arange(2**self.bits, dtype=torch.int64)
        v = self.decode(codes, dtype=torch.float64)
        v = v[torch.isfinite(v)]
        return torch.unique(v + 0.0)  # sorted; -0 + 0 = +0, so zero appears once, positive

    def scaled_by(self, x: int) -> Format:
        """The same format with every value multiplied by ``2**x`` (same codes)."""
        raise NotImplementedError(f"{self.name} cannot be shifted by a power of two")

    def _check_encodable(self, y: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if y.dtype.is_floating_point is False:
            raise TypeError(f"encode expects a floating-point tensor, got {y.dtype}")
        back = self.decode(codes, dtype=torch.float64)
        y64 = y.to(torch.float64)
        ok = (back == y64) | (torch.isnan(back) & torch.isnan(y64))
        if not bool(ok.all()):
            bad = y64[~ok].flatten()[:3].tolist()
            raise ValueError(
                f"{self.name} cannot represent {bad} exactly; "
                f"round first with lowprec.quantize(x, fmt)"
            )
        return codes


@dataclass(frozen=True)
class FixedPoint(Format):
    """Two's complement fixed point: ``k * 2**-fl``, ``k`` in ``[-2**(wl-1), 2**(wl-1)-1]``.

    ``wl`` is the word length including the sign bit, ``fl`` the number of
    fraction bits (may be negative or exceed ``wl``: the scale is a power of two).
    """

    wl: int
    fl: int

    def __post_init__(self) -> None:
        _require_int("wl", self.wl, 1, 53)
        _require_int("fl", self.fl, self.wl - 1 - _F64_MAX_EXP, -_F64_MIN_QUANTUM_EXP)

    @property
    def bits(self) -> int:
        return self.wl

    @property
    def grid_man(self) -> int:
        return 2000  # never binds: the spacing is always 2**-fl

    @property
    def grid_qmin(self) -> int:
        return -self.fl

    @property
    def kmax(self) -> int:
        return 2 ** (self.wl - 1) - 1

    @property
    def kmin(self) -> int:
        return -(2 ** (self.wl - 1))

    @property
    def max(self) -> float:
        return math.ldexp(self.kmax, -self.fl)

    @property
    def max_negative(self) -> float:
        return math.ldexp(-self.kmin, -self.fl)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1, -self.fl)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1, -self.fl)

    @property
    def name(self) -> str:
        return f"FixedPoint(wl={self.wl}, fl={self.fl})"

    def scaled_by(self, x: int) -> FixedPoint:
        return FixedPoint(self.wl, self.fl - x)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        k = torch.round(torch.ldexp(y.to(torch.float64), torch.tensor(float(self.fl))))
        k = torch.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0).to(torch.int64)
        codes = torch.remainder(k, 2**self.wl)
        if torch.isnan(y).any() or torch.isinf(y).any():
            raise ValueError(f"{self.name} has no code for NaN or inf")
        return self._check_encodable(y, codes)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        c = self._check_codes(codes)
        k = torch.where(c >= 2 ** (self.wl - 1), c - 2**self.wl, c)
        return torch.ldexp(k.to(torch.float64), torch.tensor(float(-self.fl))).to(dtype)


@dataclass(frozen=True)
class FloatingPoint(Format):
    """Binary floating point with ``exp`` exponent and ``man`` mantissa bits.

    See the module docstring for the value set; ``bias`` defaults to
    ``2**(exp-1) - 1``. With ``subnormals=False`` the values below
    ``min_normal`` are absent (rounding picks between 0 and ``±min_normal``).
    """

    exp: int
    man: int
    bias: int | None = None
    subnormals: bool = True
    specials: str = "ieee"
    _bias: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_int("exp", self.exp, 1, 11)
        _require_int("man", self.man, 0, 52)
        bias = 2 ** (self.exp - 1) - 1 if self.bias is None else _require_int("bias", self.bias)
        object.__setattr__(self, "_bias", bias)
        if self.specials not in SPECIALS:
            raise ValueError(f"specials={self.specials!r} is unknown; allowed: {SPECIALS}")
        if not isinstance(self.subnormals, bool):
            raise TypeError(f"subnormals must be a bool, got {self.subnormals!r}")
        if self.specials == "ieee" and self.exp < 2:
            raise ValueError("specials='ieee' needs exp >= 2 (the top exponent is inf/NaN)")
        if self.specials == "fn" and self.exp + self.man < 2:
            raise ValueError("specials='fn' needs exp + man >= 2 (one code is NaN)")
        if self.grid_qmin < _F64_MIN_QUANTUM_EXP or self.emax > _F64_MAX_EXP:
            raise ValueError(
                f"{self.name}: exponent range [{self.emin}, {self.emax}] with man={self.man} "
                f"needs spacings down to 2**{self.grid_qmin}; float64 emulation supports "
                f"exponents up to {_F64_MAX_EXP} and spacings down to 2**{_F64_MIN_QUANTUM_EXP}"
                " (choose another bias or fewer exponent bits)"
            )

    @property
    def bits(self) -> int:
        return 1 + self.exp + self.man

    @property
    def ebias(self) -> int:
        """The exponent bias actually used."""
        return self._bias

    @property
    def emin(self) -> int:
        return 1 - self._bias

    @property
    def emax(self) -> int:
        top = 2**self.exp - 1 - self._bias
        return top - 1 if self.specials == "ieee" else top

    @property
    def grid_man(self) -> int:
        return self.man

    @property
    def grid_qmin(self) -> int:
        return self.emin - self.man

    @property
    def grid_flush(self) -> int:
        return _NO_FLUSH if self.subnormals else self.emin

    @property
    def max(self) -> float:
        if self.specials == "fn" and self.man == 0:
            return math.ldexp(1.0, self.emax - 1)  # the top exponent's only code is NaN
        top_mantissa = 2**self.man - 1
        if self.specials == "fn":
            top_mantissa -= 1  # the all-ones code is NaN
        return math.ldexp(1 + top_mantissa / 2**self.man, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.grid_qmin if self.subnormals else self.emin)

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.specials != "none"

    @property
    def parity_from_exponent(self) -> bool:
        return self.man == 0

    @property
    def code_bias(self) -> int:
        return self._bias

    def scaled_by(self, x: int) -> FloatingPoint:
        return FloatingPoint(self.exp, self.man, self._bias - x, self.subnormals, self.specials)

    @property
    def name(self) -> str:
        extra = ""
        if self.bias is not None:
            extra += f", bias={self.bias}"
        if not self.subnormals:
            extra += ", subnormals=False"
        if self.specials != "ieee":
            extra += f", specials={self.specials!r}"
        return f"FloatingPoint(exp={self.exp}, man={self.man}{extra})"

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        c = self._check_codes(codes)
        m_mask = (1 << self.man) - 1
        e_field = (c >> self.man) & ((1 << self.exp) - 1)
        mant = (c & m_mask).to(torch.float64)
        sign = torch.where((c >> (self.exp + self.man)) & 1 == 1, -1.0, 1.0).to(torch.float64)
        normal = torch.ldexp(1.0 + mant / 2**self.man, (e_field - self._bias).to(torch.float64))
        sub = torch.ldexp(mant / 2**self.man, torch.tensor(float(self.emin), dtype=torch.float64))
        if not self.subnormals:
            sub = torch.zeros_like(sub)  # subnormal codes decode to (signed) zero
        mag = torch.where(e_field == 0, sub, normal)
        top_e = e_field == (1 << self.exp) - 1
        if self.specials == "ieee":
            mag = torch.where(top_e & (c & m_mask == 0), math.inf, mag)
            mag = torch.where(top_e & (c & m_mask != 0), math.nan, mag)
        elif self.specials == "fn":
            mag = torch.where(top_e & (c & m_mask == m_mask), math.nan, mag)
        return (sign * mag).to(dtype)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        y64 = y.to(torch.float64)
        a = y64.abs()
        sign = torch.signbit(y64).to(torch.int64) << (self.exp + self.man)
        finite = torch.isfinite(a) & (a > 0)
        safe = torch.where(finite, a, torch.ones_like(a))
        _, e2 = torch.frexp(safe)  # safe = f * 2**e2, f in [0.5, 1)
        e = (e2 - 1).to(torch.int64).clamp(min=self.emin)
        e_field = torch.where(safe >= self.min_normal, e + self._bias, torch.zeros_like(e))
        q = torch.ldexp(torch.ones_like(safe), (e - self.man).to(torch.float64))
        significand = torch.round(safe / q).to(torch.int64)
        mant = torch.where(e_field > 0, significand - (1 << self.man), significand)
        codes = torch.where(finite, (e_field << self.man) | mant, torch.zeros_like(mant))
        top = ((1 << self.exp) - 1) << self.man
        if bool(torch.isinf(a).any()):
            if not self.has_inf:
                raise ValueError(f"{self.name} has no code for inf")
            codes = torch.where(torch.isinf(a), torch.full_like(codes, top), codes)
        if bool(torch.isnan(a).any()):
            if not self.has_nan:
                raise ValueError(f"{self.name} has no code for NaN")
            nan_code = (
                top | ((1 << self.man) - 1)
                if self.specials == "fn"
                else top | (1 << (self.man - 1))
            )
            codes = torch.where(torch.isnan(a), torch.full_like(codes, nan_code), codes)
            sign = torch.where(torch.isnan(a), torch.zeros_like(sign), sign)
        return self._check_encodable(y, codes | sign)


class PowerOfTwo(FloatingPoint):
    """Sign + exponent only: ``0`` and ``±2**e`` for ``e`` in ``[emax - 2**exp_bits + 2, emax]``.

    One code (exponent field 0) is zero; the study's 7-bit format is
    ``PowerOfTwo(exp_bits=6)``. Rounding happens on the linear value: the
    neighbours of ``x`` in ``(2**e, 2**(e+1))`` are ``2**e`` and ``2**(e+1)``.
    It is ``FloatingPoint(exp=exp_bits, man=0, bias=2**exp_bits - 1 - emax,
    specials="none")``, so it shares that class's encoding and rounding.
    """

    def __init__(self, exp_bits: int = 6, emax: int = 0) -> None:
        _require_int("exp_bits", exp_bits, 1, 11)
        _require_int("emax", emax)
        super().__init__(exp_bits, 0, 2**exp_bits - 1 - emax, True, "none")

    @property
    def exp_bits(self) -> int:
        return self.exp

    def scaled_by(self, x: int) -> PowerOfTwo:
        return PowerOfTwo(self.exp_bits, self.emax + x)

    def __repr__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"PowerOfTwo(exp_bits={self.exp_bits}, emax={self.emax})"


# -- the standard formats by name (lowprec.numerics.presets adds the scaled ones) ---------
STANDARD: dict[str, tuple[Callable[[], Format], str]] = {}


def _standard(name: str, factory: Callable[[], Format], doc: str) -> None:
    STANDARD[name] = (factory, doc)


def standard(name: str) -> Format:
    """The unscaled standard format called ``name`` (``fp32``, ``bf16``, ``fp8_e4m3``, ...)."""
    try:
        return STANDARD[name][0]()
    except KeyError:
        raise ValueError(
            f"unknown format {name!r}; standard formats: {', '.join(STANDARD)}"
        ) from None


_standard("fp32", lambda: FloatingPoint(8, 23), "IEEE binary32")
_standard("bf16", lambda: FloatingPoint(8, 7), "bfloat16 (Google Brain)")
_standard("fp16", lambda: FloatingPoint(5, 10), "IEEE binary16")
_standard("fp8_e4m3", lambda: FloatingPoint(4, 3, specials="fn"), "OCP FP8 E4M3 (float8_e4m3fn)")
_standard("fp8_e5m2", lambda: FloatingPoint(5, 2), "OCP FP8 E5M2 (IEEE-like)")
_standard("fp6_e3m2", lambda: FloatingPoint(3, 2, specials="none"), "OCP MX FP6 E3M2")
_standard("fp6_e2m3", lambda: FloatingPoint(2, 3, specials="none"), "OCP MX FP6 E2M3")
_standard("fp4_e2m1", lambda: FloatingPoint(2, 1, specials="none"), "OCP MX FP4 E2M1")
_standard("int8", lambda: FixedPoint(8, 0), "8-bit two's complement integer")
_standard(
    "fxp12",
    lambda: FixedPoint(12, 8),
    "study: 12-bit fixed point, 1 sign + 3 integer + 8 fraction bits (range ±8, step 2**-8); "
    "the study's split is unknown, this one fits the normalised activations and weights of "
    "its networks and leaves small errors to stochastic rounding",
)
_standard(
    "fp12",
    lambda: FloatingPoint(6, 5, specials="none"),
    "study: 12-bit float, 1 sign + 6 exponent + 5 mantissa bits, bias 31, no inf/NaN codes "
    "(range 2**-35 .. 2**32, as the study's emulation keeps every code finite); "
    "6 exponent bits cover gradients and activations without scaling",
)
_standard(
    "pot7",
    lambda: PowerOfTwo(6, emax=31),
    "study: 7-bit power of two, 1 sign + 6 exponent bits, values 0 and ±2**e for e in "
    "[-31, 31] (the exponent range is not given by the study: centred on 1)",
)
