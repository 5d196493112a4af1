"""The unsigned, zero-less exponent format of block scales: OCP MX E8M0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .formats import _F64_MAX_EXP, _F64_MIN_QUANTUM_EXP, Format, _require_int

__all__ = ["ScaleExponent"]


@dataclass(frozen=True)
class ScaleExponent(Format):
    """Unsigned exponent only, no zero: code ``E`` is ``2**(E - bias)`` for
    ``E < 2**exp_bits - 1``, the all-ones code NaN (OCP MX E8M0: ``ScaleExponent(8, 127)``,
    values ``2**-127 .. 2**127``, ml_dtypes' ``float8_e8m0fnu``).

    Rounding happens on the linear value as for :class:`PowerOfTwo`; magnitudes below
    ``2**-bias`` give ``2**-bias`` (there is no zero), and zero, negative inputs and NaN
    give NaN.
    """

    table_kind: ClassVar[str | None] = "scale_exp"

    exp_bits: int = 8
    bias: int = 127

    def __post_init__(self) -> None:
        _require_int("exp_bits", self.exp_bits, 1, 11)
        _require_int("bias", self.bias, 2**self.exp_bits - 2 - _F64_MAX_EXP,
                     -_F64_MIN_QUANTUM_EXP)

    @property
    def bits(self) -> int:
        return self.exp_bits

    @property
    def grid_man(self) -> int:
        return 0

    @property
    def grid_qmin(self) -> int:
        return -self.bias

    @property
    def max(self) -> float:
        return math.ldexp(1.0, 2**self.exp_bits - 2 - self.bias)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, -self.bias)

    @property
    def min_subnormal(self) -> float:
        return self.min_normal

    @property
    def has_nan(self) -> bool:
        return True

    @property
    def negative_zero(self) -> bool:
        return False

    @property
    def signed(self) -> bool:
        return False

    @property
    def parity_from_exponent(self) -> bool:
        return True

    @property
    def code_bias(self) -> int:
        return self.bias

    @property
    def name(self) -> str:
        return f"ScaleExponent(exp_bits={self.exp_bits}, bias={self.bias})"

    def scaled_by(self, x: int) -> ScaleExponent:
        return ScaleExponent(self.exp_bits, self.bias - x)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        c = codes.to(torch.int64)
        v = torch.ldexp(torch.ones_like(c, dtype=torch.float64), (c - self.bias).to(torch.float64))
        return torch.where(c == 2**self.exp_bits - 1, math.nan, v).to(dtype)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        y64 = y.to(torch.float64)
        ok = torch.isfinite(y64) & (y64 > 0)
        _, e2 = torch.frexp(torch.where(ok, y64, torch.ones_like(y64)))
        codes = (e2.to(torch.int64) - 1 + self.bias).clamp(0, 2**self.exp_bits - 2)
        return self._check_encodable(y, torch.where(torch.isnan(y64), 2**self.exp_bits - 1, codes))
