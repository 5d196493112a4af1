"""The standard unscaled formats by name: IEEE, OCP FP8/MX element types, fnuz FP8, E8M0,
IEEE P3109 binary8, integers, and the study's 12- and 7-bit formats.

:mod:`lowprec.numerics.presets` adds the scaled block formats (MX, NVFP4) and user
registrations; :mod:`lowprec.numerics.scaling` resolves scale-format names here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .formats import FixedPoint, FloatingPoint, Format, PowerOfTwo, p3109
from .scale_exponent import ScaleExponent

__all__ = ["STANDARD", "standard"]

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
_standard("fp8_e4m3fnuz", lambda: FloatingPoint(4, 3, bias=8, specials="fnuz"),
         "FP8 E4M3 without -0 (AMD/Graphcore, float8_e4m3fnuz): bias 8, NaN = 0x80")
_standard("fp8_e5m2fnuz", lambda: FloatingPoint(5, 2, bias=16, specials="fnuz"),
         "FP8 E5M2 without -0 (AMD/Graphcore, float8_e5m2fnuz): bias 16, NaN = 0x80")
_standard("fp8_e4m3b11fnuz", lambda: FloatingPoint(4, 3, bias=11, specials="fnuz"),
         "FP8 E4M3 bias 11 without -0 (Graphcore/TPU, float8_e4m3b11fnuz): NaN = 0x80")
_standard("e8m0", lambda: ScaleExponent(8, 127),
         "OCP MX E8M0 scale (float8_e8m0fnu): unsigned 2**-127 .. 2**127, 0xFF = NaN, no zero")

for _p in range(1, 8):
    _standard(f"binary8p{_p}", functools.partial(p3109, 8, _p),
             f"IEEE P3109 binary8p{_p} (signed, extended): precision {_p}, bias {2 ** (7 - _p)}, "
             "0x80 = NaN, 0x7F/0xFF = ±inf, no -0")
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
del _p
