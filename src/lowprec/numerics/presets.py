"""Named formats: the standard ones, the study's, and the scaled MX/NVFP4 block formats.

``get(name)`` builds a preset, ``names()`` lists them, ``describe(name)`` says where one
comes from and ``name_of(fmt)`` is the reverse lookup (a preset's name, else the
format's own ``name``). ``register`` adds a preset at run time. This module only
defines; nothing registers itself elsewhere as an import side effect.
"""

from __future__ import annotations

from collections.abc import Callable

from .formats import FixedPoint, FloatingPoint, Format, ParameterError, PowerOfTwo
from .scale_exponent import ScaleExponent
from .scaling import ScaledFormat, Scaling
from .standard import STANDARD

__all__ = [
    "FixedPoint",
    "FloatingPoint",
    "Format",
    "ParameterError",
    "PowerOfTwo",
    "ScaleExponent",
    "describe",
    "get",
    "name_of",
    "names",
    "register",
]

_PRESETS: dict[str, tuple[Callable[[], Format], str]] = dict(STANDARD)
#: presets built so far (formats are frozen, so one instance serves every caller; building
#: one anew took microseconds that every rounding of a small tensor paid)
_BUILT: dict[str, Format] = {}


def register(name: str, factory: Callable[[], Format], doc: str) -> None:
    """Add a named preset (``factory`` builds the format; ``doc`` says where it comes from)."""
    _PRESETS[name] = (factory, doc)
    _BUILT.pop(name, None)


def names() -> list[str]:
    """Names of all presets."""
    return list(_PRESETS)


def get(name: str) -> Format:
    """The preset called ``name`` (see :func:`names`)."""
    if isinstance(name, Format):
        return name
    built = _BUILT.get(name)
    if built is not None:
        return built
    try:
        built = _BUILT[name] = _PRESETS[name][0]()
        return built
    except KeyError:
        raise ValueError(f"unknown format {name!r}; known presets: {', '.join(names())}") from None


def describe(name: str) -> str:
    """One line on where the preset comes from."""
    get(name)
    return _PRESETS[name][1]


def name_of(fmt: Format) -> str:
    """The name of the first preset equal to ``fmt``, else ``fmt.name``."""
    return next((n for n in names() if get(n) == fmt), fmt.name)


# OCP Microscaling v1.0 (blocks of 32, E8M0 scales) and NVIDIA NVFP4

_MX = Scaling(granularity="block", block=32, axis=-1)
for _name, _elem in [("mxfp8_e4m3", "fp8_e4m3"), ("mxfp8_e5m2", "fp8_e5m2"),
                     ("mxfp6_e3m2", "fp6_e3m2"), ("mxfp6_e2m3", "fp6_e2m3"),
                     ("mxfp4_e2m1", "fp4_e2m1")]:
    register(
        _name,
        lambda e=_elem: ScaledFormat(get(e), _MX),
        f"OCP MX v1.0 {_elem} elements, blocks of 32 along the last axis, E8M0 scale "
        "2**(floor(log2 amax) - emax_elem)",
    )
register(
    "mxint8",
    lambda: ScaledFormat(FixedPoint(8, 6), _MX),
    "OCP MX v1.0 INT8: two's complement elements k * 2**-6 (range [-2, 127/64]), blocks of "
    "32 along the last axis, E8M0 scale 2**floor(log2 amax)",
)
register(
    "nvfp4",
    lambda: ScaledFormat(
        get("fp4_e2m1"),
        Scaling(granularity="block", block=16, axis=-1, scale_format="fp8_e4m3",
                scale_rounding="even", tensor_scale=True),
    ),
    "NVIDIA NVFP4: E2M1 elements, blocks of 16 along the last axis, E4M3 block scales "
    "(nearest) under a float32 per-tensor scale amax / (448 * 6)",
)
del _name, _elem
