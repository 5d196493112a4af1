"""lowprec: train neural networks in emulated low-precision arithmetic.

A *format* says which values exist (:mod:`lowprec.formats`), a *rounding mode*
how a value picks its neighbour (:mod:`lowprec.rounding`), and
:func:`quantize` applies both to a tensor. The package is built in floors, each
importing only the ones below it:

* :mod:`lowprec.numerics`: formats, presets, rounding, the kernel, scaling,
  quantize, telemetry, power-of-two products (torch and numpy only);
* :mod:`lowprec.train`: recipes, quantizers, ``prepare``, optimizer wrapping,
  packed saved tensors, data parallelism;
* :mod:`lowprec.cost`: the modelled energy and memory of a recipe;
* :mod:`lowprec.study`: data sets, models, runs, sweeps and reports;
* :mod:`lowprec.cli`: the ``lowprec`` command.
"""

from .numerics import presets as formats
from .numerics import rounding
from .numerics.formats import FixedPoint, FloatingPoint, Format, PowerOfTwo
from .numerics.mac import RoundTo, mac_bmm, mac_conv2d, mac_matmul
from .numerics.quantize import quantize
from .numerics.scale_exponent import ScaleExponent
from .numerics.scaling import ScaledFormat, ScaleState, Scaling
from .numerics.telemetry import QuantInfo, TelemetryLog
from .train import recipes
from .train.prepare import (
    coverage,
    prepare,
    register_layer,
    telemetry,
    unprepare,
    wrap_optimizer,
)
from .train.quantizer import Quantize, Quantizer, quantize_ste
from .train.recipe import QuantSpec, Recipe, RecipeError

__version__ = "0.1.0"

__all__ = [
    "FixedPoint",
    "FloatingPoint",
    "Format",
    "PowerOfTwo",
    "QuantInfo",
    "QuantSpec",
    "Quantize",
    "Quantizer",
    "Recipe",
    "RecipeError",
    "RoundTo",
    "ScaleExponent",
    "ScaleState",
    "ScaledFormat",
    "Scaling",
    "TelemetryLog",
    "coverage",
    "formats",
    "mac_bmm",
    "mac_conv2d",
    "mac_matmul",
    "prepare",
    "quantize",
    "quantize_ste",
    "recipes",
    "register_layer",
    "rounding",
    "telemetry",
    "unprepare",
    "wrap_optimizer",
]
