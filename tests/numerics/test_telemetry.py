"""Telemetry: QuantInfo definitions on hand-computed cases, edge cases, TelemetryLog pooling."""

from __future__ import annotations

import math

import pytest
import torch

import lowprec as lp
from lowprec.numerics.telemetry import QuantInfo, TelemetryLog

# every test on the C++ kernels and on the torch path (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

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


# -- the rounding pass's own telemetry against the float64 reference (QuantInfo.measure) --

def _inputs(kind: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1000, generator=g, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-12, 12, (1000,), generator=g).to(torch.float64))
    if kind == "tiny":
        x = x * 2.0**-30
    elif kind == "huge":
        x = x * 2.0**20
    elif kind == "specials":
        x[::97] = math.nan
        x[5::101] = math.inf
        x[7::103] = -math.inf
        x[9::89] = 0.0
        x[11::83] = -0.0
    return x.to(dtype)


def _same_figures(got: QuantInfo, ref: QuantInfo) -> None:
    fields = ("numel", "finite", "nonzero", "underflows", "overflows", "nonfinite_out", "amax")
    assert {f: getattr(got, f) for f in fields} == {f: getattr(ref, f) for f in fields}
    for f in ("signal", "noise"):  # float64 sums, another order: float64 rounding apart
        a, b = getattr(got, f), getattr(ref, f)
        assert a == pytest.approx(b, rel=1e-12, abs=0) or (math.isnan(a) and math.isnan(b))
    ra, rb = got.sqnr_db, ref.sqnr_db
    assert ra == pytest.approx(rb, rel=1e-9, abs=0) or (math.isnan(ra) and math.isnan(rb))


FAMILIES = [("fp16", "nearest"), ("fp8_e4m3", "stochastic"), ("fp8_e5m2", "up"),
            ("fp12", "stochastic"), ("fxp12", "nearest"), ("int8", "toward_zero"),
            ("pot7", "nearest"), ("fp4_e2m1", "down")]


@pytest.mark.parametrize("kind", ["random", "tiny", "huge", "specials"])
@pytest.mark.parametrize(("name", "mode"), FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_kernel_telemetry_equals_reference(name: str, mode: str, kind: str,
                                           dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    g = torch.Generator().manual_seed(3)
    y, info = lp.quantize(x, name, mode, generator=g, return_info=True)
    _same_figures(info, QuantInfo.measure(x, y, lp.formats.get(name)))
    xin = x.clone()  # in place: measured from x before it is overwritten
    _, inplace = lp.quantize(xin, name, mode, generator=torch.Generator().manual_seed(3),
                             out=xin, return_info=True)
    _same_figures(inplace, info)


@pytest.mark.parametrize("kind", ["random", "huge", "specials"])
@pytest.mark.parametrize(("name", "mode"), [("fp8_e4m3", "nearest"), ("fxp12", "stochastic")])
def test_kernel_telemetry_scaled_per_tensor(name: str, mode: str, kind: str) -> None:
    """Per-tensor power-of-two scaling rounds onto the shifted format in one pass: its
    figures against the reference with the scale moving the overflow threshold."""
    x = _inputs(kind, torch.float32)
    y, info = lp.quantize(x, name, mode, generator=torch.Generator().manual_seed(1),
                          scaling=lp.Scaling(nan_policy="local"), return_info=True)
    _same_figures(info, QuantInfo.measure(x, y, lp.formats.get(name), scale=info.scales))


@pytest.mark.parametrize("kind", ["random", "huge", "specials"])
@pytest.mark.parametrize(("granularity", "axis", "nan_policy"), [
    ("block", -1, "local"), ("block", 0, "block"), ("channel", 1, "local")])
def test_kernel_telemetry_scaled_per_slice(kind: str, granularity: str, axis: int,
                                           nan_policy: str) -> None:
    """Per-block and per-channel scaling measure in their fused pass: the figures against
    the reference with each element's scale moving its overflow threshold (blocks of 16
    along 25 or 40 elements: ragged tails, whose padding counts as no element)."""
    x = _inputs(kind, torch.float32).view(25, 40)
    s = lp.Scaling(granularity, axis=axis, block=16, nan_policy=nan_policy)
    y, info = lp.quantize(x, "fp8_e4m3", "stochastic", scaling=s,
                          generator=torch.Generator().manual_seed(1), return_info=True)
    if granularity == "block":
        scale = info.scales.repeat_interleave(16, axis)[:25, :40]
    else:
        scale = info.scales.view([-1 if d == axis else 1 for d in range(2)])
    _same_figures(info, QuantInfo.measure(x, y, lp.formats.get("fp8_e4m3"), scale=scale))


def test_telemetry_log_syncs_once_and_pools_on_device() -> None:
    """update keeps tensors; summary equals pooling the reference figures."""
    log = TelemetryLog()
    xs = [_inputs(k, torch.float32) for k in ("random", "tiny", "specials")]
    refs = []
    for x in xs:
        y, info = lp.quantize(x, "fp8_e4m3", return_info=True)
        assert "_values" not in info.__dict__  # not read yet: no sync
        log.update("t", info)
        refs.append(QuantInfo.measure(x, y, lp.formats.get("fp8_e4m3")))
    s = log.summary()["t"]
    nonzero = sum(r.nonzero for r in refs)
    assert s["underflow"] == pytest.approx(sum(r.underflows for r in refs) / nonzero)
    assert s["amax"] == max(r.amax for r in refs) and s["amax_last"] == refs[-1].amax
    signal, noise = sum(r.signal for r in refs), sum(r.noise for r in refs)
    assert s["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise), rel=1e-12)
