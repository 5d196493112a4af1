"""Scaling: bit-exact OCP MX / NVFP4 against a Fraction reference, every granularity and axis,
special slices, delayed (history) scaling, unbiased stochastic rounding and parameter errors;
each on both paths of block scaling (the C++ kernels and the torch path).

The reference below is written from the OCP Microscaling Formats v1.0 definitions, not from
``lowprec.scaling``: a block's shared exponent is ``X = floor(log2(max |v|)) - emax_elem``
clamped to the E8M0 range ``[-127, 127]``, and each element is ``v / 2**X`` rounded to
nearest-even into the element format, saturating at its largest magnitude.

Conventions where other implementations differ (from what we know of them; we could not run
them here):

* microxcaling's default element rounding (``round="nearest"``) breaks ties away from zero;
  we follow OCP's roundTiesToEven (``rounding="nearest_away"`` gives microxcaling's).
* microxcaling turns a shared exponent above E8M0's range into a NaN scale; OCP's rule only
  arises for float64 inputs here, and we clamp to 127 and saturate (documented). A NaN or inf
  in a block makes the whole block NaN only under ``nan_policy="block"`` (microxcaling and
  OCP's NaN scale); by default NaN stays local.
* torchao's RCEIL scale mode corresponds to our ``scale_rounding="ceil"``; its FLOOR to our
  default ``"floor"``; both keep element subnormals, as do we.
* MXINT8: microxcaling clamps elements to the symmetric range ``±127/64``; we use the full
  two's complement ``FixedPoint(8, 6)`` range ``[-2, 127/64]`` that OCP lists.
* An all-zero block gets the smallest scale ``2**-127`` (as microxcaling's amax of zero gives
  after clamping); its elements are zero whatever the scale.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from fractions import Fraction

import pytest
import torch

import lowprec as lp
from lowprec.numerics.cast import round_to_format
from lowprec.numerics.formats import FixedPoint, FloatingPoint
from lowprec.numerics.scaling import _traced_tensor_round

# every test on the C++ kernels and on the torch path (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")


# ------------------------------------------------------------------------------------------
# independent reference (Fractions)
# ------------------------------------------------------------------------------------------


def floor_log2(a: Fraction) -> int:
    e = a.numerator.bit_length() - a.denominator.bit_length()
    return e if Fraction(2) ** e <= a else e - 1


def fp_max(exp: int, man: int, specials: str) -> Fraction:
    bias = 2 ** (exp - 1) - 1
    top = 2**exp - 1 - bias - (specials == "ieee")
    frac = 2**man - 1 - (specials == "fn")
    return (1 + Fraction(frac, 2**man)) * Fraction(2) ** top


def round_even(r: Fraction, spec: tuple) -> Fraction:
    """``r`` to nearest-even in ``("fp", exp, man, specials)``/``("int", wl, fl)``, saturating."""
    if spec[0] == "int":
        _, wl, fl = spec
        k = round(r * 2**fl)  # Fraction rounding is half-to-even
        return Fraction(min(max(k, -(2 ** (wl - 1))), 2 ** (wl - 1) - 1), 2**fl)
    _, exp, man, specials = spec
    a = abs(r)
    if a == 0:
        return Fraction(0)
    e = max(floor_log2(a), 2 - 2 ** (exp - 1))
    q = Fraction(2) ** (e - man)
    v = min(round(a / q) * q, fp_max(exp, man, specials))
    return v if r > 0 else -v


MX = {  # preset: (element spec, emax_elem)
    "mxfp8_e4m3": (("fp", 4, 3, "fn"), 8),
    "mxfp8_e5m2": (("fp", 5, 2, "ieee"), 15),
    "mxfp6_e3m2": (("fp", 3, 2, "none"), 4),
    "mxfp6_e2m3": (("fp", 2, 3, "none"), 2),
    "mxfp4_e2m1": (("fp", 2, 1, "none"), 2),
    "mxint8": (("int", 8, 6), 0),
}


def mx_reference(row: list[float], spec: tuple, emax: int, block: int = 32) -> list[Fraction]:
    out = []
    for i in range(0, len(row), block):
        vals = [Fraction(v) for v in row[i : i + block]]
        amax = max(abs(v) for v in vals)
        x = -127 if amax == 0 else min(max(floor_log2(amax) - emax, -127), 127)
        out += [round_even(v / Fraction(2) ** x, spec) * Fraction(2) ** x for v in vals]
    return out


def as_fractions(t: torch.Tensor) -> list[list[Fraction]]:
    return [[Fraction(v) for v in row] for row in t.double().tolist()]


def mx_data(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows of 75 elements (two full blocks and a ragged tail of 11), ranged per block."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 75, generator=g, dtype=torch.float64)
    exps = torch.randint(-60, 60, (10, 3), generator=g).repeat_interleave(32, 1)[:, :75]
    x = x * torch.pow(2.0, exps.double())
    x[0] = 0.0  # all-zero blocks
    x[1, :32] = 0.0
    x[1, 40] = -0.0
    x[2] *= 2.0**-90  # float32 subnormals: the scale exponent clamps at -127
    x[3] = x[3] / x[3].abs().max() * 3.0 * 2.0**125  # near the top of float32
    x[4, :8] = torch.tensor([4.0, 2.5, 0.25, 5.0, 1.25, -2.5, 0.75, -1.75])  # ties for E2M1
    x[5, :32] = torch.linspace(-2, 1.99, 32)  # MXINT8's -2 and its saturation
    return x.to(dtype)


@pytest.mark.parametrize("name", list(MX))
def test_mx_presets_bit_exact(name: str) -> None:
    spec, emax = MX[name]
    x = mx_data()
    y = lp.quantize(x, name)
    assert y.dtype == torch.float32
    for row, got in zip(x.tolist(), as_fractions(y), strict=True):
        assert got == mx_reference(row, spec, emax)


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8"])
def test_mx_float64_beyond_e8m0_range(name: str) -> None:
    """float64 blocks whose exponent leaves [-127, 127] saturate (huge) or flush (tiny)."""
    spec, emax = MX[name]
    x = torch.tensor([[1e300, -3e299, 1.0, 0.0], [1e-300, 3e-301, -1e-299, 2e-300]],
                     dtype=torch.float64)
    y, info = lp.quantize(x, name, return_info=True)
    assert info.scales.tolist() == [[2.0**127], [2.0**-127]]
    assert y[1].eq(0).all() and y[0, 2] == 0  # 1.0 is far below its block's range
    assert info.underflows == 5 and info.overflows == 2
    for row, got in zip(x.tolist(), as_fractions(y), strict=True):
        assert got == mx_reference(row, spec, emax)


def test_mx_conventions() -> None:
    """Ties to even (OCP), not microxcaling's default ties-away; MXINT8 reaches -2."""
    x = torch.tensor([4.0, 2.5, 0.25, 5.0, 1.25])  # amax 4: X = 0 for E2M1
    assert lp.quantize(x, "mxfp4_e2m1").tolist() == [4.0, 2.0, 0.0, 4.0, 1.0]
    away = lp.quantize(x, "mxfp4_e2m1", "nearest_away")
    assert away.tolist() == [4.0, 3.0, 0.5, 6.0, 1.5]
    y, info = lp.quantize(torch.tensor([-1.999, 1.0]), "mxint8", return_info=True)
    assert y.tolist() == [-2.0, 1.0] and info.scales.tolist() == [1.0]
    zero = lp.quantize(torch.zeros(3), "mxfp8_e4m3", return_info=True)[1]
    assert zero.scales.tolist() == [2.0**-127]


