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

The rounding kernel measures these in its own pass (:func:`lowprec.numerics.kernel.telemetry`)
and returns them as a small float64 device tensor; :class:`QuantInfo` reads it (one device
sync) only when a field is first asked for, and :class:`TelemetryLog` pools those tensors on
the device, syncing once per :meth:`TelemetryLog.summary`. It keeps counts and sums so that
pooling over calls is exact (a ratio of sums, not a mean of ratios).
:meth:`QuantInfo.measure` computes the same from ``x`` and ``y`` in separate float64 passes:
the reference the kernel's figures are tested against, and what scaled roundings that work
on a rescaled copy (per channel or block, see :mod:`.scaling`) use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from .formats import Format
from .kernel import STATS, merge_stats

__all__ = ["SUMS", "QuantInfo", "TelemetryLog"]

#: the additive counts and sums of :data:`~lowprec.numerics.kernel.STATS` (all but amax)
SUMS = STATS[:-1]


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
    """Statistics of one quantization (see the module docstring for the definitions).

    ``stats`` is a float64 tensor of :data:`lowprec.numerics.kernel.STATS` (on the input's
    device, ``None`` for an empty input); the fields read it on first use.
    """

    numel: int
    stats: torch.Tensor | None
    scales: torch.Tensor | None = None

    @cached_property
    def _values(self) -> tuple[float, ...]:
        if self.stats is None:
            return (0.0,) * len(STATS)
        return tuple(self.stats.tolist())

    finite = property(lambda self: int(self._values[0]))
    nonzero = property(lambda self: int(self._values[1]))
    underflows = property(lambda self: int(self._values[2]))
    overflows = property(lambda self: int(self._values[3]))
    nonfinite_out = property(lambda self: int(self._values[4]))
    signal = property(lambda self: self._values[5])
    noise = property(lambda self: self._values[6])
    amax = property(lambda self: self._values[7])

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
    def of_sums(cls, sums: dict[str, float]) -> QuantInfo:
        """The figures of pooled counts and sums (:data:`SUMS`; amax unknown: 0)."""
        values = [sums[k] for k in SUMS] + [0.0]
        return cls(int(sums["finite"]), torch.tensor(values, dtype=torch.float64))

    @classmethod
    def measure(cls, x: torch.Tensor, y: torch.Tensor, fmt: Format,
                scale: torch.Tensor | None = None) -> QuantInfo:
        """Measure ``y = quantize(x, fmt)``; ``scale`` (broadcastable to ``x``) if scaled.

        The float64 reference: a few elementwise passes and reductions (no sync).
        """
        if x.numel() == 0:
            return cls(0, None, scale)
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
        ]).to(torch.float64)
        return cls(x.numel(), stats, scales=scale)


_STATS = ("underflow", "overflow", "nonfinite", "sqnr_db", "amax")


@dataclass
class _Pool:
    calls: int = 0
    numel: int = 0
    stats: torch.Tensor | None = None  # pooled: counts and sums added, amax the largest
    last: QuantInfo | None = None


class TelemetryLog:
    """Accumulates :class:`QuantInfo` per tensor name over calls (on the device, no sync).

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
        if info.stats is not None:
            p.stats = info.stats if p.stats is None else merge_stats(p.stats, info.stats)
        p.last = info

    def summary(self) -> dict[str, dict[str, float]]:
        """The pooled and last figures per name (one device sync for all of them)."""
        pools = [(name, p, QuantInfo(p.numel, p.stats)) for name, p in self._pools.items()]
        infos = [i for _, p, pooled in pools for i in (pooled, p.last)
                 if i is not None and i.stats is not None and "_values" not in i.__dict__]
        if infos:  # one transfer for every figure not read yet
            host = torch.stack([i.stats.to(infos[0].stats.device) for i in infos]).tolist()
            for i, values in zip(infos, host, strict=True):
                i.__dict__["_values"] = tuple(values)
        out = {}
        for name, p, pooled in pools:
            assert p.last is not None
            last = {f"{k}_last": float(getattr(p.last, k)) for k in _STATS}
            out[name] = {"calls": float(p.calls), "numel": float(p.last.numel),
                         **{k: float(getattr(pooled, k)) for k in _STATS}, **last,
                         **{k: float(getattr(pooled, k)) for k in SUMS}}
        return out

    def reset(self) -> None:
        """Forget everything."""
        self._pools.clear()
