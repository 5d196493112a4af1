"""Validate ``tests/reference.py`` on its own, without importing lowprec.

Oracles
-------
* torch casts float32 -> float16 / bfloat16 / float8_e4m3fn / float8_e5m2, and float64 ->
  float32, round once to nearest-even (float8_e4m3fn *saturates*: overflow and inf go to
  ±448, so it is compared with ``overflow="saturate"``).
* torch casts *from float64* to 16/8-bit types go through float32 (double rounding, see
  ``test_torch_float64_casts_double_round``), and so do ml_dtypes' float64 casts; the only
  single-rounding float64 -> float16 oracle available is numpy's ``astype(float16)``.
* ml_dtypes ``float6_e3m2fn``, ``float6_e2m3fn``, ``float4_e2m1fn`` (OCP; no inf/NaN): their
  float32 casts round to nearest-even and saturate (inf -> ±max; NaN -> -0, not compared).
* a brute-force model (min/max over the whole value array) for the directed / odd / away
  modes, which shares no code with the bisection in the reference.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from reference import (
    DETERMINISTIC_MODES,
    FixedSpec,
    FloatSpec,
    Neighbours,
    Spec,
    decode_ref,
    encode_ref,
    float_spec,
    max_ref,
    min_value_ref,
    neighbours_analytic,
    neighbours_table,
    pot_spec,
    round_ref,
    round_ref_modes,
    sr_outcomes,
    sr_up_probability,
    values_ref,
)

SPECS: dict[str, Spec] = {
    "fp16": float_spec(5, 10),
    "bf16": float_spec(8, 7),
    "e4m3": float_spec(4, 3, specials="fn"),
    "e5m2": float_spec(5, 2),
    "e3m2": float_spec(3, 2, specials="none"),
    "e2m3": float_spec(2, 3, specials="none"),
    "e2m1": float_spec(2, 1, specials="none"),
}

TORCH_TYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {
    # name: (storage int dtype for .view, float dtype)
    "fp16": (torch.int16, torch.float16),
    "bf16": (torch.int16, torch.bfloat16),
    "e4m3": (torch.uint8, torch.float8_e4m3fn),
    "e5m2": (torch.uint8, torch.float8_e5m2),
}

MLD_TYPES: dict[str, Any] = {
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}

#: Overflow mode that each torch cast implements (found empirically, see module docstring).
TORCH_OVERFLOW = {"fp16": "inf", "bf16": "inf", "e4m3": "saturate", "e5m2": "inf"}


def _same(a: float, b: float) -> bool:
    """Bitwise float equality with every NaN equal (so -0.0 != 0.0)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _mismatches(
    xs: list[float], got: list[float], spec: Spec, overflow: str | None
) -> list[tuple[float, float, float]]:
    """``(x, oracle, reference)`` for every x where the oracle differs from round_ref."""
    out = []
    for x, g in zip(xs, got, strict=True):
        r = round_ref(x, spec, "nearest", overflow)
        if not _same(g, r):
            out.append((x, g, r))
    return out


def _torch_code_values(name: str) -> list[float]:
    idt, fdt = TORCH_TYPES[name]
    bits = 16 if idt == torch.int16 else 8
    codes = torch.arange(1 << bits, dtype=torch.int64)
    if idt == torch.int16:
        codes = torch.where(codes >= 1 << 15, codes - (1 << 16), codes)
    return codes.to(idt).view(fdt).to(torch.float64).tolist()


def _mld_code_values(name: str) -> list[float]:
    spec = SPECS[name]
    codes = np.arange(1 << spec.bits, dtype=np.uint8)
    return codes.view(MLD_TYPES[name]).astype(np.float64).tolist()


