"""The rounding path under ``torch.compile``: what it traces equals what eager code does.

References: torch's own casts for the bit patterns and float32 representability that the
kernel's constants are now computed from in plain Python; the eager shifted-format path
for the per-tensor-scaled rounding that keeps its exponent on the device; eager
``quantize`` for a compiled (inductor, ``fullgraph=True``: no graph break) one.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import lowprec as lp
from lowprec.numerics.cast import register_generator
from lowprec.numerics.formats import _float32_holds
from lowprec.numerics.kernel import float_bits, int_dtype
from lowprec.numerics.scaling import Scaling, _traced_tensor_round, scaled_round


def _values(seed: int) -> list[float]:
    rnd = random.Random(seed)
    vals = [0.0, -0.0, 1.0, 2.0**-149, 2.0**-150, 3 * 2.0**-150, 2.0**-126, 2.0**-1074,
            (2**24 - 1) * 2.0**104, 2.0**128 - 2.0**103, 2.0**128, 1e300, math.inf, -math.inf,
            math.nan]
    for _ in range(4000):
        bits = rnd.choice([8, 24, 25, 53])
        m, e = rnd.getrandbits(bits), rnd.randint(-1100, 970)
        vals.append(rnd.choice([1, -1]) * math.ldexp(m, e))
    return vals


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_bits_match_torch(dtype: torch.dtype) -> None:
    vals = _values(0)
    assert float_bits(tuple(vals), dtype) == torch.tensor(vals, dtype=dtype).view(
        int_dtype(dtype)).tolist()


def test_float32_holds_matches_torch() -> None:
    for v in _values(1):
        if not math.isnan(v):
            assert _float32_holds(v) == (float(torch.tensor(v, dtype=torch.float32)) == v), v


@pytest.mark.parametrize("fmt", ["fxp12", "fp12", "fp8_e4m3", "pot7"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "toward_zero", "up"])
def test_traced_per_tensor_scaling_equals_eager(fmt: str, rounding: str) -> None:
    f, s = lp.formats.get(fmt), Scaling()
    g = torch.Generator().manual_seed(5)
    for scale in (0.0, 1e-30, 1e-3, 7.0, 1e30):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(300, generator=g) * scale
            x[::37] *= 1e-20
            x[5] = math.nan if scale == 7.0 else x[5]
            x[6] = math.inf if scale == 7.0 else x[6]
            x = x.to(dtype)
            g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
            y, info = scaled_round(x, f, rounding, s, True, generator=g1)
            t, tinfo = _traced_tensor_round(x, f, rounding, s, True, None, generator=g2,
                                            rand_bits=None, overflow=None, dtype=dtype)
            assert tinfo is not None and info is not None
            assert torch.equal(y.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               t.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
            assert torch.equal(info.stats, tinfo.stats) and torch.equal(info.scales, tinfo.scales)


def test_compiled_quantize_fullgraph_same_bits() -> None:
    """One inductor compile of a per-tensor-scaled stochastic rounding: no graph break, the
    eager bits (seeds from the registered generator, in order)."""
    g = register_generator(torch.Generator())
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3

    def f(x: torch.Tensor) -> torch.Tensor:
        return lp.quantize(x, "fxp12", "stochastic", generator=g, scaling=Scaling())

    compiled = torch.compile(f, fullgraph=True)
    g.manual_seed(0)
    want = [f(x), f(x)]
    g.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(want, [compiled(x), compiled(x)], strict=True))


def test_block_scaling_traces_without_a_graph_break() -> None:
    """Block scaling under ``torch.compile`` traces the torch path (the C++ kernel, which
    eager calls take, is a foreign call no graph holds): the eager bits, no graph break."""
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))

    def f(x: torch.Tensor) -> torch.Tensor:
        return lp.quantize(x, "fp8_e4m3", scaling=Scaling("block"))

    assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x), f(x))


def test_unregistered_generator_is_a_clear_error() -> None:
    g = torch.Generator()

    def f(x: torch.Tensor) -> torch.Tensor:
        return lp.quantize(x, "fp12", "stochastic", generator=g)

    with pytest.raises(Exception, match="register_generator"):
        torch.compile(f, backend="eager", fullgraph=True)(torch.ones(4))
