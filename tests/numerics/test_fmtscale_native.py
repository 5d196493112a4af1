"""The C++ kernel of block scales in a format (:mod:`lowprec.numerics.fmtscale_native`).

Every case rounds the same tensor twice through ``lp.quantize``: once with the kernel
serving (checked: it ran) and once with it declined, so that :mod:`lowprec.numerics.scaling`'s
torch path gives the expected bits; NVFP4 is also checked against ``test_scaling.py``'s
exact ``Fraction`` reference (which the torch path meets there). Inputs span 60
binades, float32 subnormals, zeros of both signs, infinities and NaNs.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
import torch
from native_paths import awkward, both_paths, same_bits
from test_scaling import as_fractions, mx_data, round_even

import lowprec as lp
from lowprec.numerics import fmtscale_native
from lowprec.numerics.formats import FloatingPoint

MODES = ["nearest", "nearest_away", "toward_zero", "down", "up", "odd", "stochastic"]
#: (elements, scales): NVFP4's, IEEE-style elements (nearest by float addition), fixed
#: point (two's complement: round8's integer nearest), no mantissa (exponent parity)
FORMATS = [("fp4_e2m1", "fp8_e4m3"), ("fp6_e3m2", "fp8_e5m2"), ("fxp12", "fp8_e4m3"),
           (FloatingPoint(3, 0), "fp8_e4m3")]
#: (shape, axis, block): along rows, across rows, ragged, lane tails; threaded ones last
LAYOUTS = [((6, 75), -1, 16), ((70, 37), 0, 16), ((3, 40, 19), 1, 16), ((5, 24), -1, 8),
           ((64, 1100), -1, 16), ((700, 70), 0, 32)]


@pytest.fixture(autouse=True)
def kernel() -> None:
    if fmtscale_native._function() is None:
        pytest.skip("the native kernel could not be built here (no C++ compiler?)")


@pytest.mark.parametrize("elem,scale", FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_same_bits_as_the_torch_path(elem: object, scale: str, mode: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for i, (shape, axis, block) in enumerate(LAYOUTS):
        x = awkward(shape, i, 60)
        for rule in ("even", "floor", "ceil"):
            s = lp.Scaling("block", axis=axis, block=block, scale_format=scale,
                           scale_rounding=rule, tensor_scale=i % 2 == 0,
                           nan_policy="block" if i % 3 == 0 else "local")
            same_bits(*both_paths(fmtscale_native, x, elem, monkeypatch, rounding=mode,
                                  scaling=s))


def test_nvfp4_against_exact_fractions() -> None:
    """The kernel's NVFP4 (float32 results) against test_scaling's exact reference: the
    product ``q s g`` (at most 30 significant bits, exact in float64) rounded once to
    float32."""
    x = mx_data()[4:9, :48]  # blocks of 16: three per row
    y = fmtscale_native.run(x, lp.formats.get("fp4_e2m1"), "nearest",
                            lp.formats.get("fp8_e4m3"), -1, 16, "nearest", 0, False, True,
                            torch.float32, generator=None, rand_bits=None,
                            overflow="saturate")
    assert y is not None
    e2m1, e4m3 = ("fp", 2, 1, "none"), ("fp", 4, 3, "fn")
    rows = as_fractions(x)
    g = round_even(max(abs(v) for row in rows for v in row) / (448 * 6), ("fp", 8, 23, "ieee"))
    want = []  # signed: a negative value rounded to zero is -0 (E2M1 has it)
    for row, floats in zip(rows, x.tolist(), strict=True):
        for b in range(3):
            vals = row[16 * b : 16 * b + 16]
            sb = round_even(max(abs(v) for v in vals) / (6 * g), e4m3) or Fraction(1, 512)
            want += [math.copysign(float(round_even(v / (sb * g), e2m1) * sb * g), f)
                     for v, f in zip(vals, floats[16 * b : 16 * b + 16], strict=True)]
    expected = torch.tensor(want, dtype=torch.float64).float().view(x.shape)
    same_bits(y, expected)


def test_nvfp4_preset_and_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward((32, 64), 5, 60)
    same_bits(*both_paths(fmtscale_native, x, "nvfp4", monkeypatch))
    s = dataclasses.replace(lp.formats.get("nvfp4").scaling, margin=-2)
    same_bits(*both_paths(fmtscale_native, x, "fp4_e2m1", monkeypatch, scaling=s,
                          rounding="stochastic"))


def test_into_out(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward((16, 64), 6, 60)
    expected, _ = both_paths(fmtscale_native, x, "nvfp4", monkeypatch)
    out = torch.empty_like(x)
    assert lp.quantize(x, "nvfp4", out=out) is out
    same_bits(out, expected)
    lp.quantize(x, "nvfp4", out=x)
    same_bits(x, expected)


@pytest.mark.parametrize("case", ["float64", "bfloat16", "telemetry", "history", "channel",
                                  "pow2"])
def test_declines_what_it_does_not_compute(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel declines (or is not asked) the torch path answers alone."""
    served: list[bool] = []
    real = fmtscale_native.run
    monkeypatch.setattr(fmtscale_native, "run",
                        lambda *a, **k: served.append(real(*a, **k) is not None) or None)
    x = awkward((8, 64), 2, 60)
    s = lp.Scaling("block", block=16, scale_format="fp8_e4m3", tensor_scale=True,
                   method="history" if case == "history" else "amax")
    if case == "channel":
        s = dataclasses.replace(s, granularity="channel", axis=0)
    if case == "pow2":
        s = dataclasses.replace(s, scale_format="pow2", tensor_scale=False)
    if case in ("float64", "bfloat16"):
        x = x.to(getattr(torch, case))
    lp.quantize(x, "fp4_e2m1", scaling=s, return_info=case == "telemetry",
                scale_state=s.new_state() if case == "history" else None)
    assert True not in served
