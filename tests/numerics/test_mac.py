"""``mac_matmul`` / ``mac_bmm`` / ``mac_conv2d`` against an exact rational model of the recurrence
``s <- Q_acc(s + sum_block Q_prod(a b))`` (``reference.round_ref`` rounds each exact value)."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from reference import (
    DETERMINISTIC_MODES,
    PRESET_SPECS,
    mismatches_np,
    round_ref,
    spec_of,
    sr_outcomes,
)

import lowprec as lp
from lowprec.numerics import mac_native
from lowprec.numerics.mac import (
    RoundTo,
    mac_bmm,
    mac_conv2d,
    mac_conv2d_weight_grad,
    mac_matmul,
)


def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make :mod:`lowprec.numerics.mac` take its torch path (the native kernel declines)."""
    monkeypatch.setattr(mac_native, "_function", lambda: None)


@pytest.fixture(autouse=True, params=["native", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both implementations of the recurrence: the fused C++ kernel
    (:mod:`lowprec.numerics.mac_native`, where it applies) and the torch path."""
    if request.param == "torch":
        torch_path(monkeypatch)
    elif mac_native._function() is None:
        pytest.skip("the native MAC kernel could not be built here (no C++ compiler?)")
    return request.param

#: accumulator formats and the (emin, emax, kmax) of test inputs ``k 2**e`` that exercise them
ACC_FORMATS = {
    "fp16": (-10, 1, 15),
    "bf16": (-10, 1, 15),
    "fp8_e4m3": (-5, -1, 7),
    "fp8_e5m2": (-6, 1, 15),
    "fxp16_8": (-7, -1, 15),
}
K = 37
BLOCKS = (1, 4, 16, K, K + 5)


def fmt_of(name: str) -> lp.Format:
    return lp.FixedPoint(16, 8) if name == "fxp16_8" else lp.formats.get(name)


def lowbit(shape: tuple[int, ...], emin: int, emax: int, kmax: int, seed: int) -> torch.Tensor:
    """float32 values ``k 2**e`` (few significant bits: every float64 sum below is exact)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-kmax, kmax + 1, shape, generator=g).float()
    return torch.ldexp(k, torch.randint(emin, emax + 1, shape, generator=g))


Rule = tuple[lp.Format, str, str | None]  # format, mode, overflow


def exact_sum(terms: list[float | Fraction]) -> float | Fraction:
    """Exact rational sum; float arithmetic (inf, NaN) once a term is not finite."""
    if all(isinstance(t, Fraction) or math.isfinite(t) for t in terms):
        return sum((Fraction(t) for t in terms), Fraction(0))
    return sum(float(t) for t in terms)


def mac_ref(a: torch.Tensor, b: torch.Tensor, product: Rule | None, accumulate: Rule | None,
            block: int) -> list[list[float]]:
    """The recurrence evaluated exactly, element by element (float32 result)."""
    a_, b_ = a.tolist(), b.tolist()
    m, k, n = len(a_), len(b_), len(b_[0])
    step = block if accumulate else max(k, 1)
    out = []
    for i in range(m):
        row = []
        for j in range(n):
            terms: list[float | Fraction] = [Fraction(a_[i][q]) * Fraction(b_[q][j])
                                             for q in range(k)]
            if product:
                terms = [round_ref(t, spec_of(product[0]), product[1], product[2]) for t in terms]
            acc: float | Fraction = Fraction(0)
            for k0 in range(0, k, step):
                acc = exact_sum([acc, *terms[k0:k0 + step]])
                if accumulate:
                    acc = round_ref(acc, spec_of(accumulate[0]), accumulate[1], accumulate[2])
            row.append(round_ref(acc, PRESET_SPECS["fp32"]))
        out.append(row)
    return out


def rounder(rule: Rule | None) -> RoundTo | None:
    return None if rule is None else RoundTo(rule[0], rule[1], overflow=rule[2])


def check(a: torch.Tensor, b: torch.Tensor, product: Rule | None, accumulate: Rule | None,
          block: int) -> None:
    got = mac_matmul(a, b, product=rounder(product), accumulate=rounder(accumulate), block=block)
    want = mac_ref(a, b, product, accumulate, block)
    assert got.dtype == torch.float32
    flat = got.flatten()
    bad, ex = mismatches_np(flat, flat, sum(want, []), signed_zero=False)
    assert bad == 0, (product, accumulate, block, ex)


@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
@pytest.mark.parametrize("name", ACC_FORMATS)
def test_accumulate_matches_reference(name: str, mode: str) -> None:
    emin, emax, kmax = ACC_FORMATS[name]
    a = lowbit((3, K), emin, emax, kmax, seed=1)
    b = lowbit((K, 4), emin, emax, kmax, seed=2)
    for block in BLOCKS:
        check(a, b, None, (fmt_of(name), mode, None), block)


@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
@pytest.mark.parametrize("name", ["bf16", "fp8_e4m3", "fp8_e5m2"])
def test_product_matches_reference(name: str, mode: str) -> None:
    emin, emax, kmax = ACC_FORMATS[name]
    a = lowbit((3, K), emin, emax, kmax, seed=3)
    b = lowbit((K, 4), emin, emax, kmax, seed=4)
    product = (fmt_of(name), mode, None)
    check(a, b, product, None, 1)
    for block in (1, 16):
        check(a, b, product, (fmt_of("fp16"), "nearest", None), block)


def test_plain_is_matmul() -> None:
    a, b = torch.randn(5, 33), torch.randn(33, 7)
    assert torch.equal(mac_matmul(a, b), a @ b)


def column(*values: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = ones(1, K)``, ``b = values`` as a column: the reduction sums ``values`` in order."""
    return torch.ones(1, len(values)), torch.tensor(values).reshape(-1, 1)


@pytest.mark.parametrize(("mode", "block", "want"), [
    ("nearest", 1, 1 + 2**-9),  # 1 + u/2 -> 1 (even); 1 + 3u/2 -> 1 + 2u (even)
    ("nearest_away", 1, 1 + 3 * 2**-10),  # 1 + u; then 1 + 5u/2 -> 1 + 3u
    ("nearest", 3, 1 + 2**-9),  # exact sum 1 + 2u is representable
])
def test_ties(mode: str, block: int, want: float) -> None:
    a, b = column(1.0, 2**-11, 3 * 2**-11)  # u = 2**-10, the fp16 spacing at 1
    got = mac_matmul(a, b, accumulate=RoundTo("fp16", mode), block=block)
    assert got.item() == want
    check(a, b, None, (fmt_of("fp16"), mode, None), block)


def test_rounds_exact_value_not_a_float32_one() -> None:
    """``1 + 2**-11 + 2**-40`` is above the fp16 midpoint; via float32 it would be a tie."""
    a, b = column(1.0, 2**-11, 2**-40)
    assert mac_matmul(a, b, accumulate="fp16", block=3).item() == 1 + 2**-10


@pytest.mark.parametrize(("name", "overflow", "block", "want"), [
    ("fp16", "inf", 1, math.inf),
    ("fp16", "saturate", 1, 65504.0 - 60000.0),
    ("fp16", "inf", 3, 60000.0),
    ("fp8_e4m3", "inf", 1, math.nan),
    ("fp8_e4m3", "saturate", 1, 448.0 - 400.0),
    ("fxp16_8", "saturate", 1, 128 - 2**-8 - 100.0),
])
def test_overflow(name: str, overflow: str, block: int, want: float) -> None:
    big = 400.0 if name == "fp8_e4m3" else 100.0 if name == "fxp16_8" else 60000.0
    a, b = column(big, big, -big)
    got = mac_matmul(a, b, accumulate=RoundTo(fmt_of(name), overflow=overflow), block=block)
    assert got.item() == want or (math.isnan(want) and math.isnan(got.item()))
    check(a, b, None, (fmt_of(name), "nearest", overflow), block)


def test_stochastic_stays_on_neighbours() -> None:
    """One rounding (block >= K): every result is one of the exact sum's two neighbours."""
    a, b = torch.rand(64, 9) + 1, torch.rand(9, 3)
    g = torch.Generator().manual_seed(5)
    got = mac_matmul(a, b, accumulate=RoundTo("bf16", "stochastic", generator=g), block=9)
    for i in range(64):
        for j in range(3):
            pairs = zip(a[i].tolist(), b[:, j].tolist(), strict=True)
            exact = exact_sum([Fraction(x) * Fraction(y) for x, y in pairs])
            assert got[i, j].item() in sr_outcomes(exact, PRESET_SPECS["bf16"])


#: largest spacing each format has where these tests round: products in [1, 1.4), sums < 32
GAP = {"bf16": 2**-3, "fp16": 2**-6, "fp8_e5m2": 2**-2}


@pytest.mark.parametrize(("product", "accumulate", "block"), [
    (None, "bf16", 1),
    (None, "bf16", 4),
    ("fp8_e5m2", None, 1),
    ("fp8_e5m2", "fp16", 2),
])
def test_stochastic_unbiased(product: str | None, accumulate: str | None, block: int) -> None:
    """``E[result]`` is the exact sum: every stochastic rounding is unbiased given the past.

    Each of ``T`` identical rows draws its own bits. A rounding of spacing ``g`` adds variance
    at most ``g**2 / 4``, so one result's variance is at most the sum of that over its
    roundings; the mean of the ``T`` results must lie within 6 standard errors.
    """
    trials, k = 20000, 16
    row = 1 + torch.arange(k, dtype=torch.float32) / 37  # many bits below bf16's spacing
    a, b = row.expand(trials, k), torch.ones(k, 1)
    g = torch.Generator().manual_seed(11)

    def sr(name: str | None) -> RoundTo | None:
        return None if name is None else RoundTo(name, "stochastic", generator=g)

    got = mac_matmul(a, b, product=sr(product), accumulate=sr(accumulate), block=block)
    exact = sum(Fraction(x) for x in row.tolist())
    var = (k * GAP[product] ** 2 if product else 0) / 4
    var += (-(-k // block) * GAP[accumulate] ** 2 if accumulate else 0) / 4
    assert abs(got.double().mean().item() - float(exact)) < 6 * math.sqrt(var / trials)


def test_stochastic_reproducible() -> None:
    a, b = torch.randn(50, 20), torch.randn(20, 6)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return mac_matmul(a, b, product=RoundTo("bf16", "stochastic", generator=g),
                          accumulate=RoundTo("fp16", "stochastic", generator=g), block=4)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_spec_forms_agree() -> None:
    a, b = torch.randn(6, 19), torch.randn(19, 5)
    forms = ["fp16", lp.formats.get("fp16"), RoundTo("fp16"),
             partial(lp.quantize, fmt="fp16", rounding="nearest")]
    outs = [mac_matmul(a, b, product=f, accumulate=f, block=4) for f in forms]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"block": 0}, ValueError),
    ({"block": 2.0}, ValueError),
    ({"accumulate": 16}, TypeError),
])
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    args = {"accumulate": "fp16", **kwargs}
    with pytest.raises(error):
        mac_matmul(torch.ones(2, 3), torch.ones(3, 2), **args)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        mac_matmul(torch.ones(2, 3), torch.ones(4, 2), accumulate="fp16")
    with pytest.raises(ValueError):
        mac_matmul(torch.ones(1, 2, 3), torch.ones(3, 2), accumulate="fp16")