def test_nvfp4_two_level() -> None:
    """NVFP4: fp32 tensor scale g, E4M3 block scales (nearest), E2M1 elements."""
    x = mx_data()[4:9, :48]  # blocks of 16: three per row
    exact = torch.empty_like(x, dtype=torch.float64)  # s * g has up to 28 bits: keep them
    y, info = lp.quantize(x, "nvfp4", out=exact, return_info=True)
    e2m1, e4m3 = ("fp", 2, 1, "none"), ("fp", 4, 3, "fn")
    rows = as_fractions(x)
    amax_t = max(abs(v) for row in rows for v in row)
    g = round_even(amax_t / (448 * 6), ("fp", 8, 23, "ieee"))
    for r, (row, got) in enumerate(zip(rows, as_fractions(y), strict=True)):
        for b in range(3):
            vals = row[16 * b : 16 * b + 16]
            s = round_even(max(abs(v) for v in vals) / (6 * g), e4m3) or Fraction(1, 512)
            assert Fraction(info.scales[r, b].item()) == s * g
            assert got[16 * b : 16 * b + 16] == [round_even(v / (s * g), e2m1) * s * g
                                                for v in vals]


# ------------------------------------------------------------------------------------------
# scale rules
# ------------------------------------------------------------------------------------------


def reference_exponent(amax: Fraction, fmax: Fraction, emax: int, rounding: str,
                       margin: int = 0) -> int:
    """The scale exponent of ``amax`` by the rule ``rounding``, plus ``margin``, clamped."""
    if amax == 0:
        return -127
    if rounding == "floor":
        x = floor_log2(amax) - emax
    else:
        target = amax / fmax
        lo = floor_log2(target)
        if rounding == "ceil":
            x = lo if Fraction(2) ** lo == target else lo + 1
        else:  # nearest power of two, tie to the even exponent
            d_lo, d_hi = target - Fraction(2) ** lo, Fraction(2) ** (lo + 1) - target
            x = lo if d_lo < d_hi or d_lo == d_hi and lo % 2 == 0 else lo + 1
    return min(max(x + margin, -127), 127)


