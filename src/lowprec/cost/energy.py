"""Energy per operation (Horowitz, ISSCC 2014, 45 nm, pJ; the table in STUDY.md): all modelled.

int add 8/16/32 bit 0.03/0.05/0.1; int multiply 8/32 bit 0.2/3.1; float add 16/32 bit
0.4/0.9; float multiply 16/32 bit 1.1/3.7; 64-bit read: SRAM 8 KB 10, 32 KB 20, 1 MB
100, DRAM 1300 to 2600. Rule between and beyond the points: ``E(d)`` is piecewise
linear in a driver ``d`` through ``(0, 0)`` and the table's points, and proportional to
``d`` past the last point::

    integer add, n bits          d = n            (8, 0.03) (16, 0.05) (32, 0.1)
    float add, n-bit format      d = n            (16, 0.4) (32, 0.9)
    integer multiply, a x b bits d = a * b        (64, 0.2) (1024, 3.1)
    float multiply               d = p_a * p_b    (121, 1.1) (576, 3.7)
                                 (p: significand bits with the hidden bit, man + 1;
                                  a fixed-point operand: its word length)
    shift (a product with a power-of-two operand): an integer add of the wider
                                 exponent field of the two operands (fixed point: 1 bit)
    accumulate, per product      one add in the recipe's ``accumulate`` format: an
                                 integer add of its word length (fixed point), a float
                                 add of its width (floating point); fp32 (0.9) when
                                 the recipe has no ``accumulate``. ``accumulate_block``
                                 and ``product`` do not change it: every product is
                                 still added once (in-block adds at that width).
    memory                       bits * E64 / 64; E64 = 10, 20, 100 pJ (SRAM 8 KB,
                                 32 KB, 1 MB) or 1300 pJ (DRAM, the table's low end).
"""

from __future__ import annotations

from ..numerics.formats import FixedPoint, FloatingPoint, Format

__all__ = ["ACCUMULATE_PJ", "FLOAT_ADD", "accumulate_pj", "FLOAT_MUL", "INT_ADD", "INT_MUL",
           "MEMORY_PJ_PER_64_BITS", "bits", "energy", "is_pow2", "product_pj"]

INT_ADD = ((8, 0.03), (16, 0.05), (32, 0.1))
FLOAT_ADD = ((16, 0.4), (32, 0.9))
INT_MUL = ((64, 0.2), (1024, 3.1))
FLOAT_MUL = ((121, 1.1), (576, 3.7))
MEMORY_PJ_PER_64_BITS = {"sram8k": 10.0, "sram32k": 20.0, "sram1m": 100.0, "dram": 1300.0}


def energy(table: tuple[tuple[int, float], ...], d: float) -> float:
    """pJ at driver ``d``: piecewise linear through (0, 0) and ``table``, proportional beyond."""
    x0, y0 = 0.0, 0.0
    for x1, y1 in table:
        if d <= x1:
            return y0 + (y1 - y0) * (d - x0) / (x1 - x0)
        x0, y0 = x1, y1
    return y0 * d / x0


def bits(f: Format | None) -> int:
    return 32 if f is None else f.bits


def is_pow2(f: Format | None) -> bool:
    return isinstance(f, FloatingPoint) and f.man == 0


def _exp_bits(f: Format | None) -> int:
    return 8 if f is None else f.exp if isinstance(f, FloatingPoint) else 1


def _significand(f: Format | None) -> int:
    return 24 if f is None else f.man + 1 if isinstance(f, FloatingPoint) else f.bits


def product_pj(a: Format | None, b: Format | None) -> float:
    """Modelled pJ of one product of operands in formats ``a`` and ``b`` (module doc)."""
    if is_pow2(a) or is_pow2(b):
        return energy(INT_ADD, max(_exp_bits(a), _exp_bits(b)))
    if isinstance(a, FixedPoint) and isinstance(b, FixedPoint):
        return energy(INT_MUL, a.bits * b.bits)
    return energy(FLOAT_MUL, _significand(a) * _significand(b))


def accumulate_pj(acc: Format | None) -> float:
    """Modelled pJ of adding one product into an accumulator in format ``acc`` (module doc)."""
    if isinstance(acc, FixedPoint):
        return energy(INT_ADD, acc.bits)
    return energy(FLOAT_ADD, bits(acc))


#: one fp32 add: the accumulation of a recipe without ``accumulate``
ACCUMULATE_PJ = accumulate_pj(None)
