"""The C++ block-scaling kernel (:mod:`lowprec.numerics.block_native`) against the torch path.

Every case rounds the same tensor twice through ``lp.quantize``: once with the kernel
serving (checked: it ran) and once with it declined, so :mod:`lowprec.numerics.slicescale`'s
torch path (itself checked against an exact ``Fraction`` reference in ``test_scaling.py``,
which runs on both paths) gives the expected bits. Inputs span 80 binades per block, float32
subnormals, zeros of both signs, infinities, NaNs and exact ties of each block's shifted grid.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from native_paths import awkward, both_paths, same_bits

import lowprec as lp
from lowprec.numerics import block_native, kernel, native
from lowprec.numerics.formats import FloatingPoint, Format

#: the modes block scaling computes in float32 (the directed ones and "odd" take float64)
MODES = ["nearest", "nearest_away", "stochastic"]
#: (format, overflow rule): IEEE-style, "fn" (NaN, no inf), fnuz (no -0), P3109,
#: sub-byte, no mantissa (exponent parity), no subnormals (flush), two's complement
FORMATS = [("fp8_e4m3", "saturate"), ("fp8_e4m3", "inf"), ("fp8_e5m2", "inf"),
           ("fp6_e3m2", "saturate"), ("fp4_e2m1", "saturate"), ("fp8_e4m3fnuz", "inf"),
           ("binary8p4", "inf"), (FloatingPoint(3, 0), "saturate"),
           (FloatingPoint(4, 3, subnormals=False), "saturate"), ("int8", "saturate"),
           ("fxp12", "saturate")]
#: (shape, axis, block): blocks along rows, across rows, ragged, 16 / 8 long, lane tails
LAYOUTS = [((6, 75), -1, 32), ((75, 37), 0, 32), ((3, 40, 19), 1, 16), ((5, 24), -1, 8),
           ((2, 5, 33), 0, 32)]


@pytest.fixture(autouse=True)
def built() -> None:
    if block_native._function() is None:
        pytest.skip("the native block kernel could not be built here (no C++ compiler?)")


def resolve(fmt: str | Format) -> Format:
    return fmt if isinstance(fmt, Format) else lp.formats.get(fmt)


def tricky(shape: tuple[int, ...], fmt: str | Format, seed: int) -> torch.Tensor:
    """Random magnitudes over 80 binades, specials, float32 subnormals and, in the first
    block of every row, exact midpoints between neighbouring codes of that block's grid."""
    x = awkward(shape, seed, 80)
    g = torch.Generator().manual_seed(seed)
    # ties: a row of one block, amax 2**k times the format's max, midpoints in between
    codes = resolve(fmt).values().abs().unique()  # ascending
    mids = (codes[:-1] + codes[1:]) / 2
    row = x.view(-1, x.shape[-1])[0]
    n = min(row.numel(), mids.numel())
    scale = 2.0 ** int(torch.randint(-20, 20, (), generator=g))
    row[:n] = (mids[torch.randint(mids.numel(), (n,), generator=g)] * scale
               * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)).float()
    return x