def test_bmm_broadcasts_like_matmul() -> None:
    a, b = torch.randn(2, 1, 4, 9), torch.randn(3, 9, 5)
    got = mac_bmm(a, b, accumulate="bf16", block=2)
    assert got.shape == torch.matmul(a, b).shape
    for i in range(2):
        for j in range(3):
            want = mac_matmul(a[i, 0], b[j], accumulate="bf16", block=2)
            assert torch.equal(got[i, j], want)


def test_gradients_are_straight_through() -> None:
    a, b = torch.randn(4, 10, requires_grad=True), torch.randn(10, 3, requires_grad=True)
    grad = torch.randn(4, 3)
    mac_matmul(a, b, accumulate="fp8_e4m3", block=3).backward(grad)
    assert torch.allclose(a.grad, grad @ b.detach().T)
    assert torch.allclose(b.grad, a.detach().T @ grad)


CONV_CASES = [
    {"stride": 1, "padding": 1, "dilation": 1, "groups": 1},
    {"stride": 2, "padding": (1, 0), "dilation": 1, "groups": 2},
    {"stride": (1, 2), "padding": 2, "dilation": 2, "groups": 1},
]


@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv2d_gradients_are_straight_through(kw: dict) -> None:
    """Through the window view (overlapping windows of ``x``): ``F.conv2d``'s gradients."""
    x = torch.randn(2, 4, 7, 8).requires_grad_()
    w = torch.randn(6, 4 // kw["groups"], 3, 3).requires_grad_()
    y = mac_conv2d(x, w, None, **kw, accumulate="fp16", block=4)
    g = torch.randn(y.shape)
    got = torch.autograd.grad(y, (x, w), g)
    want = torch.autograd.grad(F.conv2d(x, w, None, **kw), (x, w), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv2d_plain_is_conv2d(kw: dict) -> None:
    x, w, bias = torch.randn(2, 4, 7, 8), torch.randn(6, 4 // kw["groups"], 3, 3), torch.randn(6)
    got = mac_conv2d(x, w, bias, **kw)
    torch.testing.assert_close(got, F.conv2d(x, w, bias, **kw), rtol=1e-5, atol=1e-5)


def im2col_ref(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int,
               groups: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per group: ``[n*y*x, (c, r, s)]`` patches and ``[(c, r, s), o]`` weights, by loops."""
    n, c_in, h, wd = x.shape
    c_out, c_g, kh, kw = w.shape
    xp = F.pad(x, (padding,) * 4)
    hy, wx = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = []
    for g in range(groups):
        rows = [[xp[i, g * c_g + c, y * stride + r, v * stride + s].item()
                 for c in range(c_g) for r in range(kh) for s in range(kw)]
                for i in range(n) for y in range(hy) for v in range(wx)]
        wg = w[g * (c_out // groups):(g + 1) * (c_out // groups)].reshape(c_out // groups, -1)
        out.append((torch.tensor(rows), wg.T.contiguous()))
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_rounded_matches_reference(groups: int) -> None:
    x = lowbit((1, 4, 4, 5), -6, 0, 15, seed=8)
    w = lowbit((4, 4 // groups, 3, 3), -6, 0, 15, seed=9)
    rule = (fmt_of("fp16"), "nearest", None)
    got = mac_conv2d(x, w, stride=1, padding=1, groups=groups, product=RoundTo("fp8_e5m2"),
                     accumulate=RoundTo("fp16"), block=4)
    for g, (cols, wm) in enumerate(im2col_ref(x, w, 1, 1, groups)):
        want = mac_ref(cols, wm, (fmt_of("fp8_e5m2"), "nearest", None), rule, 4)
        part = got[0, g * (4 // groups):(g + 1) * (4 // groups)].reshape(4 // groups, -1).T
        assert part.tolist() == want


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 2)])
def test_conv2d_weight_grad_matches_reference(stride: int, groups: int) -> None:
    """``dW[o, (c, r, s)]`` reduces over the ``(n, y, x)`` positions in row-major order."""
    x = lowbit((2, 4, 5, 5), -6, 0, 15, seed=10)
    w = torch.zeros(4, 4 // groups, 3, 3)
    g = lowbit((2, 4, *F.conv2d(x, w, stride=stride, padding=1, groups=groups).shape[2:]),
               -6, 0, 15, seed=11)
    got = mac_conv2d_weight_grad(x, g, (3, 3), stride, 1, 1, groups,
                                 product=RoundTo("fp8_e5m2"), accumulate=RoundTo("fp16"), block=4)
    rule, prod = (fmt_of("fp16"), "nearest", None), (fmt_of("fp8_e5m2"), "nearest", None)
    per = 4 // groups
    for k, (cols, _) in enumerate(im2col_ref(x, w, stride, 1, groups)):
        gm = g[:, k * per:(k + 1) * per].permute(1, 0, 2, 3).reshape(per, -1)
        want = mac_ref(gm, cols, prod, rule, 4)
        assert got[k * per:(k + 1) * per].reshape(per, -1).tolist() == want


@pytest.mark.parametrize("budget", [1 << 20, 64])
def test_chunked_layouts_match_reference(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Rows and blocks taken a few at a time (small ``_TERMS_BUDGET``), ``a`` row- or
    column-major (a transposed view, as in a weight gradient), 19 blocks: chunks of 8, 8, 2
    and 1 blocks; all against the exact recurrence."""
    from lowprec.numerics import mac

    monkeypatch.setattr(mac, "_TERMS_BUDGET", budget)
    emin, emax, kmax = ACC_FORMATS["fp16"]
    a = lowbit((5, 75), emin, emax, kmax, seed=12)
    b = lowbit((75, 3), emin, emax, kmax, seed=13)
    rule = (fmt_of("fp16"), "nearest", None)
    for lhs in (a, a.T.contiguous().T):
        check(lhs, b, None, rule, 4)
        check(lhs, b, (fmt_of("fp8_e5m2"), "nearest", None), rule, 2)


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"),
                         [(1, 0, 1, 1), (2, 1, 1, 2), ((1, 2), (2, 0), (2, 1), 1)])
def test_windows_are_unfold(stride, padding, dilation, groups) -> None:
    """The window view holds ``F.unfold``'s columns, per group, rows ``(n, y, x)``."""
    from lowprec.numerics.mac import _pair, windows

    x = torch.randn(2, 4, 7, 6, generator=torch.Generator().manual_seed(14))
    k, s, p, d = (3, 2), _pair(stride), _pair(padding), _pair(dilation)
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # [n, C kh kw, cells]
    want = cols.view(2, groups, -1, cols.shape[-1]).permute(1, 0, 3, 2).flatten(1, 2)
    got = windows(x, k, s, p, d, groups)
    assert torch.equal(got.reshape(want.shape), want)