# --------------------------------------------------------------------------------------
# value sets and per-code decoding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TORCH_TYPES))
def test_decode_matches_torch(name: str) -> None:
    """Per-code decode == torch's reinterpretation; hence the value sets agree too."""
    spec = SPECS[name]
    tv = _torch_code_values(name)
    bad = [
        c
        for c in range(1 << spec.bits)
        if not _same(tv[c], decode_ref(c, spec))  # type: ignore[arg-type]
    ]
    assert not bad, f"{name}: codes {bad[:10]} differ"
    finite = sorted({Fraction(v) for v in tv if math.isfinite(v)})
    assert tuple(finite) == values_ref(spec)


@pytest.mark.parametrize("name", list(MLD_TYPES))
def test_decode_matches_ml_dtypes(name: str) -> None:
    """Per-code decode == ml_dtypes (fp6/fp4 OCP "fn" types have no inf / NaN)."""
    spec = SPECS[name]
    mv = _mld_code_values(name)
    for c in range(1 << spec.bits):
        assert _same(mv[c], decode_ref(c, spec)), (name, c)  # type: ignore[arg-type]
    assert tuple(sorted({Fraction(v) for v in mv})) == values_ref(spec)
    assert float(max_ref(spec)) == float(ml_dtypes.finfo(MLD_TYPES[name]).max)


def test_encode_inverts_decode() -> None:
    """encode_ref(decode_ref(c)) == c for every non-NaN code of several formats."""
    for spec in [*SPECS.values(), FixedSpec(6, 3), pot_spec(3, 2), float_spec(3, 2, None, False)]:
        for c in range(1 << spec.bits):
            v = decode_ref(c, spec)
            if v is None or math.isnan(v):
                continue
            assert encode_ref(v, spec) == c, (spec, c, v)


def test_known_values() -> None:
    """Spot values quoted in the specification."""
    assert max_ref(SPECS["e4m3"]) == 448
    assert max_ref(SPECS["fp16"]) == 65504
    assert max_ref(SPECS["e5m2"]) == 57344
    assert max_ref(SPECS["e2m1"]) == 6
    assert [float(v) for v in values_ref(pot_spec(3, 2)) if v > 0] == [
        0.0625,
        0.125,
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
    ]
    fx = FixedSpec(6, 3)
    assert values_ref(fx)[0] == Fraction(-4) and values_ref(fx)[-1] == Fraction(31, 8)
    assert min_value_ref(fx) == -4
    nosub = float_spec(3, 2, None, False)
    pos = [v for v in values_ref(nosub) if v > 0]
    assert pos[0] == Fraction(1, 4)  # min_normal 2**(1-3); no subnormals below it


# --------------------------------------------------------------------------------------
# nearest vs torch / numpy / ml_dtypes casts
# --------------------------------------------------------------------------------------


def _probe_points(spec: Spec, n_random: int, rng: np.random.Generator) -> np.ndarray:
    """float64 points: log-uniform magnitudes over the whole range (both signs), every
    midpoint of consecutive values and its float32/float64 neighbours, the values
    themselves, and the overflow boundary."""
    vals = np.array([float(v) for v in values_ref(spec)])
    pos = vals[vals > 0]
    lo, hi = math.log2(pos[0]) - 3, math.log2(pos[-1]) + 2
    mag = np.exp2(rng.uniform(lo, hi, n_random))
    rnd = mag * rng.choice([-1.0, 1.0], n_random)
    ext = np.concatenate([vals, [vals[-1] * 1.25, vals[-1] * 1.0625, -vals[-1] * 1.0625]])
    mids = (ext[1:] + ext[:-1]) / 2
    if len(mids) > 4000:
        mids = rng.choice(mids, 4000, replace=False)
    m32 = mids.astype(np.float32)
    pts = [
        rnd,
        vals,
        mids,
        np.nextafter(mids, np.inf),
        np.nextafter(mids, -np.inf),
        np.nextafter(m32, np.float32(np.inf)).astype(np.float64),
        np.nextafter(m32, np.float32(-np.inf)).astype(np.float64),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan]),
    ]
    return np.concatenate(pts)


