"""Every invalid input named in the specification raises the specified exception, with a
message that names the offending parameter (matched as a whole word)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import lowprec as lp

X = torch.tensor([0.5, 1.03, -2.0])


def _word(name: str) -> str:
    """Regex matching ``name`` as a whole identifier (so ``fl`` does not match ``float``)."""
    return rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])"


FORMAT_ERRORS: list[tuple[str, Callable[[], Any], str]] = [
    ("wl=0", lambda: lp.FixedPoint(wl=0, fl=0), "wl"),
    ("wl=-4", lambda: lp.FixedPoint(wl=-4, fl=0), "wl"),
    ("fl=1.5", lambda: lp.FixedPoint(wl=8, fl=1.5), "fl"),
    ("fl='2'", lambda: lp.FixedPoint(wl=8, fl="2"), "fl"),
    ("exp=0", lambda: lp.FloatingPoint(exp=0, man=3), "exp"),
    ("exp=-1", lambda: lp.FloatingPoint(exp=-1, man=3), "exp"),
    ("man=-1", lambda: lp.FloatingPoint(exp=5, man=-1), "man"),
    ("specials", lambda: lp.FloatingPoint(exp=5, man=2, specials="bogus"), "specials"),
    ("exp_bits=0", lambda: lp.PowerOfTwo(exp_bits=0, emax=0), "exp_bits"),
]


@pytest.mark.parametrize(
    ("case", "make", "param"), FORMAT_ERRORS, ids=[c[0] for c in FORMAT_ERRORS]
)
def test_invalid_format_parameters(case: str, make: Callable[[], Any], param: str) -> None:
    """Invalid format parameters raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=_word(param)):
        make()


@pytest.mark.parametrize(("exp", "man"), [(12, 3), (15, 2)])
def test_exponent_range_beyond_float64(exp: int, man: int) -> None:
    """Exponent ranges float64 cannot emulate (e.g. E12M3: subnormals down to 2**-2049)."""
    with pytest.raises(ValueError):
        lp.FloatingPoint(exp=exp, man=man)


def test_float64_range_boundary_is_accepted() -> None:
    """Sanity: ordinary wide formats stay valid (fp32-like E8M23, E11M4)."""
    lp.FloatingPoint(exp=8, man=23)
    lp.FloatingPoint(exp=11, man=4, specials="ieee")


@pytest.mark.parametrize("rounding", ["bogus", "Nearest", "round_to_odd", ""])
def test_unknown_rounding(rounding: str) -> None:
    """Unknown rounding names raise ValueError naming ``rounding``."""
    with pytest.raises(ValueError, match=_word("rounding")):
        lp.quantize(X, lp.formats.get("fp16"), rounding)


@pytest.mark.parametrize("overflow", ["wrap", "clip", "nan", ""])
def test_unknown_overflow(overflow: str) -> None:
    """Unknown overflow names raise ValueError naming ``overflow``."""
    with pytest.raises(ValueError, match=_word("overflow")):
        lp.quantize(X, lp.formats.get("fp16"), overflow=overflow)


@pytest.mark.parametrize("rand_bits", [0, -1, -8])
def test_rand_bits_below_one(rand_bits: int) -> None:
    """rand_bits < 1 raises ValueError naming ``rand_bits``."""
    with pytest.raises(ValueError, match=_word("rand_bits")):
        lp.quantize(
            X,
            lp.formats.get("fp8_e4m3"),
            "stochastic",
            generator=torch.Generator().manual_seed(0),
            rand_bits=rand_bits,
        )