def _check_pow2_exponents(f: lp.Format, dtype: torch.dtype, rounding: str) -> None:
    """Channel scaling of a vector (one slice per element) in ``dtype``: every exponent
    against Fractions, subnormal amaxes included. float32 takes the 32-bit-lane exponent
    where the format's ``emax`` exceeds the margin."""
    g = torch.Generator().manual_seed(2)
    amax = torch.exp2(torch.rand(300, generator=g, dtype=torch.float64) * 80 - 40)
    ties = torch.tensor([1.5, 0.75, 3.0, 1.0, 2.0, 0.5], dtype=torch.float64) * f.max
    tiny = torch.tensor([2.0**-149, 3 * 2.0**-140, 2.0**-127, 1.5 * 2.0**-127, 0.75 * 2.0**-126,
                         (1 - 2.0**-23) * 2.0**-126, 2.0**-126], dtype=torch.float64)
    x = torch.cat([amax.float().double(), ties, tiny, torch.zeros(1, dtype=torch.float64)])
    s = lp.Scaling("channel", axis=0, scale_rounding=rounding,
                   margin=1 if rounding == "ceil" else 0)
    y, info = lp.quantize(x.to(dtype), f, scaling=s, return_info=True)
    emax = math.frexp(f.max)[1] - 1
    want = [reference_exponent(Fraction(a), Fraction(f.max), emax, rounding, s.margin)
            for a in x.tolist()]
    assert [int(math.log2(v)) for v in info.scales.tolist()] == want
    if rounding == "ceil":
        assert info.overflow == 0.0


