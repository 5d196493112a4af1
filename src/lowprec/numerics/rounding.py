"""Rounding modes: how a value that a format cannot hold picks a neighbour.

Let ``x`` be the exact input and ``lo <= |x| <= hi`` the two representable
magnitudes around ``|x|`` (equal when ``x`` is representable). Every mode acts
on the magnitude and keeps the sign (so ``-0.0`` stays ``-0.0``):

=================  =============================================================
``nearest``        the nearer of ``lo``/``hi``; a tie goes to the one whose code
                   is even (IEEE round-half-to-even)
``nearest_away``   the nearer; a tie goes to ``hi`` (away from zero)
``toward_zero``    ``lo`` (truncation)
``up``             toward +inf: ``hi`` for positive ``x``, ``lo`` for negative
``down``           toward -inf: ``lo`` for positive ``x``, ``hi`` for negative
``odd``            ``x`` if representable, else the one whose code is odd
                   (round-to-odd, used to avoid double rounding)
``stochastic``     ``hi`` with probability ``p = (|x| - lo) / (hi - lo)``, else ``lo``,
                   so ``E[result] = x``. With ``rand_bits=k`` only ``k`` random bits
                   are used, as hardware does: the top ``k`` bits of the discarded
                   remainder are added to ``k`` random bits and the carry rounds up,
                   so ``p`` becomes ``floor(p * 2**k) / 2**k`` (biased toward zero by
                   less than ``2**-k`` of a gap). The default is ``k = 30``: exact
                   whenever the remainder has no bits below ``2**-30`` of the gap
                   (values not far below the format's smallest spacing).
=================  =============================================================

Overflow (the rounded magnitude exceeds the format's maximum) is a separate
choice: ``"saturate"`` gives ``±max``; ``"inf"`` gives ``±inf`` (NaN for formats
whose only special is NaN), except that ``toward_zero``, ``odd`` and the
directed mode pointing back toward zero give ``±max``, as IEEE 754 specifies.
"""

from __future__ import annotations

MODES = ("nearest", "nearest_away", "toward_zero", "down", "up", "odd", "stochastic")
OVERFLOWS = ("saturate", "inf")
DEFAULT_RAND_BITS = 30
MAX_RAND_BITS = 30

__all__ = ["MODES", "OVERFLOWS", "check_mode", "check_overflow", "check_rand_bits"]


def check_mode(rounding: str) -> str:
    """Return ``rounding`` if it names a mode, else raise ``ValueError``."""
    if rounding not in MODES:
        raise ValueError(f"rounding={rounding!r} is unknown; allowed: {', '.join(MODES)}")
    return rounding


def check_overflow(overflow: str | None, has_inf: bool, has_nan: bool, name: str) -> str:
    """Resolve the overflow policy for a format (``None`` means the format's default)."""
    if overflow is None:
        return "inf" if has_inf else "saturate"
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow={overflow!r} is unknown; allowed: {', '.join(OVERFLOWS)}")
    if overflow == "inf" and not (has_inf or has_nan):
        raise ValueError(
            f"overflow='inf' needs a format with inf or NaN codes; {name} has neither: "
            "use overflow='saturate'"
        )
    return overflow


def check_rand_bits(rand_bits: int | None, rounding: str) -> int:
    """Number of random bits for stochastic rounding (``None``: full resolution)."""
    if rand_bits is None:
        return DEFAULT_RAND_BITS
    if rounding != "stochastic":
        raise ValueError(f"rand_bits applies to rounding='stochastic' only, not {rounding!r}")
    if isinstance(rand_bits, bool) or not isinstance(rand_bits, int):
        raise TypeError(f"rand_bits must be an int, got {rand_bits!r}")
    if not 1 <= rand_bits <= MAX_RAND_BITS:
        raise ValueError(f"rand_bits={rand_bits} is out of range; allowed: [1, {MAX_RAND_BITS}]")
    return rand_bits
