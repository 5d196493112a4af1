"""Statistical and determinism tests of ``rounding="stochastic"`` (fixed seeds throughout).

Model (specification): a non-representable ``x`` with neighbours of magnitudes
``small < |x| < large`` rounds to ``large`` with probability ``p = (|x|-small)/(large-small)``
(so ``E[result] = x``), or ``floor(p 2**k)/2**k`` with ``rand_bits=k`` (k random bits are added
to the top k remainder bits; the carry rounds up: ``up  <=>  floor(p 2**k) + u >= 2**k`` with
``u`` uniform on ``[0, 2**k)``).  The exact ``p`` comes from ``reference.sr_up_probability``.

Counts are checked against the binomial law: ``|count - n p| <= 5 sqrt(n p (1-p))`` (+1 for
rounding), i.e. a false alarm rate below 1e-6 per check.

Stream semantics observed (and pinned down by ``test_stream_semantics``): the element at
logical (row-major) position ``i`` is decided by the ``i``-th draw of the generator's stream,
whatever the tensor's shape, memory layout (a transposed view uses logical order), dtype or
the values of the other elements; so ``quantize(x)[:k]`` equals ``quantize(x[:k])`` for the
same generator state.  Each call advances the generator.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
import torch
from reference import FixedSpec, spec_of, sr_outcomes, sr_up_probability

import lowprec as lp

# every test on the C++ kernels and on the torch path (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

Z = 5.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fmt(name: str) -> Any:
    return lp.formats.get(name)


def _binomial_ok(count: int, n: int, p: float, z: float = Z) -> bool:
    """``count`` is within ``z`` standard deviations of Binomial(n, p)'s mean."""
    if p == 0.0:
        return count == 0
    if p == 1.0:
        return count == n
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def _sr(
    x: float, fmt: Any, n: int, seed: int, rand_bits: int | None = None, **kw: Any
) -> torch.Tensor:
    xt = torch.full((n,), x, dtype=torch.float64)
    return lp.quantize(xt, fmt, "stochastic", generator=_gen(seed), rand_bits=rand_bits, **kw)


def _count_large(y: torch.Tensor, x: float, fmt: Any, overflow: str | None = None) -> int:
    """Number of results equal to the larger-magnitude outcome; asserts every result is
    one of the two admissible outcomes."""
    small, large = sr_outcomes(x, spec_of(fmt), overflow)
    is_large = (y == large) | (torch.isnan(y) & math.isnan(large))
    is_small = y == small
    assert bool((is_large | is_small).all()), (x, y[~(is_large | is_small)][:5].tolist())
    return int(is_large.sum())


# --------------------------------------------------------------------------------------
# unbiasedness and the up-probability
# --------------------------------------------------------------------------------------

UNBIASED_CASES = [
    ("fp8_e4m3", 1.03),
    ("fp8_e4m3", -1.03),
    ("fp8_e4m3", 0.0037),  # subnormal range
    ("fp8_e4m3", -300.0),
    ("fp16", 1.0001),
    ("fp16", -3.3e-6),  # subnormal
    ("bf16", 3.14159),
    ("fp4_e2m1", 2.6),
    ("fp4_e2m1", -0.3),
    ("int8", 2.7),
    ("int8", -2.7),  # two's complement: between -3 and -2, p(-3) = 0.7
    ("fxp12", 0.12345),
    ("fxp12", -7.99),  # near the asymmetric negative end
    ("pot7", 0.3),
    ("pot7", -0.3),
    ("pot7", 5.0e8),
    ("fp12", 0.1),
]


@pytest.mark.parametrize(("name", "x"), UNBIASED_CASES)
def test_unbiased(name: str, x: float) -> None:
    """The count of larger-magnitude results is Binomial(n, p) with the exact p, and the
    sample mean is within 5 standard errors of x."""
    fmt = _fmt(name)
    spec = spec_of(fmt)
    n = 1 << 17
    y = _sr(x, fmt, n, seed=17)
    assert y.dtype == torch.float64
    p = float(sr_up_probability(x, spec))
    assert 0 < p < 1
    count = _count_large(y, x, fmt)
    assert _binomial_ok(count, n, p), (count, n * p)
    small, large = sr_outcomes(x, spec)
    se = abs(large - small) * math.sqrt(p * (1 - p) / n)
    assert abs(y.mean().item() - x) <= Z * se + 1e-12


FRACTIONS = [0.5, 0.25, 0.75, 1 / 3, 0.1, 0.9, 2.0**-10, 1 - 2.0**-10, 2.0**-14]