#: a fixed-point format whose largest value is below 1 (emax = -6): subnormal amaxes get
#: scale exponents above the clamp at -127
SMALL_FXP = lp.FixedPoint(8, 12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rounding", ["floor", "ceil", "even"])
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp4_e2m1", "fxp12", "int8", SMALL_FXP])
def test_pow2_exponent_rules(rounding: str, fmt: str | lp.Format, dtype: torch.dtype) -> None:
    """One slice per element (channel scaling of a vector): every exponent against Fractions."""
    _check_pow2_exponents(lp.formats.get(fmt), dtype, rounding)


@pytest.mark.parametrize(("rounding", "fmt"), [("ceil", "int8"), ("even", "fp4_e2m1")])
def test_pow2_exponent_rules_compiled(monkeypatch, rounding: str, fmt: str) -> None:
    """The same by the compiled fused kernel, whose exponents of float32 amaxes run on
    32-bit lanes (inductor's vector shifts; subnormal amaxes clamped without normalising)."""
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")
    _check_pow2_exponents(lp.formats.get(fmt), torch.float32, rounding)


@pytest.mark.parametrize("rounding", ["floor", "ceil", "even"])
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp12", "fxp12"])
def test_per_tensor_exponent_rules(rounding: str, fmt: str) -> None:
    """Per-tensor scaling takes its exponent with scalar arithmetic, or on the device (a
    delayed scaling's history; what ``torch.compile`` traces): every tensor's exponent
    against Fractions (amax on either sign, ties, zero, subnormal, beyond the clamp)."""
    f = lp.formats.get(fmt)
    g = torch.Generator().manual_seed(3)
    amaxes = torch.exp2(torch.rand(60, generator=g, dtype=torch.float64) * 80 - 40).float()
    ties = [1.5, 0.75, 3.0, 1.0, 2.0, 0.5]
    emax = math.frexp(f.max)[1] - 1
    s = lp.Scaling(scale_rounding=rounding, margin=-1 if rounding == "even" else 0)
    hist = dataclasses.replace(s, method="history")
    for i, a in enumerate([*amaxes.tolist(), *(t * f.max for t in ties), 0.0, 2.0**-140,
                           2.0**-149, 3 * 2.0**-130]):
        x = torch.tensor([0.25 * a, -a if i % 2 else a, 0.0])
        want = reference_exponent(Fraction(a), Fraction(f.max), emax, rounding, s.margin)
        _, info = lp.quantize(x, f, scaling=s, return_info=True)
        _, delayed = lp.quantize(x, f, scaling=hist, scale_state=hist.new_state(),
                                 return_info=True)
        _, traced = _traced_tensor_round(x, f, "nearest", s, True, None, generator=None,
                                         rand_bits=None, overflow=None, dtype=x.dtype)
        for got in (info, delayed, traced):
            assert math.log2(float(got.scales)) == want, (a, rounding)


@pytest.mark.parametrize("rounding", ["floor", "ceil", "even"])
def test_non_pow2_scale_format(rounding: str) -> None:
    """Scales rounded into E4M3 in the documented direction; elements exact given the scale."""
    e4m3 = lp.formats.get("fp8_e4m3")
    x = mx_data()[5:9]
    s = lp.Scaling("block", block=16, scale_format=e4m3, scale_rounding=rounding)
    y, info = lp.quantize(x, "fp4_e2m1", scaling=s, return_info=True)
    grid = sorted(Fraction(v) for v in e4m3.values().tolist() if v > 0)
    for r, row in enumerate(as_fractions(x)):
        for b in range(info.scales.shape[1]):
            vals = row[16 * b : 16 * b + 16]
            sc = Fraction(info.scales[r, b].item())
            target = max(abs(v) for v in vals) / 6
            assert sc in grid
            below, above = [v for v in grid if v <= target], [v for v in grid if v >= target]
            if rounding == "floor":
                assert sc == (below[-1] if below else grid[0])
            elif rounding == "ceil":
                assert sc == (above[0] if above else grid[-1])
            else:
                assert abs(sc - target) == min(abs(v - target) for v in grid)
            got = [Fraction(v) for v in y[r, 16 * b : 16 * b + 16].tolist()]
            assert got == [round_even(v / sc, ("fp", 2, 1, "none")) * sc for v in vals]
    fp32 = lp.quantize(x, "fp4_e2m1", scaling=lp.Scaling(scale_format="fp32"), return_info=True)
    assert fp32[1].scales.item() == float(torch.tensor(x.abs().max().item() / 6).float())


# ------------------------------------------------------------------------------------------
# granularities, axes, layouts
# ------------------------------------------------------------------------------------------


def test_channel_equals_per_slice_tensor_scaling() -> None:
    x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(3)) * 10.0 ** torch.arange(
        -3, 4
    ).float()
    for axis in range(-3, 3):
        y, info = lp.quantize(x, "fp6_e3m2", scaling=lp.Scaling("channel", axis=axis),
                              return_info=True)
        assert info.scales.shape == (x.shape[axis],)
        for i in range(x.shape[axis]):
            want = lp.quantize(x.select(axis, i), "fp6_e3m2", scaling=lp.Scaling())
            assert torch.equal(y.select(axis, i), want)


