"""lowprec: train neural networks in emulated low-precision arithmetic.

A *format* says which values exist (:mod:`lowprec.formats`), a *rounding mode*
how a value picks its neighbour (:mod:`lowprec.rounding`), and
:func:`quantize` applies both to a tensor.
"""

from . import formats, rounding
from .formats import FixedPoint, FloatingPoint, Format, PowerOfTwo
from .quantize import quantize
from .scaling import ScaledFormat, ScaleState, Scaling
from .telemetry import QuantInfo, TelemetryLog

__version__ = "0.1.0"

__all__ = [
    "FixedPoint",
    "FloatingPoint",
    "Format",
    "PowerOfTwo",
    "QuantInfo",
    "ScaleState",
    "ScaledFormat",
    "Scaling",
    "TelemetryLog",
    "formats",
    "quantize",
    "rounding",
]