@pytest.mark.parametrize("f", FRACTIONS)
def test_up_probability(f: float) -> None:
    """P(up) == (|x|-lo)/(hi-lo) for x = 1 + f/8 in fp8_e4m3 (gap 1/8), down to p = 2**-14."""
    fmt = _fmt("fp8_e4m3")
    x = 1.0 + f / 8
    p = sr_up_probability(x, spec_of(fmt))
    assert abs(float(p) - f) < 1e-12
    n = int(min(max(2**12 / min(f, 1 - f), 2**16), 2**20))  # >= 4096 expected minority hits
    count = _count_large(_sr(x, fmt, n, seed=101), x, fmt)
    assert _binomial_ok(count, n, float(p)), (f, count, n * float(p))


def test_tiny_probability_full_resolution() -> None:
    """rand_bits=None resolves p = 2**-16 (expect 64 ups in 2**22 draws, not 0)."""
    fmt = _fmt("fp8_e4m3")
    x = 1.0 + 2.0**-16 / 8
    n = 1 << 22
    y = lp.quantize(torch.full((n,), x), fmt, "stochastic", generator=_gen(5))
    count = _count_large(y.double(), x, fmt)
    assert _binomial_ok(count, n, 2.0**-16), count


# --------------------------------------------------------------------------------------
# rand_bits
# --------------------------------------------------------------------------------------

RAND_BITS_CASES = [
    # (k, p, expected floor(p 2**k)/2**k)
    (2, 0.3, 0.25),
    (2, 0.2, 0.0),
    (2, 0.99, 0.75),
    (2, 0.25, 0.25),
    (1, 0.49, 0.0),
    (1, 0.5, 0.5),
    (1, 0.999, 0.5),
    (3, 0.7, 0.625),
    (8, 100 / 256 + 1e-4, 100 / 256),
    (8, 2.0**-9, 0.0),
    (23, 0.1, math.floor(0.1 * 2**23) / 2**23),
]


@pytest.mark.parametrize(("k", "p", "want"), RAND_BITS_CASES)
def test_rand_bits(k: int, p: float, want: float) -> None:
    """With rand_bits=k the up-probability is floor(p 2**k)/2**k (0 means never)."""
    fmt = _fmt("fp8_e4m3")
    x = 1.0 + p / 8
    assert float(sr_up_probability(x, spec_of(fmt), rand_bits=k)) == want
    n = 1 << 17
    for seed in (0, 1) if want == 0 else (0,):
        y = _sr(x, fmt, n, seed=seed, rand_bits=k)
        count = _count_large(y, x, fmt)
        assert _binomial_ok(count, n, want), (k, p, count / n, want)


@pytest.mark.parametrize("rand_bits", [None, 8])
def test_chi_square_over_fractions(rand_bits: int | None) -> None:
    """For p = j/256, j = 1..255 (n = 2000 draws each, one tensor) the up counts fit the
    binomial model: chi-square (255 dof, mean 255, sd 22.6) below 255 + 7 sd."""
    fmt = _fmt("fp8_e4m3")
    n = 2000
    ps = torch.arange(1, 256, dtype=torch.float64) / 256
    x = (1.0 + ps / 8).repeat_interleave(n)
    y = lp.quantize(x, fmt, "stochastic", generator=_gen(3), rand_bits=rand_bits)
    up = (y > x).reshape(255, n).sum(dim=1).double()
    chi2 = ((up - n * ps) ** 2 / (n * ps * (1 - ps))).sum().item()
    assert chi2 < 255 + 7 * math.sqrt(2 * 255), chi2


STREAM_BITS = 5


def _reconstruct_stream(shape: tuple[int, ...], seed: int, k: int = STREAM_BITS) -> torch.Tensor:
    """The k random bits ``u`` of each position: with a fixed generator state,
    ``up(j) <=> j + u >= 2**k`` for p = j/2**k, so ``u = #{j : up(j)}``; also checks that
    up(j) is monotone in j (the carry model)."""
    fmt = _fmt("fp8_e4m3")
    u = torch.zeros(shape, dtype=torch.int64)
    prev = torch.zeros(shape, dtype=torch.bool)
    for j in range(1, 1 << k):
        x = torch.full(shape, 1.0 + j / (1 << k) / 8)
        up = lp.quantize(x, fmt, "stochastic", generator=_gen(seed), rand_bits=k) > x
        assert bool((up | ~prev).all()), f"not monotone in p at j={j}"
        prev = up
        u += up.long()
    return u