@pytest.mark.parametrize("block", [1, 5, 8, 13])
def test_blocks_along_any_axis(block: int) -> None:
    """Blocks along axis a = blocks along the last axis of x.movedim(a, -1), ragged or not."""
    x = torch.randn(6, 10, 9, generator=torch.Generator().manual_seed(4)) * 100
    for axis in (0, 1, -1):
        s = lp.Scaling("block", block=block, axis=axis)
        y, info = lp.quantize(x, "fp8_e5m2", scaling=s, return_info=True)
        moved = x.movedim(axis, -1).contiguous()
        want = lp.quantize(moved, "fp8_e5m2", scaling=lp.Scaling("block", block=block))
        assert torch.equal(y, want.movedim(-1, axis))
        shape = list(x.shape)
        shape[axis] = -(-x.shape[axis] // block)
        assert list(info.scales.shape) == shape


def test_block_scales_layout_and_tail() -> None:
    x = torch.arange(1.0, 71.0).reshape(2, 35)
    y, info = lp.quantize(x, "fp8_e4m3", scaling=lp.Scaling("block", block=16), return_info=True)
    assert info.scales.shape == (2, 3)
    tail = lp.quantize(x[:, 32:], "fp8_e4m3", scaling=lp.Scaling("channel", axis=0))
    assert torch.equal(y[:, 32:], tail)  # the ragged tail of 3 is a block of its own
    col, info0 = lp.quantize(x.T.contiguous(), "fp8_e4m3",
                             scaling=lp.Scaling("block", block=16, axis=0), return_info=True)
    assert torch.equal(col, y.T) and info0.scales.shape == (3, 2)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
def test_transposed_layout(granularity: str) -> None:
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(5)).exp()
    s = lp.Scaling(granularity, block=8, axis=-1)
    y = lp.quantize(w, "fp4_e2m1", scaling=s)
    assert torch.equal(lp.quantize(w.T, "fp4_e2m1", scaling=s.transposed()), y.T)
    s0 = lp.Scaling(granularity, block=8, axis=0)
    assert torch.equal(lp.quantize(w.T, "fp4_e2m1", scaling=s0.transposed(0, 1)),
                       lp.quantize(w, "fp4_e2m1", scaling=s0).T)
    if granularity != "tensor":
        with pytest.raises(ValueError, match="axis"):
            s0.transposed()


def test_float32_path_equals_float64_path() -> None:
    """The float32 shortcut gives the bits the float64 path gives (nearest and stochastic)."""
    x = mx_data()
    for mode in ("nearest", "stochastic"):
        for fmt in ("fxp12", "fp8_e4m3"):
            s = lp.Scaling("block", block=16)
            a = lp.quantize(x, fmt, mode, scaling=s, generator=torch.Generator().manual_seed(0))
            b = lp.quantize(x.double(), fmt, mode, scaling=s,
                            generator=torch.Generator().manual_seed(0))
            assert torch.equal(a, b.float())


