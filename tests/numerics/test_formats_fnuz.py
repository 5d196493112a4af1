"""The fnuz FP8 types, E8M0 and the P3109 binary8 formats against independent references.

* ``fp8_e4m3fnuz``, ``fp8_e5m2fnuz``, ``fp8_e4m3b11fnuz`` and ``e8m0`` against ml_dtypes'
  casts (``overflow="inf"``: ml_dtypes gives NaN on overflow) and bit patterns;
* ``binary8p1`` .. ``binary8p7`` against gfloat's P3109 formats, every deterministic mode
  and both overflow rules (gfloat's ``sat``);

on 2 * 10**5 values spread over every binade of the format and beyond, with ±0, ±inf, NaN,
huge, tiny, the values themselves and their midpoints (ties), as float32 and float64,
on both backends.
"""

from __future__ import annotations

import gfloat
import ml_dtypes
import numpy as np
import pytest
import torch
from gfloat.formats import format_info_p3109

import lowprec as lp

# every test on the C++ kernels and on the torch path (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

ML_DTYPES = {
    "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "fp8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "fp8_e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "e8m0": ml_dtypes.float8_e8m0fnu,
}
P3109 = [f"binary8p{p}" for p in range(1, 8)]
GFLOAT_MODES = {
    "nearest": gfloat.RoundMode.TiesToEven,
    "nearest_away": gfloat.RoundMode.TiesToAway,
    "toward_zero": gfloat.RoundMode.TowardZero,
    "up": gfloat.RoundMode.TowardPositive,
    "down": gfloat.RoundMode.TowardNegative,
}
BACKENDS = ("eager", "compiled")


def _inputs(fmt: lp.Format) -> np.ndarray:
    """float64 probes: random values over the format's range and 8 binades beyond, the
    values and midpoints of the format, their float64 neighbours, and the specials."""
    g = np.random.default_rng(14)
    vals = fmt.values().numpy()
    lo = int(np.floor(np.log2(fmt.min_subnormal))) - 8
    hi = int(np.ceil(np.log2(fmt.max))) + 8
    n = 200_000
    rand = g.uniform(1, 2, n) * np.exp2(g.integers(lo, hi, n)) * g.choice([-1.0, 1.0], n)
    mids = (vals[1:] + vals[:-1]) / 2
    grid = np.concatenate([vals, mids, -vals, -mids])
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300, 1e-300, -1e-300, 5e-324]
    return np.concatenate([rand, grid, np.nextafter(grid, np.inf), np.nextafter(grid, -np.inf),
                           specials])


