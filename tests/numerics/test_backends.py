"""The compiled kernel computes the same bits as the eager one.

The other numerics tests run on the eager kernel (see conftest.py) against
independent references; this file ties the compiled kernel (``torch.compile``,
the default backend) to it, bit for bit, on inputs that cover every binade,
subnormals, ties, the overflow boundary, signed zeros, inf and NaN.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lowprec as lp

# the torch path's machinery: the C++ rounding kernels declined (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("torch_kernels")

CASES = [("fp16", mode, None) for mode in lp.rounding.MODES] + [
    ("fxp12", "nearest", None),
    ("fxp12", "stochastic", None),
    ("pot7", "nearest", None),
    ("pot7", "odd", None),
    ("fp8_e4m3", "nearest", "inf"),
    ("fp8_e4m3", "toward_zero", "saturate"),
]


def _inputs(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n = (1 << 16) + 5  # not a multiple of the vector width: the tail runs too
    x = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-40, 40, (n,), generator=g).to(torch.float64)
    )
    specials = torch.tensor(
        [
            0.0,
            -0.0,
            float("inf"),
            -float("inf"),
            float("nan"),
            65504,
            65520,
            -65520,
            2.0**-24,
            2.0**-25,
            3 * 2.0**-26,
            448,
            464,
            465,
            1e-45,
            3e38,
        ]
    )
    return torch.cat([specials.to(torch.float64), x]).to(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    both_nan = torch.isnan(a) & torch.isnan(b)
    equal = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((equal | both_nan).all())


@pytest.mark.parametrize(("name", "mode", "overflow"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_equals_eager(monkeypatch, name, mode, overflow, dtype):
    x = _inputs(dtype)
    results = []
    for backend in ("eager", "compiled"):
        monkeypatch.setenv("LOWPREC_BACKEND", backend)
        g = torch.Generator().manual_seed(1)
        results.append(lp.quantize(x, name, mode, generator=g, overflow=overflow))
    assert _same_bits(*results), f"{name} {mode} {dtype}: compiled and eager kernels differ"


def test_compiled_float64_and_in_place(monkeypatch):
    """float64 in place, against numpy's float64 -> float16 cast (torch's rounds twice)."""
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")
    x = _inputs(torch.float64)
    with np.errstate(over="ignore"):  # overflow to inf is what is being compared
        expected = torch.from_numpy(x.numpy().astype(np.float16).astype(np.float64))
    y = x.clone()
    lp.quantize(y, "fp16", out=y)
    assert _same_bits(y, expected)


@pytest.mark.usefixtures("one_graph_per_variant")
def test_every_size_stays_compiled(monkeypatch):
    """Sizes around the 16-element rows of stochastic rounding (one row, a tail, none),
    and the sizes and storage offsets of 0 and 1 that dynamo specialises: same bits as
    eager, and no variant falls out of the compiled path (dynamo's recompile limit, past
    which it would warn and run eagerly)."""
    try:
        x = _inputs(torch.float32)
        sizes = (1, 2, 5, 15, 16, 17, 31, 32, 33, 100, 1000)
        cases = itertools.product((3, 0, 1), sizes, (False, True))  # offsets, grad mode
        for start, n, grad in cases:
            torch.set_grad_enabled(grad)
            for mode in ("stochastic", "nearest"):
                got = []
                for backend in ("eager", "compiled"):
                    monkeypatch.setenv("LOWPREC_BACKEND", backend)
                    g = torch.Generator().manual_seed(n)
                    got.append(lp.quantize(x[start:start + n], "fp12", mode, generator=g))
                    y = x[start:start + n].clone()
                    lp.quantize(y, "fp12", mode, generator=torch.Generator().manual_seed(n), out=y)
                    assert _same_bits(y, got[-1]), (n, mode, backend)
                assert _same_bits(*got), (n, mode)
    finally:
        torch.set_grad_enabled(True)


_CACHED_RUN = """
import sys, torch, lowprec as lp
from lowprec.numerics import graphs
x = torch.load(sys.argv[1], weights_only=True)
got = []
for start, n in ((3, 1000), (0, 37), (1, 4096 + 5)):
    part = x[start:start + n]
    got.append(lp.quantize(part, "fp12", "stochastic", generator=torch.Generator().manual_seed(n)))
    y = part.clone()
    lp.quantize(y, "fp8_e4m3", out=y)
    got.append(y)
    got.append(lp.quantize(part.view(-1, 1) if n % 2 else part.view(2, -1), "fp16", "up"))
torch.save(got, sys.argv[2])
print(len(graphs.GRAPHS))
"""


def test_cached_graphs_compute_the_same_bits(tmp_path):
    """Compiled graphs loaded from disk by a new process (lowprec's graph cache,
    :mod:`lowprec.numerics.graphs`, and torch's FX graph and AOT autograd caches) give the
    eager bits, for sizes, storage offsets, dimensions and in-place calls that have broken
    torch's caches before (docs/torch-cache-bug.md). The first process compiles and fills
    fresh caches; the second compiles nothing and loads every graph."""
    x = _inputs(torch.float32)[:6000].contiguous()
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "LOWPREC_BACKEND": "compiled", "LOWPREC_NATIVE": "off",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "LOWPREC_CACHE_DIR": str(tmp_path / "lowprec-cache")}
    script = tmp_path / "run.py"
    script.write_text(_CACHED_RUN)
    compiled = {}
    for run in ("fill", "read"):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "x.pt"),
                               str(tmp_path / f"{run}.pt")], env=env, check=True,
                              capture_output=True, text=True)
        compiled[run] = int(done.stdout.split()[-1])
    assert compiled["fill"] > 0 and compiled["read"] == 0, compiled
    assert any((tmp_path / "lowprec-cache" / "kernels").rglob("*.bin")), "nothing was kept"
    expected = []
    for start, n in ((3, 1000), (0, 37), (1, 4096 + 5)):
        part = x[start:start + n]
        expected.append(lp.quantize(part, "fp12", "stochastic",
                                    generator=torch.Generator().manual_seed(n)))
        expected.append(lp.quantize(part, "fp8_e4m3"))
        expected.append(lp.quantize(part, "fp16", "up").view(-1, 1) if n % 2 else
                        lp.quantize(part, "fp16", "up").view(2, -1))
    for run in ("fill", "read"):
        got = torch.load(tmp_path / f"{run}.pt", weights_only=True)
        for a, b in zip(got, expected, strict=True):
            assert _same_bits(a.reshape(-1), b.reshape(-1)), run


@pytest.mark.parametrize(("mode", "scaling"), [
    ("nearest", lp.Scaling("block", block=32, nan_policy="block")),  # the shifted-grid pass
    ("stochastic", lp.Scaling("block", axis=0, block=16, scale_rounding="even")),  # scaled
])
def test_compiled_block_scaling_equals_eager(monkeypatch, mode, scaling):
    """The fused per-block pass (amax, exponent, rounding, telemetry), compiled, gives the
    eager bits and figures: blocks along rows with a ragged tail, or along columns."""
    x = _inputs(torch.float32)[: 61 * 67].view(61, 67)
    results = []
    for backend in ("eager", "compiled"):
        monkeypatch.setenv("LOWPREC_BACKEND", backend)
        g = torch.Generator().manual_seed(1)
        results.append(lp.quantize(x, "fp8_e4m3", mode, generator=g, scaling=scaling,
                                   return_info=True))
    (y0, i0), (y1, i1) = results
    assert _same_bits(y0, y1) and _same_bits(i0.scales, i1.scales)
    assert torch.equal(i0.stats[:5], i1.stats[:5]) and i0.amax == i1.amax