def test_half_precision_inputs_and_no_grad() -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(9), requires_grad=True)
    for dt in (torch.float16, torch.bfloat16):
        xh = x.detach().to(dt)
        y = lp.quantize(xh, "mxfp4_e2m1")
        assert y.dtype == dt and torch.equal(y.float(), lp.quantize(xh.float(), "mxfp4_e2m1"))
    assert not lp.quantize(x, "mxfp8_e4m3").requires_grad  # a rounding, like unscaled


def test_directed_modes_keep_tiny_values() -> None:
    """Modes that need exact tiny values (up, odd) work in float64: no float32 flush."""
    x = torch.tensor([2.0**-149, 1.0, -(2.0**-149)] + [0.0] * 5)
    y = lp.quantize(x, "fp8_e4m3", "up", scaling=lp.Scaling())  # X = -8: 2**-141 up to 2**-17
    assert y.tolist()[:3] == [2.0**-17, 1.0, -0.0]


# ------------------------------------------------------------------------------------------
# special slices
# ------------------------------------------------------------------------------------------


def test_zero_nan_inf_slices() -> None:
    nan, inf = math.nan, math.inf
    x = torch.tensor([[0.0, -0.0, 0.0, 0.0], [1.0, nan, 3.0, -2.0], [inf, 1.0, -0.5, 2.0],
                      [-inf, nan, 1e30, 4.0]])
    s = lp.Scaling("channel", axis=0)
    y, info = lp.quantize(x, "fp8_e4m3", scaling=s, return_info=True)
    assert torch.signbit(y[0]).tolist() == [False, True, False, False] and y[0].eq(0).all()
    assert info.scales.tolist()[:3] == [2.0**-127, 2.0**-7, 2.0**-7]
    assert torch.isnan(y[1, 1]) and y[1].tolist()[::2] == [1.0, 3.0]
    assert y[2].tolist() == [448 * 2.0**-7, 1.0, -0.5, 2.0]  # inf saturates (default)
    assert y[3, 2].item() == pytest.approx(1e30, rel=2**-4) and y[3, 0] == -448 * 2.0**91
    inf_mode = lp.quantize(x, "fp8_e5m2", scaling=s, overflow="inf")
    assert inf_mode[2, 0] == inf and inf_mode[3, 0] == -inf
    blk, binfo = lp.quantize(x, "fp8_e4m3", scaling=lp.Scaling("channel", axis=0,
                                                                nan_policy="block"),
                             return_info=True)
    assert torch.isnan(blk[1:]).all() and torch.equal(blk[0], y[0])
    assert torch.isnan(binfo.scales[1:]).all()


def test_empty_and_scalar() -> None:
    e = lp.quantize(torch.empty(0, 4), "mxfp8_e4m3")
    assert e.shape == (0, 4)
    assert lp.quantize(torch.tensor(3.3), "fp4_e2m1", scaling=lp.Scaling()).item() == 3.0
    with pytest.raises(ValueError, match="axis=-1 is out of range"):
        lp.quantize(torch.tensor(3.3), "fp4_e2m1", scaling=lp.Scaling("block"))


# ------------------------------------------------------------------------------------------
# information kept, unbiasedness
# ------------------------------------------------------------------------------------------


def test_per_tensor_scaling_keeps_tiny_gradients() -> None:
    """Gradients around 1e-6 in FixedPoint(12, 8) (spacing 2**-8): lost without a scale."""
    g = 1e-6 * torch.randn(4096, generator=torch.Generator().manual_seed(6))
    gen = torch.Generator().manual_seed(0)
    _, plain = lp.quantize(g, "fxp12", return_info=True)
    assert plain.underflow == 1.0 and plain.sqnr_db == 0.0  # all flushed: noise = signal
    _, plain_sr = lp.quantize(g, "fxp12", "stochastic", generator=gen, return_info=True)
    assert plain_sr.underflow > 0.99 and plain_sr.sqnr_db < 0  # rare 2**-8 jumps: worse
    for mode in ("nearest", "stochastic"):
        _, scaled = lp.quantize(g, "fxp12", mode, generator=gen, scaling=lp.Scaling(),
                                return_info=True)
        assert scaled.underflow < 0.01 and scaled.sqnr_db > 50