def _same(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Bitwise equal, or both NaN."""
    return (got.view(np.int64) == want.view(np.int64)) | (np.isnan(got) & np.isnan(want))


def _quantize(x: np.ndarray, name: str, mode: str, overflow: str) -> np.ndarray:
    y = lp.quantize(torch.from_numpy(x), name, mode, overflow=overflow)
    return y.to(torch.float64).numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_cast_equals_ml_dtypes(name, backend, dtype, monkeypatch):
    """Round to nearest even with overflow to NaN, as ml_dtypes' cast.

    E8M0: ml_dtypes rounds ties away from zero, lowprec's ``nearest_away`` (see
    :func:`test_e8m0_ties_to_even_code`), and rounds every value in ``(2**-127, 2**-126)``
    up to ``2**-126`` (its smallest exponent is handled like a subnormal range); lowprec
    rounds there as everywhere else, to the nearer power of two: those inputs are left
    out and checked separately. ml_dtypes casts float64 through float32 (rounding
    twice), so the float64 inputs are the float32 ones, widened.
    """
    monkeypatch.setenv("LOWPREC_BACKEND", backend)
    with np.errstate(over="ignore"):
        x = _inputs(lp.formats.get(name)).astype(np.float32).astype(dtype)
        want = x.astype(ML_DTYPES[name]).astype(np.float64)
    got = _quantize(x, name, "nearest_away" if name == "e8m0" else "nearest", "inf")
    keep = np.ones_like(x, dtype=bool)
    if name == "e8m0":
        keep = ~((np.abs(x) > 2.0**-127) & (np.abs(x) < 2.0**-126))
        near = np.where(np.abs(x) < 1.5 * 2.0**-127, 2.0**-127, 2.0**-126)
        assert np.array_equal(got[~keep], np.where(x[~keep] > 0, near[~keep], np.nan),
                              equal_nan=True)
    same = _same(got, want) | ~keep
    assert same.all(), [(x[i], got[i], want[i]) for i in np.flatnonzero(~same)[:4]]
    assert not np.signbit(got[got == 0]).any(), "no negative zero"


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_codes_equal_ml_dtypes(name):
    """decode of every code equals ml_dtypes' value of that bit pattern, encode inverts it,
    and values() lists the finite ones."""
    fmt = lp.formats.get(name)
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    ref = codes.view(ML_DTYPES[name]).astype(np.float64)
    got = fmt.decode(torch.from_numpy(codes.astype(np.int64)), torch.float64).numpy()
    assert _same(got, ref).all()
    assert fmt.encode(torch.from_numpy(ref)).tolist() == codes.tolist()  # one NaN code
    assert fmt.values().tolist() == sorted(set(ref[np.isfinite(ref)].tolist()))
    assert fmt.max == float(ml_dtypes.finfo(ML_DTYPES[name]).max)


def test_e8m0_ties_to_even_code():
    """ml_dtypes rounds E8M0 ties (``1.5 * 2**e``) up; ``nearest`` takes the even code
    (``nearest_away`` gives ml_dtypes' ties)."""
    e = np.arange(-126, 127)
    x = torch.from_numpy(1.5 * np.exp2(e))
    want = np.exp2(e + (e % 2 == 0))  # code e + 127 is odd when e is even: go up
    assert lp.quantize(x, "e8m0").numpy().tolist() == want.tolist()
    away = x.numpy().astype(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    assert lp.quantize(x, "e8m0", "nearest_away").numpy().tolist() == away.tolist()


def _gfloat_round(fi: object, x: np.ndarray, mode: str, overflow: str) -> np.ndarray:
    y = gfloat.round_ndarray(fi, x, GFLOAT_MODES[mode], sat=overflow == "saturate")
    return np.asarray(y, dtype=np.float64) + 0.0  # no negative zero in P3109


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", P3109)
def test_p3109_equals_gfloat(name, backend, monkeypatch):
    monkeypatch.setenv("LOWPREC_BACKEND", backend)
    fi = format_info_p3109(8, int(name[-1]))
    x = _inputs(lp.formats.get(name))
    modes = list(GFLOAT_MODES) if backend == "eager" else ["nearest", "toward_zero"]
    for mode in modes:
        for overflow in ("inf", "saturate"):
            for dtype in (np.float64, np.float32):
                with np.errstate(over="ignore"):  # huge float64 values become inf in float32
                    xs = x.astype(dtype)
                got = _quantize(xs, name, mode, overflow)
                xs = xs.astype(np.float64)
                want = _gfloat_round(fi, xs, mode, overflow)
                same = _same(got, want)
                assert same.all(), (mode, overflow, dtype,
                                     [(xs[i], got[i], want[i]) for i in np.flatnonzero(~same)[:4]])
                assert not np.signbit(got[got == 0]).any(), "no negative zero"


@pytest.mark.parametrize("name", P3109)
def test_p3109_codes_equal_gfloat(name):
    fmt = lp.formats.get(name)
    fi = format_info_p3109(8, int(name[-1]))
    codes = np.arange(256)
    ref = np.asarray(gfloat.decode_ndarray(fi, codes), dtype=np.float64)
    got = fmt.decode(torch.from_numpy(codes), torch.float64).numpy()
    assert _same(got, ref + 0.0).all()
    assert fmt.encode(torch.from_numpy(ref)).tolist() == [
        gfloat.encode_float(fi, float(v)) for v in ref
    ]
    assert fmt.max == fi.max and fmt.min_subnormal == fi.smallest_subnormal


@pytest.mark.parametrize("fmt", [lp.ScaleExponent(8, 120), lp.formats.get("binary8p3"),
                                 lp.FloatingPoint(4, 3, bias=9, specials="fnuz")], ids=str)
def test_recipe_tables_round_trip(fmt):
    from lowprec.train.recipe import _format_from_toml, _format_to_toml

    assert _format_from_toml(_format_to_toml(fmt)) == fmt


def test_new_options_validated():
    with pytest.raises(ValueError, match="p3109"):
        lp.FloatingPoint(1, 0, specials="p3109")
    with pytest.raises(ValueError, match="bias"):
        lp.ScaleExponent(8, 2000)
    with pytest.raises(ValueError, match="cannot represent"):
        lp.ScaleExponent().encode(torch.tensor([-1.0]))
    assert lp.ScaleExponent().scaled_by(3).max == 2.0**130
    assert lp.formats.get("binary8p3").scaled_by(1) == lp.FloatingPoint(5, 2, 15, True, "p3109")