@pytest.mark.parametrize("name", list(TORCH_TYPES))
def test_nearest_matches_torch_from_float32(name: str) -> None:
    """round_ref(nearest) == torch float32 -> T cast for ~20k float32 inputs."""
    spec = SPECS[name]
    rng = np.random.default_rng(1234)
    with np.errstate(over="ignore"):
        x32 = _probe_points(spec, 12000, rng).astype(np.float32)
    xs = x32.astype(np.float64).tolist()
    got = torch.from_numpy(x32).to(TORCH_TYPES[name][1]).to(torch.float64).tolist()
    ov = TORCH_OVERFLOW[name]
    bad = _mismatches(xs, got, spec, ov)
    assert not bad, f"{name}: {len(bad)} mismatches, e.g. {bad[:5]}"


def test_nearest_matches_numpy_float16_from_float64() -> None:
    """round_ref(nearest) == numpy float64 -> float16 (single rounding) on ~20k inputs."""
    spec = SPECS["fp16"]
    x = _probe_points(spec, 12000, np.random.default_rng(99))
    with np.errstate(over="ignore"):
        got = x.astype(np.float16).astype(np.float64).tolist()
    bad = _mismatches(x.tolist(), got, spec, None)
    assert not bad, bad[:5]


def test_nearest_matches_float32_cast_analytic_path() -> None:
    """The analytic (non-table) path: fp32 spec vs torch float64 -> float32."""
    spec = float_spec(8, 23)
    rng = np.random.default_rng(5)
    e = rng.uniform(-152, 130, 20000)
    x = np.exp2(e) * rng.choice([-1.0, 1.0], e.size)
    # exact ties of float32 and their float64 neighbours
    f = rng.standard_normal(3000).astype(np.float32)
    mid = (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2
    tiny = np.array([2.0**-150, 2.0**-149 * 1.5, 3 * 2.0**-150, 2.0**-126 - 2.0**-151])
    x = np.concatenate([x, mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), tiny])
    got = torch.from_numpy(x).to(torch.float32).to(torch.float64).tolist()
    bad = _mismatches(x.tolist(), got, spec, None)
    assert not bad, bad[:5]


@pytest.mark.parametrize("name", list(MLD_TYPES))
def test_nearest_matches_ml_dtypes(name: str) -> None:
    """round_ref(nearest, saturate) == ml_dtypes float32 -> fp6/fp4 cast (NaN excluded)."""
    spec = SPECS[name]
    x32 = _probe_points(spec, 12000, np.random.default_rng(7)).astype(np.float32)
    x32 = x32[~np.isnan(x32)]
    got = x32.astype(MLD_TYPES[name]).astype(np.float64).tolist()
    xs = x32.astype(np.float64).tolist()
    bad = _mismatches(xs, got, spec, "saturate")
    assert not bad, bad[:5]


def test_torch_float64_casts_double_round() -> None:
    """Documents why float64 inputs are not compared with torch casts: 1 + 2**-11 + 2**-40
    must round up to 1 + 2**-10 in fp16 (it is above the tie), but torch gives 1.0."""
    x = 1 + 2.0**-11 + 2.0**-40
    assert round_ref(x, SPECS["fp16"]) == 1 + 2.0**-10
    assert float(np.float64(x).astype(np.float16)) == 1 + 2.0**-10
    torch_result = torch.tensor(x, dtype=torch.float64).to(torch.float16).item()
    assert torch_result in (1.0, 1 + 2.0**-10)  # 1.0 on torch 2.13 (double rounding)


# --------------------------------------------------------------------------------------
# all modes vs brute force
# --------------------------------------------------------------------------------------


def _parity(v: float, spec: Spec) -> int:
    return encode_ref(v, spec) & 1


def _in_gap(lo: float, hi: float, spec: Spec) -> bool:
    """The pair is (0, ±min_normal) of a float format without subnormals."""
    if not isinstance(spec, FloatSpec) or spec.subnormals:
        return False
    return {abs(lo), abs(hi)} == {0.0, 2.0**spec.emin}