@pytest.mark.parametrize(
    "fmt",
    [
        lp.FixedPoint(wl=8, fl=4),
        lp.formats.get("int8"),
        lp.formats.get("pot7"),
        lp.PowerOfTwo(exp_bits=3, emax=2),
        lp.formats.get("fp4_e2m1"),
        lp.formats.get("fp6_e3m2"),
        lp.FloatingPoint(exp=4, man=3, specials="none"),
    ],
    ids=repr,
)
def test_overflow_inf_without_inf_codes(fmt: Any) -> None:
    """overflow="inf" on a format without inf/NaN codes raises ValueError (all modes)."""
    for mode in ("nearest", "toward_zero", "stochastic"):
        with pytest.raises(ValueError, match=_word("overflow")):
            lp.quantize(X, fmt, mode, overflow="inf", generator=torch.Generator())


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_integer_tensor_raises_type_error(dtype: torch.dtype) -> None:
    """Integer tensors are rejected with TypeError."""
    with pytest.raises(TypeError):
        lp.quantize(torch.arange(4, dtype=dtype), lp.formats.get("fp16"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fp8_e4m3", 1.03),
        ("fp8_e4m3", 1000.0),
        ("fp8_e4m3", math.inf),
        ("fp16", 1.0 + 2.0**-11),
        ("fp4_e2m1", 5.0),
        ("int8", 0.5),
        ("int8", 128.0),
        ("int8", -129.0),
        ("pot7", 3.0),
    ],
)
def test_encode_rejects_unrepresentable(name: str, value: float) -> None:
    """encode raises ValueError for a value that is not in the format."""
    with pytest.raises(ValueError):
        lp.formats.get(name).encode(torch.tensor([0.5, value], dtype=torch.float64))


def test_valid_calls_do_not_raise() -> None:
    """The boundary cases of the rules above are accepted."""
    lp.FixedPoint(wl=1, fl=0)
    lp.FloatingPoint(exp=1, man=0, specials="none")
    lp.FloatingPoint(exp=5, man=0)
    g = torch.Generator().manual_seed(0)
    lp.quantize(X, lp.formats.get("fp8_e4m3"), "stochastic", generator=g, rand_bits=1)
    lp.quantize(X, lp.formats.get("fp8_e4m3"), overflow="inf")
    lp.quantize(X, lp.formats.get("int8"), overflow="saturate")


@pytest.mark.parametrize("backend", ["eager", "compiled"])
@pytest.mark.parametrize("shift", [3, -3])
def test_partially_overlapping_out(monkeypatch: pytest.MonkeyPatch, backend: str,
                                   shift: int) -> None:
    """out overlapping x without being x reads every x before writing (both backends)."""
    monkeypatch.setenv("LOWPREC_BACKEND", backend)
    buf = torch.randn(1006, generator=torch.Generator().manual_seed(0))
    start = 3 if shift < 0 else 0
    x = buf[start:start + 1000]
    expected = x.half().float()  # torch's float32 -> float16 cast: the reference
    lp.quantize(x, "fp16", out=buf[start + shift:start + shift + 1000])
    assert torch.equal(buf[start + shift:start + shift + 1000], expected)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int64])
def test_out_of_non_float_dtype(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=_word("out")):
        lp.quantize(X, "fp16", out=torch.empty(3, dtype=dtype))


def test_out_leaf_requiring_grad() -> None:
    """In place on a leaf that requires grad is refused, as torch's ``a.add_(1)`` is;
    under no_grad it is allowed (as torch allows it)."""
    a = X.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="leaf"):
        lp.quantize(a, "fp16", out=a)
    with torch.no_grad():
        lp.quantize(a, "fp16", out=a)


@pytest.mark.parametrize("generator", [5, "seed", torch.Generator])
def test_generator_of_wrong_type(generator: Any) -> None:
    with pytest.raises(TypeError, match=_word("generator")):
        lp.quantize(X, "fp16", "stochastic", generator=generator)


@pytest.mark.parametrize("code", [-1, 2**8, 2**20])
@pytest.mark.parametrize("name", ["fp8_e4m3", "int8", "pot7"])
def test_decode_out_of_range_code(name: str, code: int) -> None:
    fmt = lp.formats.get(name)
    with pytest.raises(ValueError, match="codes"):
        fmt.decode(torch.tensor([0, code]))
    assert fmt.decode(torch.tensor([0, 2**fmt.bits - 1])).shape == (2,)
