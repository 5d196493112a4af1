"""Bit-exact agreement of ``quantize(..., "nearest")`` with the casts of torch, numpy and
ml_dtypes on more than a million inputs per format.

Inputs (float32): 2**20 uniformly random bit patterns (every binade, subnormals, ±inf and
NaN payloads in proportion), every value of the target format, every exact tie between
consecutive values (and one float32 ulp either side), the overflow boundary, ±0, ±inf, NaN.

Oracle behaviour (torch 2.13, ml_dtypes 0.6; checked here, not assumed):

* ``float32 -> float16 / bfloat16 / float8_e5m2``: IEEE round-to-nearest-even, overflow to
  ±inf (``overflow="inf"``, the default for these ieee formats).
* ``float32 -> float8_e4m3fn``: round-to-nearest-even but **saturating**: every overflow,
  and ±inf, gives ±448; NaN stays NaN.  This is ``overflow="saturate"`` (the default for an
  ``fn`` format).  With ``overflow="inf"`` lowprec must instead give NaN for
  ``|x| > 464`` (464 is the tie between 448 and the unbounded 480, resolved to even 448).
* ``float32 -> ml_dtypes float6_e3m2fn / float6_e2m3fn / float4_e2m1fn``: nearest-even,
  saturating (inf -> ±max), which is lowprec's only mode for ``specials="none"``; these
  types have no NaN, ml_dtypes maps NaN to -0, so NaN is checked separately (NaN -> NaN).
* torch's and ml_dtypes' **float64** casts to 16/8-bit types round twice (via float32), so
  the float64 path of fp16 is compared with numpy's single-rounding float64 -> float16
  cast, and bf16 with the exact reference.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from reference import (
    DETERMINISTIC_MODES,
    extended_values,
    mismatches,
    round_ref,
    round_ref_modes,
    spec_of,
)

import lowprec as lp

# every test on the C++ kernels and on the torch path (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

N_RANDOM = 1 << 20


def _fmt(name: str) -> Any:
    return lp.formats.get(name)


def _random_float32(n: int, seed: int) -> torch.Tensor:
    """``n`` float32 values with uniformly random bit patterns."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
    return bits.to(torch.int32).view(torch.float32)


def _structured_float32(name: str) -> torch.Tensor:
    """Values, exact ties and their float32 neighbours, overflow boundary, specials."""
    spec = spec_of(_fmt(name))
    ext = np.array([float(v) for v in extended_values(spec)])
    mids = (ext[1:] + ext[:-1]) / 2
    with np.errstate(over="ignore"):
        base = np.concatenate([ext, mids, -mids, 1.5 * ext[-1:], 4 * ext[-1:]]).astype(np.float32)
    inf32 = np.float32(np.inf)
    parts = [
        base,
        np.nextafter(base, inf32),
        np.nextafter(base, -inf32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38], np.float32),
    ]
    return torch.from_numpy(np.concatenate(parts))


def _inputs(name: str, seed: int) -> torch.Tensor:
    return torch.cat([_random_float32(N_RANDOM, seed), _structured_float32(name)])


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: same bit pattern, or both NaN (any payload)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    ia = a.view(torch.int32) if a.dtype == torch.float32 else a.view(torch.int64)
    ib = b.view(torch.int32) if b.dtype == torch.float32 else b.view(torch.int64)
    return (ia == ib) | (torch.isnan(a) & torch.isnan(b))


def _report(x: torch.Tensor, got: torch.Tensor, want: torch.Tensor, ok: torch.Tensor) -> str:
    idx = (~ok).nonzero().flatten()[:8].tolist()
    rows = [(x[i].item(), got[i].item(), want[i].item()) for i in idx]
    return f"{int((~ok).sum())} of {ok.numel()} differ; (x, lowprec, oracle): {rows}"


# --------------------------------------------------------------------------------------
# float32 inputs vs torch casts
# --------------------------------------------------------------------------------------

TORCH_CASES = [
    # (preset, torch dtype, overflow argument that matches the torch cast)
    ("fp16", torch.float16, None),
    ("fp16", torch.float16, "inf"),
    ("bf16", torch.bfloat16, None),
    ("fp8_e5m2", torch.float8_e5m2, None),
    ("fp8_e4m3", torch.float8_e4m3fn, None),
    ("fp8_e4m3", torch.float8_e4m3fn, "saturate"),
]


@pytest.mark.parametrize(("name", "dtype", "overflow"), TORCH_CASES)
def test_nearest_matches_torch_cast_float32(
    name: str, dtype: torch.dtype, overflow: str | None
) -> None:
    """quantize(x32) == x32.to(dtype).to(float32) bit for bit (NaN == NaN)."""
    x = _inputs(name, seed=sum(map(ord, name)))
    assert x.numel() > 10**6
    got = lp.quantize(x, _fmt(name), "nearest", overflow=overflow)
    assert got.dtype == torch.float32
    want = x.to(dtype).to(torch.float32)
    ok = _bits_equal(got, want)
    assert bool(ok.all()), f"{name}: " + _report(x, got, want, ok)


