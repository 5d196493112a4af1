"""Multiplier-free power-of-two products: bit-exact against float multiplication."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lowprec as lp
from lowprec.numerics import pot
from lowprec.study.models import build_model


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaN matching NaN (IEEE leaves the NaN payload open)."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(_bits(a)[~nan], _bits(b)[~nan])


def _pot7(t: torch.Tensor) -> torch.Tensor:
    return lp.quantize(t, "pot7")


def test_mul_every_exponent_pair_matches_ieee_multiply() -> None:
    g = torch.Generator().manual_seed(0)
    n = 100_000
    w = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    w = w.view(torch.float32).clone()  # every exponent: subnormals, inf, NaN included
    w[::97], w[1::97] = 0.0, -0.0
    k = torch.randint(-126, 128, (n,), generator=g).float()
    p = torch.ldexp(torch.ones(n), k) * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
    p[::89], p[1::89] = 0.0, -0.0
    ref = w * p
    assert ((ref != 0) & (ref.abs() < 2**-126)).sum() > 1000  # subnormal results exercised
    assert torch.isinf(ref).sum() > 1000  # overflow exercised
    assert _same(pot.mul(w, p), ref)


def test_mul_edges_of_pot7_range_and_float32_range() -> None:
    f32 = torch.finfo(torch.float32)
    ws = torch.tensor([f32.max, -f32.max, f32.tiny, -f32.tiny, f32.smallest_normal * 1.5,
                       1.0 + 2**-23, 1.5, 3.0 * 2**-100, (1 + 2**-22) * 2**-120, 2**-149,
                       0.0, -0.0, math.inf, -math.inf, math.nan, 1.0])
    ends = torch.tensor([2.0**31, -(2.0**31), 2.0**-31, -(2.0**-31), 0.0, -0.0, 1.0])
    w, p = ws[:, None], ends[None, :]
    assert _same(pot.mul(w, p), w * p)
    # ties at the subnormal boundary round half to even, as IEEE does
    w = torch.tensor([3.0 * 2**-126, 5.0 * 2**-126, (1 + 2**-23) * 2**-126])
    p = torch.full((3,), 2.0**-24)
    assert _same(pot.mul(w, p), w * p)


@pytest.mark.parametrize("bad", [0.75, math.inf, math.nan, 2.0**-130])
def test_non_power_of_two_operand_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="not 0 or"):
        pot.mul(torch.ones(2), torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="float32"):
        pot.linear(torch.ones(2, 2, dtype=torch.float64), torch.ones(3, 2))


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 2), (2, 1), ((2, 1), (0, 1))])
def test_conv2d_forward_and_backward_products_are_bit_exact(stride, padding) -> None:
    g = torch.Generator().manual_seed(1)
    x = _pot7(torch.randn(3, 4, 9, 8, generator=g))
    x[0, 0] = 0.0
    w = torch.randn(5, 4, 3, 3, generator=g)
    b = torch.randn(5, generator=g)
    y = pot.conv2d(x, w, b, stride, padding)
    assert torch.equal(_bits(y), _bits(pot.conv2d(x, w, b, stride, padding, reference=True)))
    assert torch.allclose(y, F.conv2d(x, w, b, stride, padding), atol=1e-5)
    err = _pot7(torch.randn_like(y))
    xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(xx, ww, None, stride, padding).backward(err)
    gi = pot.conv2d_grad_input(err, w, (9, 8), stride, padding)
    gw = pot.conv2d_grad_weight(err, x, 3, stride, padding)
    ref_gi = pot.conv2d_grad_input(err, w, (9, 8), stride, padding, reference=True)
    ref_gw = pot.conv2d_grad_weight(err, x, 3, stride, padding, reference=True)
    assert torch.equal(_bits(gi), _bits(ref_gi)) and torch.equal(_bits(gw), _bits(ref_gw))
    assert torch.allclose(gi, xx.grad, atol=1e-5) and torch.allclose(gw, ww.grad, atol=1e-4)


def test_linear_products_are_bit_exact_including_overflow_and_underflow() -> None:
    g = torch.Generator().manual_seed(2)
    x = _pot7(torch.randn(6, 40, generator=g) * 1e3)
    x[:, :3] = torch.tensor([2.0**31, -(2.0**-31), 0.0])
    w = torch.randn(7, 40, generator=g)
    w[0, :3] = torch.tensor([3e38, 1e-38, -1.0])  # -> inf, -> subnormal
    w[1, 0] = 1e-40  # a subnormal weight: the documented FPU fallback
    for fn, args in [(pot.linear, (x, w)), (pot.linear_grad_weight, (x[:, :7], x)),
                     (pot.linear_grad_input, (x[:, :7], w))]:
        assert _same(fn(*args), fn(*args, reference=True))
    assert torch.isinf(pot.linear(x, w)[:, 0]).all()
    ref = x @ w.t()
    finite = torch.isfinite(ref)
    assert torch.allclose(pot.linear(x, w)[finite], ref[finite], rtol=1e-4)


def _layer_products(m: torch.nn.Module, x: torch.Tensor, err: torch.Tensor,
                    reference: bool) -> dict[str, torch.Tensor]:
    """Forward, grad-input and grad-weight products of layer ``m`` by the pot kernels."""
    w = m.weight.detach()
    if isinstance(m, torch.nn.Linear):
        return {"forward": pot.linear(x, w, reference=reference),
                "grad_input": pot.linear_grad_input(err, w, reference=reference),
                "grad_weight": pot.linear_grad_weight(err, x, reference=reference)}
    conv = (m.stride, m.padding)
    return {"forward": pot.conv2d(x, w, None, *conv, reference=reference),
            "grad_input": pot.conv2d_grad_input(err, w, x.shape[-2:], *conv,
                                                reference=reference),
            "grad_weight": pot.conv2d_grad_weight(err, x, m.kernel_size, *conv,
                                                  reference=reference)}


def test_products_of_a_pot7_network_are_bit_exact() -> None:
    """small_cnn on 8x8 inputs with its outputs rounded to pot7 and weights to fp12, as a
    prepared pot7 model has them: layers fed by ReLU/max-pool get pow2 inputs; errors pot7."""
    torch.manual_seed(3)
    model = build_model("small_cnn", 10, 1, 8)
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str):
        def hook(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            seen[name] = (args[0].detach(), out.detach())
            return _pot7(out)
        return hook

    with torch.no_grad():
        for name, m in layers.items():
            lp.quantize(m.weight, "fp12", out=m.weight)
            m.register_forward_hook(keep(name))
        model(torch.randn(4, 1, 8, 8))
    for name, m in layers.items():
        x, y = seen[name]
        err = _pot7(torch.randn_like(y))
        if name == "conv1":  # its input is the data, not pow2: no multiplier-free forward
            x = _pot7(x)
        else:
            pot.check_pow2(x)
        got, ref = _layer_products(m, x, err, False), _layer_products(m, x, err, True)
        for k in got:
            assert torch.equal(_bits(got[k]), _bits(ref[k])), (name, k)
