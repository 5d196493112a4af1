"""Subnormal inputs of formats whose grid goes on below the input dtype's smallest normal.

A float32 subnormal ``u * 2**-149`` has no hidden bit: its exponent is that of its leading
bit, below float32's ``emin = -126``. Formats whose ``emin`` (or flush exponent) lies at or
below the container's have normal values there, so the rounding step depends on that
exponent. Checked on both backends, every mode:

* a dense sample of the float32 subnormal patterns (every 2**11-th, each power of two and
  its neighbours, the midpoints between them, random ones) against the exact reference
  (``tests/reference.py``); the same for float64 subnormals and formats below -1022;
* every 61st float32 subnormal pattern (all residues of the low bits) against the same
  values rounded in float64, where they are normal (the kernel's well-trodden path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import DETERMINISTIC_MODES, mismatches_np, round_ref_modes, spec_of, sr_outcomes

import lowprec as lp
from lowprec.numerics.formats import FixedPoint, FloatingPoint, PowerOfTwo

# every test on the C++ kernels and on the torch path (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

FLOAT32_FORMATS = [
    FloatingPoint(8, 1, bias=128, specials="none"),
    PowerOfTwo(8, 127),
    FloatingPoint(8, 5, bias=141),
    FloatingPoint(8, 7, subnormals=False),  # flush exponent = float32's emin
    FloatingPoint(8, 3, bias=135, subnormals=False),
    FloatingPoint(8, 7),  # bf16: emin = float32's, the common kernel
    FixedPoint(16, 149),
]
FLOAT64_FORMATS = [
    FloatingPoint(11, 4, bias=1027),
    PowerOfTwo(11, 1000),
    FloatingPoint(11, 2, bias=1030, subnormals=False),
]
BACKENDS = ("eager", "compiled")
#: modes checked on the compiled backend (each format and mode is a compiled variant, and
#: compiling them all would dominate the suite); eager runs every mode on every format
COMPILED_MODES = ("nearest", "toward_zero", "stochastic")


def _cases(formats: list) -> list:
    """Every format on the eager kernel; the formats of the reported bug (the first two)
    on the compiled one too."""
    return [pytest.param(f, b, id=f"{f}-{b}") for f in formats for b in BACKENDS
            if b == "eager" or f in formats[:2]]

_LAYOUT = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}


def _subnormal_sample(dtype: torch.dtype) -> torch.Tensor:
    """Subnormal bit patterns of ``dtype`` (both signs, and ±0) as a tensor of ``dtype``."""
    ity, p = _LAYOUT[dtype]
    stride = 1 << (p - 12)
    codes = set(range(0, 1 << p, stride))
    for j in range(p):
        for c in ((1 << j) - 1, 1 << j, (1 << j) + 1, 3 << j >> 1, (3 << j >> 1) + 1):
            codes.add(min(c, (1 << p) - 1))
    codes |= {(1 << p) - 1, 1 << p}  # the largest subnormal, the smallest normal
    g = torch.Generator().manual_seed(14)
    codes |= set(torch.randint(1, 1 << p, (1024,), generator=g).tolist())
    pos = torch.tensor(sorted(codes), dtype=ity)
    return torch.cat([pos, pos | torch.iinfo(ity).min]).view(dtype)


def _check_against_reference(fmt: object, dtype: torch.dtype, backend: str, monkeypatch):
    monkeypatch.setenv("LOWPREC_BACKEND", backend)
    x = _subnormal_sample(dtype)
    xs = x.to(torch.float64).tolist()
    spec = spec_of(fmt)
    ref = [round_ref_modes(v, spec) for v in xs]
    modes = DETERMINISTIC_MODES if backend == "eager" else COMPILED_MODES
    for mode in modes:
        if mode == "stochastic":
            got = lp.quantize(x, fmt, mode, generator=torch.Generator().manual_seed(0))
            allowed = [sr_outcomes(v, spec) for v in xs]
            g = got.to(torch.float64).tolist()
            bad = [(v, r, a) for v, r, a in zip(xs, g, allowed, strict=True) if r not in a]
            assert not bad, (fmt, backend, bad[:4])
            continue
        got = lp.quantize(x, fmt, mode).to(torch.float64).numpy()
        want = np.array([r[mode] for r in ref])
        n, ex = mismatches_np(xs, got, want, signed_zero=spec.is_float)
        assert n == 0, f"{fmt} {mode} {backend} {dtype}: {n} wrong, e.g. {ex}"


@pytest.mark.parametrize(("fmt", "backend"), _cases(FLOAT32_FORMATS))
def test_float32_subnormals_match_reference(fmt, backend, monkeypatch):
    _check_against_reference(fmt, torch.float32, backend, monkeypatch)


@pytest.mark.parametrize(("fmt", "backend"), _cases(FLOAT64_FORMATS))
def test_float64_subnormals_match_reference(fmt, backend, monkeypatch):
    _check_against_reference(fmt, torch.float64, backend, monkeypatch)


@pytest.mark.parametrize(("fmt", "backend"), _cases(FLOAT32_FORMATS[:5]))
def test_float32_subnormals_as_in_float64(fmt, backend, monkeypatch):
    """Every 61st signed float32 subnormal pattern: rounding them in float32 gives the
    bits that rounding their (normal) float64 values gives."""
    monkeypatch.setenv("LOWPREC_BACKEND", backend)
    pos = torch.arange(0, 1 << 23, 61, dtype=torch.int32)
    x = torch.cat([pos, pos | (-(1 << 31))]).view(torch.float32)
    wide = x.to(torch.float64)
    for mode in DETERMINISTIC_MODES if backend == "eager" else COMPILED_MODES[:-1]:
        got = lp.quantize(x, fmt, mode).to(torch.float64)
        want = lp.quantize(wide, fmt, mode)
        same = (got.view(torch.int64) == want.view(torch.int64)) | (got.isnan() & want.isnan())
        assert bool(same.all()), (fmt, mode, x[~same][:4].tolist(), got[~same][:4].tolist())


@pytest.mark.parametrize(
    ("fmt", "bits", "mode", "want"),
    [
        (FloatingPoint(8, 1, bias=128, specials="none"), 0x00600000, "nearest", 0x00600000),
        (FloatingPoint(8, 1, bias=128, specials="none"), 0x007FFFFF, "toward_zero", 0x00600000),
        (PowerOfTwo(8, 127), 0x805033E3, "nearest", 0x80400000),
        (FloatingPoint(8, 7, subnormals=False), 0x00100000, "nearest", 0),
        (FloatingPoint(8, 7, subnormals=False), 0x00700000, "nearest", 0x00800000),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_reported_cases(fmt, bits, mode, want, backend, monkeypatch):
    """The cases of issue 14 (and the flush case found with it)."""
    monkeypatch.setenv("LOWPREC_BACKEND", backend)
    x = torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)
    got = lp.quantize(x, fmt, mode).view(torch.int32).item() & 0xFFFFFFFF
    assert got == want, f"{hex(got)} != {hex(want)}"
