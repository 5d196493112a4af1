"""``quantize``: the value a tensor holds once stored in a format with a rounding mode.

The facade over elementwise rounding (:mod:`.cast`, which says how the exact value is
rounded and in which dtype), scaling (:mod:`.scaling`) and telemetry (:mod:`.telemetry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import presets
from .cast import check_inputs, round_measured
from .formats import Format
from .scaling import ScaledFormat, ScaleState, Scaling, scaled_round
from .telemetry import QuantInfo

__all__ = ["RoundTo", "quantize"]


def quantize(
    x: torch.Tensor,
    fmt: Format | str,
    rounding: str = "nearest",
    *,
    generator: torch.Generator | None = None,
    rand_bits: int | None = None,
    overflow: str | None = None,
    scaling: Scaling | None = None,
    scale_state: ScaleState | None = None,
    out: torch.Tensor | None = None,
    return_info: bool = False,
) -> Any:
    """Round ``x`` into ``fmt`` with mode ``rounding``; returns a tensor like ``x``.

    Args:
        x: float16/bfloat16/float32/float64 tensor on any device.
        fmt: a :class:`~lowprec.formats.Format` or a preset name; a
            :class:`~lowprec.scaling.ScaledFormat` (e.g. ``"mxfp8_e4m3"``) brings its scaling.
        rounding: one of :data:`lowprec.rounding.MODES`.
        generator: source of the seed for ``"stochastic"`` (default: torch's global one).
        rand_bits: random bits per stochastic rounding (1..30; default 30, see rounding).
        overflow: ``"saturate"`` or ``"inf"``; default ``"inf"`` if the format has inf.
        scaling: a :class:`~lowprec.scaling.Scaling` mapping the tensor's range onto
            the format before rounding (and back after).
        scale_state: the :class:`~lowprec.scaling.ScaleState` of this tensor, for
            ``scaling`` with ``method="history"`` (``scaling.new_state()``, kept by the
            caller between calls: the config stays stateless).
        out: tensor to write into (may be ``x`` itself); its dtype may differ from x's.
        return_info: also return a :class:`~lowprec.quantinfo.QuantInfo`.
    """
    fmt = presets.get(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a lowprec Format or a preset name, got {fmt!r}")
    if isinstance(fmt, ScaledFormat):  # a preset such as mxfp8_e4m3: element format + scaling
        if scaling is not None:
            raise ValueError(f"{fmt.name} carries its own scaling; do not pass scaling=")
        fmt, scaling = fmt.element, fmt.scaling
    check_inputs(x, out, generator)
    kwargs = {"generator": generator, "rand_bits": rand_bits, "overflow": overflow, "out": out}
    info = None
    if scaling is not None:
        y, info = scaled_round(x, fmt, rounding, scaling, return_info, state=scale_state,
                               **kwargs)
    else:
        y, stats = round_measured(x, fmt, rounding, stats=return_info, **kwargs)
        if return_info:  # measured by the rounding pass itself (lowprec.numerics.kernel)
            info = QuantInfo(x.numel(), stats)
    return (y, info) if return_info else y


@dataclass(frozen=True)
class RoundTo:
    """The rounding ``x -> quantize(x, fmt, rounding, ...)`` as a callable value."""

    fmt: Format | str
    rounding: str = "nearest"
    overflow: str | None = None
    rand_bits: int | None = None
    generator: torch.Generator | None = field(default=None, compare=False)

    @property
    def format(self) -> Format:
        """``fmt`` as a :class:`~lowprec.formats.Format` (a preset name resolved)."""
        return presets.get(self.fmt)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Round ``x`` onto ``fmt``, into ``out`` (which may be ``x``) or a new tensor."""
        return quantize(x, self.fmt, self.rounding, generator=self.generator,
                        rand_bits=self.rand_bits, overflow=self.overflow, out=out)