def test_random_stream_uniform_and_uncorrelated() -> None:
    """The reconstructed k-bit random stream is uniform on [0, 2**k) (chi-square, 2**k - 1
    dof, bound mean + 7 sd) and neighbouring elements (along rows and columns, and at lag 2)
    are uncorrelated (|r| < 5/sqrt(n))."""
    u = _reconstruct_stream((256, 256), seed=2024).double()
    bins = 1 << STREAM_BITS
    counts = torch.bincount(u.flatten().long(), minlength=bins).double()
    assert counts.numel() == bins
    e = u.numel() / bins
    chi2 = ((counts - e) ** 2 / e).sum().item()
    assert chi2 < (bins - 1) + 7 * math.sqrt(2 * (bins - 1)), chi2

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return (a @ b / (a.norm() * b.norm())).item()

    lim = 5 / math.sqrt(u.numel())
    assert abs(corr(u[:, :-1], u[:, 1:])) < lim
    assert abs(corr(u[:-1, :], u[1:, :])) < lim
    flat = u.flatten()
    assert abs(corr(flat[:-2], flat[2:])) < lim


def test_pairwise_independence_of_decisions() -> None:
    """With p = 1/2 the decisions of neighbouring elements are independent:
    P(both up) = 1/4 within 5 sigma."""
    fmt = _fmt("fp8_e4m3")
    n = 1 << 18
    x = torch.full((n,), 1.0625)
    up = lp.quantize(x, fmt, "stochastic", generator=_gen(9)) > x
    both = int((up[:-1] & up[1:]).sum())
    assert _binomial_ok(both, n - 1, 0.25, z=6), both


# --------------------------------------------------------------------------------------
# determinism and stream semantics
# --------------------------------------------------------------------------------------


def test_same_seed_same_result_and_successive_calls_differ() -> None:
    """Same generator state -> identical result; the next call on the same generator, and
    a generator with another seed, give different results."""
    fmt = _fmt("fp8_e4m3")
    x = torch.full((4096,), 1.0625)
    a = lp.quantize(x, fmt, "stochastic", generator=_gen(0))
    b = lp.quantize(x, fmt, "stochastic", generator=_gen(0))
    assert torch.equal(a, b)
    g = _gen(0)
    c1 = lp.quantize(x, fmt, "stochastic", generator=g)
    c2 = lp.quantize(x, fmt, "stochastic", generator=g)
    assert torch.equal(c1, a)
    assert not torch.equal(c1, c2)
    d = lp.quantize(x, fmt, "stochastic", generator=_gen(1))
    assert not torch.equal(a, d)
    for rb in (None, 4):
        e1 = lp.quantize(x, fmt, "stochastic", generator=_gen(5), rand_bits=rb)
        e2 = lp.quantize(x, fmt, "stochastic", generator=_gen(5), rand_bits=rb)
        assert torch.equal(e1, e2)


def test_default_generator_works() -> None:
    """generator=None draws from torch's default generator and is still admissible."""
    fmt = _fmt("fp8_e4m3")
    y = lp.quantize(torch.full((1000,), 1.0625, dtype=torch.float64), fmt, "stochastic")
    _count_large(y, 1.0625, fmt)


def test_stream_semantics() -> None:
    """Element i (logical row-major order) is decided by the i-th draw of the stream,
    independent of shape, layout, dtype and other elements' values (see module docstring)."""
    fmt = _fmt("fp8_e4m3")
    x = torch.full((1200,), 1.0625)
    a = lp.quantize(x, fmt, "stochastic", generator=_gen(0))
    # prefix
    assert torch.equal(lp.quantize(x[:100], fmt, "stochastic", generator=_gen(0)), a[:100])
    # shape
    b = lp.quantize(x.reshape(30, 40), fmt, "stochastic", generator=_gen(0))
    assert torch.equal(b.flatten(), a)
    # layout: a transposed view follows its logical order
    xt = x.reshape(40, 30).t()
    c = lp.quantize(xt, fmt, "stochastic", generator=_gen(0))
    assert torch.equal(c, a.reshape(30, 40))
    # values of the other elements
    y = x.clone()
    y[::2] = 3.0
    d = lp.quantize(y, fmt, "stochastic", generator=_gen(0))
    assert torch.equal(d[1::2], a[1::2])
    # dtype
    e = lp.quantize(x.double(), fmt, "stochastic", generator=_gen(0))
    assert torch.equal(e.float(), a)