@pytest.mark.parametrize("fmt,overflow", FORMATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("nan_policy", ["local", "block"])
def test_same_bits_as_the_torch_path(fmt: str | Format, overflow: str, mode: str, nan_policy: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for i, (shape, axis, block) in enumerate(LAYOUTS):
        x = tricky(shape, fmt, seed=i)
        s = lp.Scaling("block", axis=axis, block=block, nan_policy=nan_policy)
        same_bits(*both_paths(block_native, x, fmt, monkeypatch, rounding=mode, scaling=s,
                              overflow=overflow))


@pytest.mark.parametrize("fmt,overflow", FORMATS + [("fp12", "saturate"), ("pot7", "saturate")])
@pytest.mark.parametrize("mode", MODES)
def test_plain_rounding_same_bits_as_the_torch_path(fmt: str | Format, overflow: str,
                                                    mode: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No scaling (``lowprec_round``): every element onto the format's own grid, the
    stochastic index its flat position; small calls and threaded ones."""
    for i, shape in enumerate([(7, 75), (3, 40, 19), (300, 333)]):
        x = awkward(shape, i, 60)
        same_bits(*both_paths(block_native, x, fmt, monkeypatch, entry="round_flat",
                              rounding=mode, overflow=overflow))


@pytest.mark.parametrize("shape,axis", [((64, 1100), -1), ((700, 70), 0), ((4, 96, 130), 1)])
@pytest.mark.parametrize("mode", ["nearest", "stochastic"])
def test_threaded_calls(shape: tuple[int, ...], axis: int, mode: str,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors of at least GRAIN elements run on torch's threads: the same bits."""
    x = tricky(shape, "fp8_e4m3", seed=7)
    assert x.numel() >= block_native.GRAIN
    same_bits(*both_paths(block_native, x, "fp8_e4m3", monkeypatch, rounding=mode,
                          scaling=lp.Scaling("block", axis=axis)))


def call(x: torch.Tensor, fmt: str, code: int) -> torch.Tensor:
    """The kernel itself on blocks of 32 along the rows of 2-d ``x``, mode ``code``."""
    f = resolve(fmt)
    _, _, shape, _ = kernel.constants(f, torch.float32, 30, torch.device("cpu"))
    rule = block_native._rule(f, 30, shape, True, False, 0)
    y = torch.empty_like(x)
    fn = block_native._function()
    assert fn is not None
    assert fn(x.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], 1, 32,
              (ctypes.c_int32 * 20)(*rule, 0, 0), code, 1) == 0
    return y


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1"])
def test_float_nearest_equals_the_integer_kernel(fmt: str) -> None:
    """``NEAREST_FLOAT`` (scale, round, unscale in float32) gives the integer kernel's bits
    on every code's midpoint and on random values, over block exponents from -127 up."""
    x = torch.cat([tricky((40, 96), fmt, seed=s) for s in range(3)])
    x[:8] *= 2.0**-100  # blocks whose exponent clamps at -127: subnormal results
    same_bits(call(x, fmt, native.NEAREST_FLOAT), call(x, fmt,
                                                             native.MODES.index("nearest")))


def test_in_place_and_into_out(monkeypatch: pytest.MonkeyPatch) -> None:
    x = tricky((64, 96), "fp8_e4m3", seed=1)
    s = lp.Scaling("block", axis=-1)
    expected, _ = both_paths(block_native, x, "fp8_e4m3", monkeypatch, scaling=s)
    out = torch.empty_like(x)
    assert lp.quantize(x, "fp8_e4m3", scaling=s, out=out) is out
    same_bits(out, expected)
    y = x.clone()
    lp.quantize(y, "fp8_e4m3", scaling=s, out=y)
    same_bits(y, expected)
    t = x.t().contiguous().t()  # not contiguous: read through a copy
    same_bits(lp.quantize(t, "fp8_e4m3", scaling=s), expected)


@pytest.mark.parametrize("case", ["float64", "bfloat16", "telemetry", "channel"])
def test_declines_what_it_does_not_compute(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel declines (or is not asked) the torch path answers alone."""
    served: list[bool] = []
    real = block_native.run
    monkeypatch.setattr(block_native, "run",
                        lambda *a, **k: served.append(real(*a, **k)) or served[-1])
    x = tricky((8, 64), "fp8_e4m3", seed=2)
    s = lp.Scaling("channel" if case == "channel" else "block", axis=0 if case == "channel"
                   else -1)
    if case in ("float64", "bfloat16"):
        x = x.to(getattr(torch, case))
    lp.quantize(x, "fp8_e4m3", scaling=s, return_info=case == "telemetry")
    assert True not in served


def test_flushed_subnormals_take_the_integer_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``torch.set_flush_denormal(True)`` (FTZ/DAZ) the float way would flush the
    subnormal results of tiny blocks (whose exponent clamps at -127); the kernel then
    rounds the integer way, as the torch path does under the same setting."""
    x = tricky((16, 64), "fp8_e4m3", seed=4)
    x[:8] = torch.randn(8, 64, generator=torch.Generator().manual_seed(4)) * 2.0**-128
    x[:8, ::16] = 2.0**-110  # block exponent -118: codes times 2**-118, many subnormal
    y, _ = both_paths(block_native, x, "fp8_e4m3", monkeypatch,
                      scaling=lp.Scaling("block"))
    assert ((y[:8] != 0) & (y[:8].abs() < 2.0**-126)).sum() > 100  # subnormal results
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        same_bits(*both_paths(block_native, x, "fp8_e4m3", monkeypatch,
                              scaling=lp.Scaling("block")))
    finally:
        torch.set_flush_denormal(False)