@pytest.mark.parametrize(("fmt", "scaling"), [
    ("fxp12", lp.Scaling()),
    ("fp8_e4m3", lp.Scaling("block", block=16, scale_rounding="ceil")),
])
def test_scaled_stochastic_rounding_is_unbiased(fmt: str, scaling: lp.Scaling) -> None:
    n = 500  # 32000 elements: below torch's parallel grain, fast on a loaded machine
    x = 1e-6 * torch.randn(64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    xs = x.expand(n, 64).contiguous()  # every row is the same slice(s): the same scales
    y, info = lp.quantize(xs, fmt, "stochastic", scaling=scaling, return_info=True,
                          generator=torch.Generator().manual_seed(8))
    sc = info.scales.expand(64) if info.scales.ndim == 0 else info.scales[0].repeat_interleave(16)
    f = lp.formats.get(fmt)
    gap = (round_to_format(x / sc, f, "up") - round_to_format(x / sc, f, "down")) * sc
    inexact = gap > 0
    z = (y.mean(0) - x)[inexact] / (gap[inexact] / (2 * math.sqrt(n)))  # |z| <~ N(0, 1)
    assert inexact.sum() > 50 and z.abs().max() < 5
    assert abs(z.mean()) < 5 / math.sqrt(inexact.sum())


# ------------------------------------------------------------------------------------------
# history (delayed scaling)
# ------------------------------------------------------------------------------------------


def test_history_scaling_over_calls() -> None:
    s = lp.Scaling(method="history", history=3)
    with pytest.raises(ValueError, match="scale_state"):
        lp.quantize(torch.ones(3), "fp8_e4m3", scaling=s)
    state = s.new_state()
    assert lp.Scaling().new_state() is None and state is not s.new_state()
    assert not any(f.name == "state" for f in dataclasses.fields(s))  # config only
    seen = []
    for amax in (1.0, 4.0, 2.0, 0.5, 0.25, 0.1):
        y, info = lp.quantize(torch.tensor([amax, -amax / 3]), "fp8_e4m3", scaling=s,
                              scale_state=state, return_info=True)
        seen.append((math.log2(info.scales.item()), info.overflow))
    # scale from the max of the previous 3 amaxes (the current one on the first call)
    assert seen == [(-8, 0.0), (-8, 0.5), (-6, 0.0), (-6, 0.0), (-6, 0.0), (-7, 0.0)]
    assert state.count == 6
    saved = copy.deepcopy(state.state_dict())
    other = lp.Scaling(method="history", history=3).new_state()
    other.load_state_dict(saved)
    assert torch.equal(other.amax, state.amax)
    state.reset()
    assert state.count == 0 and state.amax is None
    with pytest.raises(ValueError, match="history length"):
        lp.Scaling(method="history", history=4).new_state().load_state_dict(saved)
    with pytest.raises(ValueError, match="length"):
        lp.quantize(torch.ones(3), "fp8_e4m3", scaling=lp.Scaling(method="history", history=4),
                    scale_state=other)


def test_history_per_block_and_shape_check() -> None:
    s = lp.Scaling("block", block=4, method="history", history=2)
    state = s.new_state()
    a = torch.tensor([[1.0, 2, 3, 4, 100, 0, 0, 0]])
    lp.quantize(a, "fp8_e4m3", scaling=s, scale_state=state)
    _, info = lp.quantize(a / 100, "fp8_e4m3", scaling=s, scale_state=state, return_info=True)
    assert info.scales.tolist() == [[2.0**-6, 2.0**-2]]  # from the first call's amaxes
    with pytest.raises(ValueError, match="state holds amax"):
        lp.quantize(torch.ones(2, 8), "fp8_e4m3", scaling=s, scale_state=state)


def test_history_with_fp8_scale_format() -> None:
    s = lp.Scaling(method="history", history=2, scale_format="fp8_e4m3")
    state = s.new_state()
    for v in (6.0, 60.0):
        lp.quantize(torch.tensor([v]), "fp4_e2m1", scaling=s, scale_state=state)
    _, info = lp.quantize(torch.tensor([1.0]), "fp4_e2m1", scaling=s, scale_state=state,
                          return_info=True)
    assert info.scales.item() == 10.0  # 60 / 6, an E4M3 value


# ------------------------------------------------------------------------------------------
# presets, quantize integration, errors
# ------------------------------------------------------------------------------------------


def test_scaled_format_plugs_into_quantize() -> None:
    x = mx_data()
    fmt = lp.formats.get("mxfp8_e4m3")
    assert isinstance(fmt, lp.ScaledFormat) and fmt.bits == 8
    assert fmt.element == FloatingPoint(4, 3, specials="fn")
    assert "OCP MX" in lp.formats.describe("mxfp8_e4m3")
    assert torch.equal(lp.quantize(x, fmt), lp.quantize(x, fmt.element, scaling=fmt.scaling))
    assert lp.formats.get("mxint8").element == FixedPoint(8, 6)
    with pytest.raises(ValueError, match="carries its own scaling"):
        lp.quantize(x, fmt, scaling=lp.Scaling())
    with pytest.raises(NotImplementedError):
        round_to_format(x, fmt)  # no grid of its own: unscaled rounding fails loudly
    xc = x.clone()
    y, info = lp.quantize(xc, fmt, out=xc, return_info=True)  # in place, info from the input
    assert y is xc and info.signal == pytest.approx(float((x.double() ** 2).sum()))
    bf = torch.empty_like(x, dtype=torch.bfloat16)
    assert lp.quantize(x, fmt, out=bf).dtype == torch.bfloat16


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"granularity": "row"}, "granularity"),
    ({"block": 0}, "block"),
    ({"method": "max"}, "method"),
    ({"scale_rounding": "nearest"}, "scale_rounding"),
    ({"scale_format": "e9m0"}, "scale_format"),
    ({"scale_format": 3}, "scale_format"),
    ({"nan_policy": "ocp"}, "nan_policy"),
    ({"history": 0}, "history"),
    ({"tensor_scale": True}, "tensor_scale"),
])
def test_invalid_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        lp.Scaling(**kwargs)


