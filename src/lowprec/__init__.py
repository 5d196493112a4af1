"""lowprec: train neural networks in emulated low-precision arithmetic.

A *format* says which values exist (:mod:`lowprec.formats`), a *rounding mode*
how a value picks its neighbour (:mod:`lowprec.rounding`), and
:func:`quantize` applies both to a tensor.
"""

from . import formats, recipes, rounding
from .formats import FixedPoint, FloatingPoint, Format, PowerOfTwo, ScaleExponent
from .quantinfo import QuantInfo, TelemetryLog
from .quantize import quantize
from .recipe import QuantSpec, Recipe, RecipeError
from .scaling import ScaledFormat, ScaleState, Scaling
from .training import prepare, register_layer, telemetry, unprepare, wrap_optimizer

__version__ = "0.1.0"

__all__ = [
    "FixedPoint",
    "FloatingPoint",
    "Format",
    "PowerOfTwo",
    "QuantInfo",
    "QuantSpec",
    "Recipe",
    "RecipeError",
    "ScaleExponent",
    "ScaleState",
    "ScaledFormat",
    "Scaling",
    "TelemetryLog",
    "formats",
    "prepare",
    "quantize",
    "recipes",
    "register_layer",
    "rounding",
    "telemetry",
    "unprepare",
    "wrap_optimizer",
]
