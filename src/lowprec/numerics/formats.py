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
  - ``"none"``: every code is a finite number (OCP FP6/FP4, the study's emulation);
  - ``"fnuz"``: no inf and no negative zero: the code of ``-0`` (sign bit alone) is the
    only NaN, every other code finite (``float8_e4m3fnuz``, ``float8_e5m2fnuz``);
  - ``"p3109"``: IEEE P3109 "extended": the sign-bit-alone code is the only NaN, the
    all-ones magnitude is ``±inf``, no negative zero (``binary8p1`` .. ``binary8p7``).

  Formats without a negative zero round ``-0`` and negative values that round to zero
  to ``+0``.

* :class:`PowerOfTwo` ``(exp_bits, emax)``: sign and exponent only, the values
  ``0`` and ``±2**e`` for the ``2**exp_bits - 1`` exponents ending at ``emax``.
  It *is* ``FloatingPoint(exp=exp_bits, man=0, specials="none")`` with the bias
  that puts the top exponent at ``emax``: exponent field 0 is zero.
* :class:`ScaleExponent` ``(exp_bits, bias)``: unsigned exponent only, no zero: code
  ``E`` is ``2**(E - bias)``, the all-ones code NaN (OCP MX E8M0, ``float8_e8m0fnu``).

Rounding into a format lives in :mod:`lowprec.quantize`; the rounding modes in
:mod:`lowprec.rounding`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar

import torch

__all__ = [
    "Format",
    "FixedPoint",
    "FloatingPoint",
    "PowerOfTwo",
    "ParameterError",
    "p3109",
]

SPECIALS = ("ieee", "fn", "none", "fnuz", "p3109")
_NAN_AT_NEGATIVE_ZERO = ("fnuz", "p3109")

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


def _float32_holds(v: float) -> bool:
    """Whether float32 holds ``v`` exactly: ``|v| = m * 2**e`` (``m`` in [0.5, 1)) is a
    multiple of float32's spacing there, ``2**(max(e, -125) - 24)``, and ``e <= 128``."""
    if math.isinf(v) or v == 0 or math.isnan(v):
        return not math.isnan(v)
    e = math.frexp(v)[1]
    return e <= 128 and math.ldexp(abs(v), 24 - max(e, -125)).is_integer()


@functools.lru_cache(maxsize=4096)
def _float32_exact(fmt: Format) -> bool:
    """:attr:`Format.float32_exact`."""
    return fmt.grid_qmin >= -149 and _float32_holds(fmt.max) and _float32_holds(fmt.max_negative)


@dataclass(frozen=True)
class Format:
    """Base of all formats.

    Every format is described to the rounding kernel by a *grid*: for a
    magnitude ``a`` with binary exponent ``e = floor(log2 a)``, the spacing of
    representable magnitudes is ``2**max(e - man, qmin)`` where ``qmin`` is the
    exponent of the smallest spacing. Subclasses fill in the grid parameters.

    As a table (recipe files, checkpoints): :meth:`to_dict` / :meth:`from_dict`, ``kind``
    (:attr:`table_kind`) plus every constructor argument, explicit.
    """

    #: the ``kind`` that names the class in a table; ``None``: not written as a table
    table_kind: ClassVar[str | None] = None
    _TABLE_KINDS: ClassVar[dict[str, type[Format]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("table_kind")
        if kind is not None:
            Format._TABLE_KINDS[kind] = cls

    # -- tables --------------------------------------------------------------------------
    @classmethod
    def table_keys(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(required, optional)`` keys of the class's table besides ``kind``: the
        dataclass constructor fields, required where they have no default."""
        fields = [f for f in dataclasses.fields(cls) if f.init]
        required = tuple(f.name for f in fields
                         if f.default is MISSING and f.default_factory is MISSING)
        return required, tuple(f.name for f in fields if f.name not in required)

    def _table_value(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., <every constructor argument>: value}``; :meth:`from_dict` inverts it."""
        if self.table_kind is None:
            raise ParameterError(f"{self.name} cannot be written as a format table")
        required, optional = self.table_keys()
        return {"kind": self.table_kind, **{k: self._table_value(k) for k in required + optional}}

    @staticmethod
    def from_dict(table: Mapping[str, Any]) -> Format:
        """The format a :meth:`to_dict` table describes (optional keys may be left out);
        raises :class:`ParameterError` naming an unknown kind or key, or a missing key."""
        if not isinstance(table, Mapping):
            raise ParameterError(f"a format table must be a table, got {table!r}")
        kind = table.get("kind")
        cls = Format._TABLE_KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ParameterError(f"format kind={kind!r} is unknown; allowed: "
                                 f"{list(Format._TABLE_KINDS)}")
        required, optional = cls.table_keys()
        unknown = sorted(set(table) - {"kind", *required, *optional})
        if unknown:
            raise ParameterError(f"unknown key(s) {unknown}; allowed: "
                                 f"{['kind', *required, *optional]}")
        missing = [k for k in required if k not in table]
        if missing:
            raise ParameterError(f"missing key(s) {missing}")
        return cls(**{k: v for k, v in table.items() if k != "kind"})

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
    def negative_zero(self) -> bool:
        """False when ``-0`` has no code of its own (rounding gives ``+0``)."""
        return True

    @property
    def signed(self) -> bool:
        """False for a format without sign (and zero): negative inputs and zero give NaN."""
        return True

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
        """True when float32 holds every value rounding can produce (else float64 is used).

        Plain Python, cached per format: ``torch.compile`` traces it without a host
        round trip."""
        return (_float32_exact.__wrapped__ if torch.compiler.is_compiling() else
                _float32_exact)(self)

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

    table_kind: ClassVar[str | None] = "fixed"

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
    With ``specials="fnuz"`` or ``"p3109"`` the code of ``-0`` (the sign bit alone) is the
    NaN and zero results are ``+0`` (:attr:`negative_zero` is false).
    """

    table_kind: ClassVar[str | None] = "float"

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
        if bias == 2 ** (self.exp - 1) - 1:  # the default, however given: equal formats
            object.__setattr__(self, "bias", None)
        if self.specials not in SPECIALS:
            raise ValueError(f"specials={self.specials!r} is unknown; allowed: {SPECIALS}")
        if not isinstance(self.subnormals, bool):
            raise TypeError(f"subnormals must be a bool, got {self.subnormals!r}")
        if self.specials == "ieee" and self.exp < 2:
            raise ValueError("specials='ieee' needs exp >= 2 (the top exponent is inf/NaN)")
        if self.specials in ("fn", "p3109") and self.exp + self.man < 2:
            raise ValueError(f"specials={self.specials!r} needs exp + man >= 2 "
                             "(the top code is NaN or inf)")
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

    def _table_value(self, key: str) -> Any:
        return self.ebias if key == "bias" else getattr(self, key)

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
        top_reserved = self.specials in ("fn", "p3109")  # the all-ones code is NaN or inf
        if top_reserved and self.man == 0:
            return math.ldexp(1.0, self.emax - 1)  # the top exponent's only code is reserved
        top_mantissa = 2**self.man - 1
        if top_reserved:
            top_mantissa -= 1
        return math.ldexp(1 + top_mantissa / 2**self.man, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.grid_qmin if self.subnormals else self.emin)

    @property
    def has_inf(self) -> bool:
        return self.specials in ("ieee", "p3109")

    @property
    def has_nan(self) -> bool:
        return self.specials != "none"

    @property
    def negative_zero(self) -> bool:
        return self.specials not in _NAN_AT_NEGATIVE_ZERO

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

    @property
    def _top_exponent(self) -> int:
        """The code with all-ones exponent and zero mantissa (IEEE inf)."""
        return ((1 << self.exp) - 1) << self.man

    @property
    def _nan_code(self) -> int:
        """The code quantize's NaN results get (fn: all ones; fnuz, p3109: ``-0``'s)."""
        if self.specials in _NAN_AT_NEGATIVE_ZERO:
            return 1 << (self.exp + self.man)
        if self.specials == "fn":
            return self._top_exponent | ((1 << self.man) - 1)
        return self._top_exponent | (1 << (self.man - 1))

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
        elif self.specials == "p3109":
            mag = torch.where(top_e & (c & m_mask == m_mask), math.inf, mag)
        if not self.negative_zero:  # the code of -0 is NaN
            mag = torch.where(c == 1 << (self.exp + self.man), math.nan, mag)
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
        if bool(torch.isinf(a).any()):
            if not self.has_inf:
                raise ValueError(f"{self.name} has no code for inf")
            all_ones = (1 << (self.exp + self.man)) - 1
            inf_code = all_ones if self.specials == "p3109" else self._top_exponent
            codes = torch.where(torch.isinf(a), torch.full_like(codes, inf_code), codes)
        if not self.negative_zero:
            sign = torch.where(a == 0, torch.zeros_like(sign), sign)
        if bool(torch.isnan(a).any()):
            if not self.has_nan:
                raise ValueError(f"{self.name} has no code for NaN")
            codes = torch.where(torch.isnan(a), torch.full_like(codes, self._nan_code), codes)
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

    table_kind: ClassVar[str | None] = "pow2"

    def __init__(self, exp_bits: int = 6, emax: int = 0) -> None:
        _require_int("exp_bits", exp_bits, 1, 11)
        _require_int("emax", emax)
        super().__init__(exp_bits, 0, 2**exp_bits - 1 - emax, True, "none")

    @property
    def exp_bits(self) -> int:
        return self.exp

    @classmethod
    def table_keys(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A power-of-two format's table: ``exp_bits`` and ``emax``, both required."""
        return ("exp_bits", "emax"), ()

    def scaled_by(self, x: int) -> PowerOfTwo:
        return PowerOfTwo(self.exp_bits, self.emax + x)

    def __repr__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"PowerOfTwo(exp_bits={self.exp_bits}, emax={self.emax})"


def p3109(k: int, p: int) -> FloatingPoint:
    """IEEE P3109 ``binary{k}p{p}``, signed and extended: ``k`` bits, precision ``p`` (``p - 1``
    mantissa bits), bias ``2**(k - p - 1)``; ``±inf`` and one NaN, no ``-0``."""
    return FloatingPoint(k - p, p - 1, bias=2 ** (k - p - 1), specials="p3109")