def test_torch_e4m3fn_cast_saturates() -> None:
    """Documents the oracle: torch's float8_e4m3fn cast saturates (inf -> 448)."""
    x = torch.tensor([465.0, 1e6, math.inf, -math.inf])
    assert x.to(torch.float8_e4m3fn).float().tolist() == [448.0, 448.0, 448.0, -448.0]


def test_e4m3_overflow_inf_gives_nan() -> None:
    """overflow="inf" on fp8_e4m3: equal to the torch cast where no overflow happens
    (|x| <= 464), NaN where it does (|x| > 464, ±inf, NaN)."""
    x = _inputs("fp8_e4m3", seed=11)
    got = lp.quantize(x, _fmt("fp8_e4m3"), "nearest", overflow="inf")
    over = ~(x.abs() <= 464)
    assert bool(torch.isnan(got[over]).all()), _report(
        x[over], got[over], torch.full_like(got[over], math.nan), torch.isnan(got[over])
    )
    want = x[~over].to(torch.float8_e4m3fn).float()
    ok = _bits_equal(got[~over], want)
    assert bool(ok.all()), _report(x[~over], got[~over], want, ok)
    assert lp.quantize(
        torch.tensor([464.0, -464.0]), _fmt("fp8_e4m3"), overflow="inf"
    ).tolist() == [
        448.0,
        -448.0,
    ]


# --------------------------------------------------------------------------------------
# float64 inputs
# --------------------------------------------------------------------------------------


def _float64_probe(name: str, n_random: int, seed: int) -> np.ndarray:
    """float64 values: random sign/mantissa with exponents spanning the format's range, and
    every exact tie of the format +- 1 and 2 float64 ulps (the inputs on which rounding
    via float32 would go wrong)."""
    spec = spec_of(_fmt(name))
    ext = np.array([float(v) for v in extended_values(spec)])
    pos = ext[ext > 0]
    rng = np.random.default_rng(seed)
    e = rng.integers(math.floor(math.log2(pos[0])) - 3, math.ceil(math.log2(pos[-1])) + 2, n_random)
    m = rng.random(n_random) + 1.0
    rnd = np.ldexp(m, e) * rng.choice([-1.0, 1.0], n_random)
    mids = (ext[1:] + ext[:-1]) / 2
    up1 = np.nextafter(mids, np.inf)
    dn1 = np.nextafter(mids, -np.inf)
    parts = [rnd, ext, mids, up1, dn1, np.nextafter(up1, np.inf), np.nextafter(dn1, -np.inf)]
    parts.append(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e300, -1e300]))
    return np.concatenate(parts)


def test_fp16_float64_single_rounding_matches_numpy() -> None:
    """quantize(x64, fp16) == numpy float64 -> float16 (one rounding), > 10**6 inputs."""
    x = _float64_probe("fp16", N_RANDOM, seed=3)
    with np.errstate(over="ignore"):
        want = torch.from_numpy(x.astype(np.float16).astype(np.float64))
    xt = torch.from_numpy(x)
    got = lp.quantize(xt, _fmt("fp16"))
    assert got.dtype == torch.float64
    ok = _bits_equal(got, want)
    assert bool(ok.all()), _report(xt, got, want, ok)


def test_bf16_float64_single_rounding_matches_reference() -> None:
    """quantize(x64, bf16) == exact reference on ties +- 1, 2 float64 ulps and random x."""
    spec = spec_of(_fmt("bf16"))
    x = _float64_probe("bf16", 20000, seed=4)
    rng = np.random.default_rng(0)
    x = x[rng.permutation(x.size)[:60000]]
    got = lp.quantize(torch.from_numpy(x), _fmt("bf16")).tolist()
    want = [round_ref(v, spec) for v in x.tolist()]
    n, ex = mismatches(x.tolist(), got, want)
    assert n == 0, f"{n} wrong (x, got, want): {ex}"


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_all_modes_16bit_match_reference(name: str) -> None:
    """Every deterministic mode on fp16/bf16, float64 inputs, vs the exact reference."""
    spec = spec_of(_fmt(name))
    x = _float64_probe(name, 6000, seed=5)
    x = x[np.random.default_rng(1).permutation(x.size)[:12000]]
    xs = x.tolist()
    rows = [round_ref_modes(v, spec) for v in xs]
    xt = torch.from_numpy(x)
    for mode in DETERMINISTIC_MODES:
        got = lp.quantize(xt, _fmt(name), mode).tolist()
        n, ex = mismatches(xs, got, [r[mode] for r in rows])
        assert n == 0, f"{name} {mode}: {n} wrong (x, got, want): {ex}"


# --------------------------------------------------------------------------------------
# ml_dtypes fp6 / fp4
# --------------------------------------------------------------------------------------

MLD = {
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}