def test_wide_index_stream_extends_the_narrow_one() -> None:
    """Tensors of more than 2**31 elements count indices in int64 (``i_hi`` joins the hash);
    below that the int32 count gives the same words, and ``i_hi`` changes them."""
    from lowprec.numerics.kernel import _lowbias32, random_bits

    seed = torch.tensor([123, -456], dtype=torch.int32)
    narrow = random_bits(torch.arange(5000, dtype=torch.int32), seed)
    assert torch.equal(random_bits(torch.arange(5000), seed), narrow)
    assert int(_lowbias32(torch.zeros((), dtype=torch.int32))) == 0
    lo = torch.arange(10, dtype=torch.int32)
    one = torch.ones((), dtype=torch.int32)
    hi_one = _lowbias32(lo ^ seed[0] ^ _lowbias32(one)) ^ seed[1]  # indices 2**32 + lo
    assert not torch.equal(hi_one, narrow[:10])


# --------------------------------------------------------------------------------------
# overflow, signs, out=
# --------------------------------------------------------------------------------------


def test_stochastic_overflow() -> None:
    """Above max, the up outcome overflows: inf (fp16 default), NaN (e4m3, overflow=inf),
    max (saturate)."""
    n = 1 << 16
    fp16 = _fmt("fp16")
    x = 65504.0 + 8.0  # p = 1/4 towards the unbounded 65536
    y = _sr(x, fp16, n, seed=1)
    assert _binomial_ok(int(torch.isinf(y).sum()), n, 0.25)
    assert _count_large(y, x, fp16) == int(torch.isinf(y).sum())
    assert bool((_sr(x, fp16, n, seed=1, overflow="saturate") == 65504.0).all())
    e4 = _fmt("fp8_e4m3")
    y = _sr(456.0, e4, n, seed=2, overflow="inf")  # p = 1/4 towards 480
    assert _binomial_ok(int(torch.isnan(y).sum()), n, 0.25)
    assert bool((_sr(456.0, e4, n, seed=2) == 448.0).all())  # default: saturate


def test_stochastic_signed_zero_and_specials() -> None:
    """Tiny negatives round to -0.0 (not +0.0); NaN stays NaN, ±inf stays ±inf (fp16)."""
    fp16 = _fmt("fp16")
    x = torch.tensor([-1e-30, 1e-30, -0.0, 0.0, math.nan, math.inf, -math.inf])
    y = lp.quantize(x, fp16, "stochastic", generator=_gen(0))
    assert y[:4].tolist() == [0.0] * 4
    assert torch.signbit(y[:4]).tolist() == [True, False, True, False]
    assert math.isnan(y[4].item())
    assert y[5:].tolist() == [math.inf, -math.inf]


def test_stochastic_fixed_point_asymmetric_saturation() -> None:
    """Fixed point saturates at k_min 2**-fl / k_max 2**-fl in stochastic mode too."""
    fmt = _fmt("fxp12")
    spec = spec_of(fmt)
    assert isinstance(spec, FixedSpec)
    hi = float(spec.kmax * spec.scale)
    lo = float(spec.kmin * spec.scale)
    x = torch.tensor([hi + 0.001, lo - 0.001, 1e9, -1e9] * 100, dtype=torch.float64)
    y = lp.quantize(x, fmt, "stochastic", generator=_gen(0))
    assert y.reshape(-1, 4).unique(dim=0).tolist() == [[hi, lo, hi, lo]]


@pytest.mark.parametrize("mode", ["nearest", "stochastic"])
def test_out_argument(mode: str) -> None:
    """out= writes the result into the given tensor (also in place, out=x) and returns it."""
    fmt = _fmt("fp8_e4m3")
    x = torch.linspace(-500, 500, 10001)
    want = lp.quantize(x, fmt, mode, generator=_gen(4))
    out = torch.empty_like(x)
    r = lp.quantize(x, fmt, mode, generator=_gen(4), out=out)
    assert r.data_ptr() == out.data_ptr()
    assert torch.equal(out, want)
    xx = x.clone()
    r2 = lp.quantize(xx, fmt, mode, generator=_gen(4), out=xx)
    assert r2.data_ptr() == xx.data_ptr()
    assert torch.equal(xx, want)


def test_rand_bits_probability_is_exact_fraction() -> None:
    """Reference sanity for the cases above: floor(p 2**k)/2**k on exact rationals."""
    spec = spec_of(_fmt("fp8_e4m3"))
    assert sr_up_probability(1.0 + 0.3 / 8, spec, 2) == Fraction(1, 4)
    assert sr_up_probability(1.0 + 0.2 / 8, spec, 2) == 0
    assert sr_up_probability(1.0 + 0.99 / 8, spec, 2) == Fraction(3, 4)