def _brute(x: float, spec: Spec, vals: np.ndarray, ext: float, mode: str) -> float | None:
    """Brute-force rounding inside [-ext, ext] (ext = one unbounded step beyond max);
    None when the chosen value overflows (checked separately)."""
    lo_ext = -ext if spec.is_float else float(min_value_ref(spec)) - float(spec.scale)  # type: ignore[union-attr]
    allv = np.concatenate([[lo_ext], vals, [ext]])
    below, above = allv[allv <= x], allv[allv >= x]
    lo, hi = below.max(), above.min()
    if lo == hi:
        r = lo
    else:
        small, large = (lo, hi) if x > 0 else (hi, lo)
        dlo, dhi = Fraction(x) - Fraction(lo), Fraction(hi) - Fraction(x)
        if mode == "down":
            r = lo
        elif mode == "up":
            r = hi
        elif mode == "toward_zero":
            r = small
        elif mode in ("nearest", "nearest_away") and dlo != dhi:
            r = lo if dlo < dhi else hi
        elif mode == "nearest_away":
            r = large
        else:
            ends = {lo_ext, ext}
            plo = 1 - _parity(hi, spec) if lo in ends else _parity(lo, spec)
            phi = 1 - _parity(lo, spec) if hi in ends else _parity(hi, spec)
            if _in_gap(lo, hi, spec):  # the (0, min_normal) gap: 0 even, min_normal odd
                plo, phi = (0, 1) if lo == 0 else (1, 0)
            want = 0 if mode == "nearest" else 1
            assert plo != phi
            r = lo if plo == want else hi
    if r > float(max_ref(spec)) or r < float(min_value_ref(spec)):
        return None
    return r


BRUTE_SPECS: list[Spec] = [
    SPECS["e4m3"],
    SPECS["e5m2"],
    SPECS["e2m1"],
    float_spec(3, 2, None, False),
    float_spec(3, 0, None, False, "none"),
    pot_spec(3, 2),
    FixedSpec(6, 3),
    FixedSpec(4, -1),
]


@pytest.mark.parametrize("spec", BRUTE_SPECS, ids=str)
def test_modes_match_brute_force(spec: Spec) -> None:
    """Every deterministic mode == min/max over the value array, on midpoints, eighths of
    gaps, values and float64 neighbours; overflowed results are the documented ±max/inf."""
    vals = np.array([float(v) for v in values_ref(spec)])
    if spec.is_float:
        mx = float(max_ref(spec))
        ext = mx + 2.0 ** (math.floor(math.log2(mx)) - spec.man)  # type: ignore[union-attr]
    else:
        ext = float(max_ref(spec)) + float(spec.scale)  # type: ignore[union-attr]
    grid = np.concatenate([[vals[0] - (vals[1] - vals[0])], vals, [ext]])
    pts = [grid]
    for j in range(1, 8):
        pts.append(grid[:-1] + (grid[1:] - grid[:-1]) * j / 8)
    pts += [np.nextafter(grid, np.inf), np.nextafter(grid, -np.inf)]
    xs = [x for x in np.unique(np.concatenate(pts)).tolist() if -ext <= x <= ext]
    for x in xs:
        got = round_ref_modes(x, spec, "saturate")
        for mode in DETERMINISTIC_MODES:
            want = _brute(x, spec, vals, ext, mode)
            if want is None:
                neg = x < 0
                want = float(min_value_ref(spec) if neg else max_ref(spec))
            if want == 0 and spec.is_float:
                want = math.copysign(0.0, x)
            assert _same(got[mode], want), (spec, x, mode, got[mode], want)


@pytest.mark.parametrize("spec", BRUTE_SPECS, ids=str)
def test_table_and_analytic_neighbours_agree(spec: Spec) -> None:
    """The bisection and the closed-form grid computation give identical neighbours."""
    rng = np.random.default_rng(3)
    vals = np.array([float(v) for v in values_ref(spec)])
    span = float(max(abs(vals[0]), vals[-1]))
    xs = np.concatenate([rng.uniform(-1.2 * span, 1.2 * span, 3000), vals, vals / 3])
    for x in xs.tolist():
        t = neighbours_table(x, spec)
        if t is None:
            continue
        a = neighbours_analytic(Fraction(x), spec)
        assert isinstance(t, Neighbours)
        assert (t.lo, t.hi, t.plo, t.phi) == (a.lo, a.hi, a.plo, a.phi), (spec, x)