@pytest.mark.parametrize("name", list(MLD))
def test_nearest_matches_ml_dtypes(name: str) -> None:
    """quantize(x32) == ml_dtypes cast (nearest-even, saturating) for all non-NaN inputs;
    NaN -> NaN (ml_dtypes has no NaN here)."""
    x = _inputs(name, seed=21)
    xn = x.numpy()
    nan = np.isnan(xn)
    with np.errstate(invalid="ignore"):
        want = torch.from_numpy(xn.astype(MLD[name]).astype(np.float32))
    got = lp.quantize(x, _fmt(name))
    ok = _bits_equal(got, want) | torch.from_numpy(nan)
    assert bool(ok.all()), f"{name}: " + _report(x, got, want, ok)
    assert bool(torch.isnan(got[torch.from_numpy(nan)]).all())
    assert got[torch.isinf(x)].abs().max().item() == _fmt(name).max


# --------------------------------------------------------------------------------------
# float16 / bfloat16 inputs
# --------------------------------------------------------------------------------------

# formats whose every value is exactly a float16 and a bfloat16
SUBSET_FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", SUBSET_FORMATS)
def test_half_inputs_match_float32_path(dtype: torch.dtype, name: str) -> None:
    """quantize(x_h) == quantize(x_h.float()).to(dtype) for every float16/bfloat16 pattern
    (the results are exactly representable, so the conversion back is exact)."""
    codes = torch.arange(-(2**15), 2**15, dtype=torch.int64).to(torch.int16)
    xh = codes.view(dtype)
    for mode in DETERMINISTIC_MODES:
        got = lp.quantize(xh, _fmt(name), mode)
        assert got.dtype == dtype
        want = lp.quantize(xh.float(), _fmt(name), mode).to(dtype)
        ok = (got.view(torch.int16) == want.view(torch.int16)) | (got.isnan() & want.isnan())
        assert bool(ok.all()), f"{name} {mode}: " + _report(
            xh.float(), got.float(), want.float(), ok
        )


@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_same_format_is_identity(name: str, dtype: torch.dtype) -> None:
    """Quantising a float16 (bfloat16) tensor to fp16 (bf16) changes no bit (NaN stays NaN)."""
    codes = torch.arange(-(2**15), 2**15, dtype=torch.int64).to(torch.int16)
    xh = codes.view(dtype)
    for mode in DETERMINISTIC_MODES:
        got = lp.quantize(xh, _fmt(name), mode)
        ok = (got.view(torch.int16) == codes) | (got.isnan() & xh.isnan())
        assert bool(ok.all()), f"{name} {mode}: " + _report(xh.float(), got.float(), xh.float(), ok)


# --------------------------------------------------------------------------------------
# fp32
# --------------------------------------------------------------------------------------


def test_fp32_float64_matches_torch_cast() -> None:
    """quantize(x64, fp32) == x64.to(float32) (a single IEEE rounding in torch), on random
    float64 values over the whole float32 range and beyond, and on every kind of tie +- 1
    float64 ulp."""
    rng = np.random.default_rng(8)
    n = N_RANDOM
    e = rng.integers(-160, 140, n)
    x = np.ldexp(rng.random(n) + 1.0, e) * rng.choice([-1.0, 1.0], n)
    f = _random_float32(1 << 16, seed=9).numpy()
    f = f[np.isfinite(f)]
    nxt = np.nextafter(f, np.float32(np.inf))
    mids = (f.astype(np.float64) + nxt.astype(np.float64)) / 2
    mids = mids[np.isfinite(mids)]
    extra = np.array([3.4028235677973366e38, -3.4028235677973366e38, 2.0**-150, -(2.0**-150)])
    x = np.concatenate([x, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), extra])
    xt = torch.from_numpy(x)
    got = lp.quantize(xt, _fmt("fp32"))
    want = xt.to(torch.float32).to(torch.float64)
    ok = _bits_equal(got, want)
    assert bool(ok.all()), _report(xt, got, want, ok)


def test_fp32_float32_is_identity() -> None:
    """Quantising float32 to fp32 changes no bit, in every deterministic mode."""
    x = _random_float32(N_RANDOM, seed=10)
    for mode in DETERMINISTIC_MODES:
        got = lp.quantize(x, _fmt("fp32"), mode)
        ok = _bits_equal(got, x)
        assert bool(ok.all()), f"{mode}: " + _report(x, got, x, ok)


def test_fp32_all_modes_match_reference() -> None:
    """Directed / odd / away modes on fp32 (float64 inputs) vs the reference's closed-form
    path (validated against torch in test_reference_self)."""
    spec = spec_of(_fmt("fp32"))
    rng = np.random.default_rng(12)
    n = 8000
    x = np.ldexp(rng.random(n) + 1.0, rng.integers(-152, 130, n)) * rng.choice([-1.0, 1.0], n)
    f = rng.standard_normal(2000).astype(np.float32)
    mids = (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2
    x = np.concatenate([x, mids, np.nextafter(mids, np.inf), -mids])
    xs = x.tolist()
    rows = [round_ref_modes(v, spec) for v in xs]
    for mode in DETERMINISTIC_MODES:
        got = lp.quantize(torch.from_numpy(x), _fmt("fp32"), mode).tolist()
        n_bad, ex = mismatches(xs, got, [r[mode] for r in rows])
        assert n_bad == 0, f"fp32 {mode}: {n_bad} wrong (x, got, want): {ex}"