def test_axis_out_of_range() -> None:
    for g in ("channel", "block"):
        with pytest.raises(ValueError, match="axis=2"):
            lp.quantize(torch.ones(2, 3), "fp8_e4m3", scaling=lp.Scaling(g, axis=2))
    with pytest.raises(ValueError, match="out has shape"):
        lp.quantize(torch.ones(2, 3), "mxfp8_e4m3", out=torch.empty(3))


@pytest.mark.parametrize("name", ["fxp12", "fp12", "pot7", "fp8_e4m3", "fp4_e2m1"])
@pytest.mark.parametrize("mode", ["nearest", "toward_zero", "up", "stochastic"])
def test_per_tensor_scaling_equals_explicit_scale_round_unscale(name, mode):
    """Per-tensor pow2 scaling rounds onto the shifted format in one pass; it must equal
    the definition ``round(x * 2**-X) * 2**X`` done step by step in float64."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, generator=g) * 1e-5
    x[:3] = torch.tensor([0.0, -0.0, 2.5e-4])
    s = lp.Scaling(granularity="tensor")
    y, info = lp.quantize(x, name, mode, scaling=s, return_info=True,
                          generator=torch.Generator().manual_seed(7))
    scale = float(info.scales)
    assert scale == 2.0 ** round(math.log2(scale))
    x64 = x.double() / scale  # exact: a power of two
    want = lp.quantize(x64, name, mode, overflow="saturate",
                       generator=torch.Generator().manual_seed(7)) * scale
    assert torch.equal(y.double(), want)
    assert torch.equal(torch.signbit(y), torch.signbit(want))
