"""Telemetry: QuantInfo definitions on hand-computed cases, edge cases, TelemetryLog pooling."""

from __future__ import annotations

import math

import pytest
import torch

import lowprec as lp
from lowprec.numerics.telemetry import QuantInfo, TelemetryLog

FX = lp.FixedPoint(4, 2)  # k / 4 for k in [-8, 7]: max 1.75, max_negative 2


def test_measure_by_hand() -> None:
    x = torch.tensor([0.0, 0.1, 0.3, 1.0, 1.9, -1.9, -2.5, math.nan, math.inf])
    y, info = lp.quantize(x, FX, return_info=True)
    assert y[:7].tolist() == [0.0, 0.0, 0.25, 1.0, 1.75, -2.0, -2.0]
    assert (info.numel, info.finite, info.nonzero) == (9, 7, 6)
    assert info.underflows == 1 and info.underflow == pytest.approx(1 / 6)  # 0.1 -> 0
    assert info.overflows == 2 and info.overflow == pytest.approx(2 / 7)  # 1.9 and -2.5
    assert info.nonfinite == pytest.approx(1 / 9)  # the NaN stays NaN
    x64 = x.double()[:7]
    signal, noise = float((x64**2).sum()), float(((x64 - y.double()[:7]) ** 2).sum())
    assert info.sqnr_db == pytest.approx(10 * math.log10(signal / noise))
    assert info.amax == pytest.approx(2.5) and info.scales is None


def test_sqnr_edge_cases() -> None:
    exact = lp.quantize(torch.tensor([1.0, -0.5]), FX, return_info=True)[1]
    assert exact.sqnr_db == math.inf and exact.underflow == 0.0
    zero = lp.quantize(torch.zeros(4), FX, return_info=True)[1]
    assert math.isnan(zero.sqnr_db) and zero.underflow == 0.0 and zero.overflow == 0.0
    to_inf = lp.quantize(torch.tensor([1e6, 1.0]), "fp8_e5m2", return_info=True)[1]
    assert to_inf.sqnr_db == -math.inf and to_inf.overflow == 0.5 and to_inf.nonfinite == 0.5
    empty = QuantInfo.measure(torch.empty(0), torch.empty(0), FX)
    assert empty.numel == 0 and math.isnan(empty.sqnr_db) and empty.underflow == 0.0


def test_underflow_counts_only_nonzero_finite_inputs() -> None:
    x = torch.tensor([0.0, -0.0, -0.01, math.nan, -math.inf, 0.5])
    y = torch.tensor([0.0, -0.0, -0.0, math.nan, -2.0, 0.5])
    info = QuantInfo.measure(x, y, FX)
    assert info.nonzero == 2 and info.underflows == 1  # only -0.01 -> -0.0


def test_scale_moves_the_overflow_threshold() -> None:
    x = torch.tensor([[3.0, 3.9], [3.0, 3.9]])
    scale = torch.tensor([[2.0], [1.0]])
    info = QuantInfo.measure(x, x, FX, scale=scale)  # limits 3.5 (row 0) and 1.75 (row 1)
    assert info.overflows == 3 and info.scales is scale


def test_scaled_info_counts_the_top_binade() -> None:
    x = torch.tensor([480.0, 100.0] + [1.0] * 30)  # amax 480: X = 0, 480 > 448 saturates
    y, info = lp.quantize(x, "mxfp8_e4m3", return_info=True)
    assert y[0] == 448 and info.overflows == 1 and info.scales.tolist() == [1.0]


def test_telemetry_log_pools_and_keeps_last() -> None:
    log = TelemetryLog()
    a = lp.quantize(torch.tensor([0.1, 1.0, 3.0]), FX, return_info=True)[1]
    b = lp.quantize(torch.tensor([0.3, 0.5, 0.0, 0.05]), FX, return_info=True)[1]
    log.update("fc1.error", a)
    log.update("fc1.error", b)
    log.update("fc2.weight", b)
    s = log.summary()
    assert set(s) == {"fc1.error", "fc2.weight"}
    e = s["fc1.error"]
    assert e["calls"] == 2 and e["numel"] == 4
    assert e["underflow"] == pytest.approx((1 + 1) / (3 + 3))  # pooled counts, not a mean
    assert e["overflow"] == pytest.approx(1 / 7)
    assert e["underflow_last"] == pytest.approx(1 / 3) and e["amax"] == 3.0
    assert e["amax_last"] == 0.5
    pooled = 10 * math.log10((a.signal + b.signal) / (a.noise + b.noise))
    assert e["sqnr_db"] == pytest.approx(pooled)
    assert all(isinstance(v, float) for v in e.values())
    log.reset()
    assert log.summary() == {}