# --------------------------------------------------------------------------------------
# overflow and stochastic helpers
# --------------------------------------------------------------------------------------


def test_overflow_examples_from_spec() -> None:
    """fp16: 65519.99 -> 65504, 65520 -> inf; e4m3fn: 464 -> 448, 465 -> NaN (overflow=inf);
    directed modes give ±max instead of inf."""
    fp16, e4 = SPECS["fp16"], SPECS["e4m3"]
    assert round_ref(65519.99, fp16) == 65504
    assert round_ref(65520.0, fp16) == math.inf
    assert round_ref(-65520.0, fp16) == -math.inf
    assert round_ref(1e9, fp16, "toward_zero") == 65504
    assert round_ref(1e9, fp16, "odd") == 65504
    assert round_ref(1e9, fp16, "down") == 65504
    assert round_ref(1e9, fp16, "up") == math.inf
    assert round_ref(-1e9, fp16, "up") == -65504
    assert round_ref(-1e9, fp16, "down") == -math.inf
    assert round_ref(1e9, fp16, "nearest", "saturate") == 65504
    assert round_ref(464.0, e4, "nearest", "inf") == 448
    assert math.isnan(round_ref(465.0, e4, "nearest", "inf"))
    assert round_ref(465.0, e4) == 448  # default overflow for fn is saturate
    assert round_ref(math.inf, fp16) == math.inf
    assert math.isnan(round_ref(math.inf, e4, "nearest", "inf"))
    assert round_ref(-math.inf, e4) == -448
    fx = FixedSpec(6, 3)
    assert round_ref(100.0, fx) == 3.875 and round_ref(-100.0, fx) == -4.0
    with pytest.raises(ValueError):
        round_ref(1.0, fx, "nearest", "inf")


def test_signed_zero() -> None:
    """Underflow to zero keeps the sign of x for floats."""
    fp16 = SPECS["fp16"]
    r = round_ref(-(2.0**-30), fp16, "nearest")
    assert r == 0 and math.copysign(1.0, r) < 0
    r = round_ref(-(2.0**-30), fp16, "up")
    assert r == 0 and math.copysign(1.0, r) < 0
    assert round_ref(-(2.0**-30), fp16, "down") == -(2.0**-24)
    assert round_ref(2.0**-30, fp16, "odd") == 2.0**-24


def test_sr_probability() -> None:
    """p = (|x|-small)/(large-small) exactly, so small + p (large-small) == |x|; rand_bits
    truncation floor(p 2**k)/2**k (k=2: 0.3 -> 1/4, 0.2 -> 0, 0.99 -> 3/4)."""
    e4 = SPECS["e4m3"]
    for x in [1.03, -1.03, 0.3, 2.0**-12, 300.0, 450.0, -0.001]:
        p = sr_up_probability(x, e4)
        lo, hi = sr_outcomes(x, e4, "saturate")
        if lo == hi:
            continue
        assert Fraction(abs(lo)) + p * (Fraction(abs(hi)) - Fraction(abs(lo))) == abs(Fraction(x))
    one = Fraction(1)
    step = Fraction(1, 8)  # e4m3 gap in [1, 2)
    for p, want in [(0.3, Fraction(1, 4)), (0.2, Fraction(0)), (0.99, Fraction(3, 4))]:
        x = float(one + step * Fraction(p))
        assert sr_up_probability(x, e4, rand_bits=2) == want
    assert sr_up_probability(1.0, e4) == 0
    assert sr_outcomes(450.0, e4, "inf")[1] != sr_outcomes(450.0, e4, "inf")[1]  # NaN
    assert sr_outcomes(-450.0, SPECS["fp16"]) == (-450.0, -450.0)
