"""Numerics telemetry: what quantizing a tensor did to it.

For an input ``x``, its quantized value ``y`` and the format's largest magnitudes
(times the scale ``s`` when scaled), over the *finite* elements of ``x``:

* ``underflow = #{x != 0, y == 0} / #{x != 0}``: nonzero inputs flushed to zero;
* ``overflow = #{|x| > max * s} / #{finite}`` (``max_negative`` for negative ``x``):
  inputs beyond the top value, which saturated, became inf/NaN or rounded down onto it;
* ``sqnr_db = 10 log10(sum x**2 / sum (x - y)**2)``: ``+inf`` if exact, ``nan`` if
  ``x`` is all zero, ``-inf`` if a finite input became inf/NaN (the sums are float64:
  magnitudes beyond ``~1e154`` overflow them, giving ``nan`` or ``±inf``);
* ``nonfinite = #{y not finite} / numel`` and ``amax = max |x|``.

:class:`QuantInfo` keeps the counts and sums so that :class:`TelemetryLog` can pool
them over calls exactly (a ratio of sums, not a mean of ratios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .formats import Format

__all__ = ["QuantInfo", "TelemetryLog"]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _sqnr_db(signal: float, noise: float) -> float:
    if signal == 0 or math.isnan(noise) or math.isinf(signal) and math.isinf(noise):
        return math.nan
    if noise == 0 or math.isinf(noise):
        return math.inf if noise == 0 else -math.inf
    return 10 * math.log10(signal / noise)


@dataclass(frozen=True)
class QuantInfo:
    """Statistics of one quantization (see the module docstring for the definitions)."""

    numel: int
    finite: int
    nonzero: int
    underflows: int
    overflows: int
    nonfinite_out: int
    signal: float
    noise: float
    amax: float
    scales: torch.Tensor | None = None

    @property
    def underflow(self) -> float:
        return _ratio(self.underflows, self.nonzero)

    @property
    def overflow(self) -> float:
        return _ratio(self.overflows, self.finite)

    @property
    def nonfinite(self) -> float:
        return _ratio(self.nonfinite_out, self.numel)

    @property
    def sqnr_db(self) -> float:
        return _sqnr_db(self.signal, self.noise)

    @classmethod
    def measure(cls, x: torch.Tensor, y: torch.Tensor, fmt: Format,
                scale: torch.Tensor | None = None) -> QuantInfo:
        """Measure ``y = quantize(x, fmt)``; ``scale`` (broadcastable to ``x``) if scaled.

        A few elementwise passes and reductions in float64, one device sync.
        """
        if x.numel() == 0:
            return cls(0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, scale)
        x64, y64 = x.detach().to(torch.float64), y.detach().to(torch.float64)
        fin = torch.isfinite(x64)
        ax = torch.where(fin, x64.abs(), 0.0)
        nz = ax > 0
        limit = torch.where(x64 < 0, fmt.max_negative, fmt.max)
        if scale is not None:
            limit = limit * scale.to(torch.float64)
        err = torch.where(torch.isfinite(y64), x64 - y64, math.inf)
        stats = torch.stack([
            fin.sum(), nz.sum(), (nz & (y64 == 0)).sum(), (ax > limit).sum(),
            (~torch.isfinite(y64)).sum(), (ax * ax).sum(),
            torch.where(fin, err * err, 0.0).sum(), ax.amax(),
        ]).tolist()
        counts = [int(v) for v in stats[:5]]
        return cls(x.numel(), *counts, *stats[5:], scales=scale)


_STATS = ("underflow", "overflow", "nonfinite", "sqnr_db", "amax")


@dataclass
class _Pool:
    calls: int = 0
    numel: int = 0
    finite: int = 0
    nonzero: int = 0
    underflows: int = 0
    overflows: int = 0
    nonfinite_out: int = 0
    signal: float = 0.0
    noise: float = 0.0
    amax: float = 0.0
    last: QuantInfo | None = None


class TelemetryLog:
    """Accumulates :class:`QuantInfo` per tensor name over calls.

    ``summary()[name]`` holds ``calls``, ``numel`` (of the last call), the pooled
    ``underflow``, ``overflow``, ``nonfinite``, ``sqnr_db`` (ratios of the summed counts
    and energies of all calls since the last reset), ``amax`` (the largest seen) and each
    of these for the last call as ``<stat>_last``.
    """

    def __init__(self) -> None:
        self._pools: dict[str, _Pool] = {}

    def update(self, name: str, info: QuantInfo) -> None:
        p = self._pools.setdefault(name, _Pool())
        p.calls += 1
        p.numel += info.numel
        p.finite += info.finite
        p.nonzero += info.nonzero
        p.underflows += info.underflows
        p.overflows += info.overflows
        p.nonfinite_out += info.nonfinite_out
        p.signal += info.signal
        p.noise += info.noise
        p.amax = max(p.amax, info.amax)
        p.last = info

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, p in self._pools.items():
            assert p.last is not None
            pooled = {
                "underflow": _ratio(p.underflows, p.nonzero),
                "overflow": _ratio(p.overflows, p.finite),
                "nonfinite": _ratio(p.nonfinite_out, p.numel),
                "sqnr_db": _sqnr_db(p.signal, p.noise),
                "amax": p.amax,
            }
            last = {f"{k}_last": float(getattr(p.last, k)) for k in _STATS}
            out[name] = {"calls": float(p.calls), "numel": float(p.last.numel), **pooled, **last}
        return out

    def reset(self) -> None:
        """Forget everything."""
        self._pools.clear()
