"""Recipes with product / accumulate: every product of a step runs through lowprec's mac."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowprec as lp
from lowprec.numerics import mac
from lowprec.train import mac_ops

E4M3, E5M2 = "fp8_e4m3", "fp8_e5m2"
ACC = lp.FloatingPoint(5, 4)  # a narrow accumulator: sums differ from exact ones
PROD = lp.FloatingPoint(5, 6)


def _recipe(**kw: object) -> lp.Recipe:
    base = dict(ops=("linear", "conv", "matmul"), input=E4M3, weight=E4M3, error=E5M2,
                product=PROD, accumulate=ACC, accumulate_block=3)
    return lp.Recipe(**{**base, **kw})


def _mac(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return lp.mac_matmul(a, b, product=PROD, accumulate=ACC, block=3)


def _q(x: torch.Tensor, fmt: str) -> torch.Tensor:
    return lp.quantize(x.detach(), fmt)


def test_linear_forward_and_backward_are_mac_products_of_rounded_operands() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(7, 5, bias=False)
    lp.prepare(layer, _recipe())
    x = torch.randn(4, 7, requires_grad=True)
    c = torch.randn(4, 5)
    y = layer(x)
    (y * c).sum().backward()
    xq, wq, gq = _q(x, E4M3), layer.weight.detach(), _q(c, E5M2)
    assert torch.equal(wq, _q(wq, E4M3))  # stored in its format
    assert torch.equal(y.detach(), _mac(xq, wq.T))
    assert torch.equal(x.grad, _mac(gq, wq))  # grad-input: reduce over the 5 outputs
    assert torch.equal(layer.weight.grad, _mac(gq.T, xq))  # grad-weight: over the 4 rows
    assert not torch.equal(y.detach(), xq @ wq.T)  # the accumulator did round


def test_conv_forward_and_backward_are_mac_products_of_rounded_operands() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    lp.prepare(conv, _recipe())
    x = torch.randn(2, 2, 5, 5, requires_grad=True)
    c = torch.randn(2, 3, 5, 5)
    y = conv(x)
    (y * c).sum().backward()
    xq, wq, gq = _q(x, E4M3), conv.weight.detach(), _q(c, E5M2)
    assert torch.equal(y.detach(), lp.mac_conv2d(xq, wq, None, 1, 1, product=PROD,
                                                 accumulate=ACC, block=3))
    # grad-weight: dW[o, (c, r, s)] reduces over (n, y, x) in that order
    cols = F.unfold(xq, 3, padding=1).permute(0, 2, 1).reshape(-1, 18)
    gm = gq.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.equal(conv.weight.grad, _mac(gm, cols).view(3, 2, 3, 3))
    # grad-input (stride 1): correlation of ĝ with the flipped kernel, k = (o, r, s)
    gcols = F.unfold(gq, 3, padding=1).permute(0, 2, 1).reshape(-1, 27)
    wt = wq.flip(2, 3).transpose(0, 1).reshape(2, 27)
    want = _mac(gcols, wt.T).view(2, 25, 2).permute(0, 2, 1).reshape(2, 2, 5, 5)
    assert torch.equal(x.grad, want)


@pytest.mark.parametrize("stride,padding,dilation,groups",
                         [(1, 0, 1, 1), (2, 1, 1, 1), (2, 2, 2, 2), (3, 0, 1, 1), (1, 1, 1, 3)])
def test_conv_geometry_matches_torch_with_exact_arithmetic(stride: int, padding: int,
                                                           dilation: int, groups: int) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(6, 6 // groups, 3, 3, dtype=torch.float64, generator=gen,
                    requires_grad=True)
    exact = [mac_ops.Arith(None, lp.RoundTo(lp.FloatingPoint(11, 52)), 1000)] * 3
    y = mac_ops.run(F.conv2d, "conv2d", (x, w, None, stride, padding, dilation, groups), {},
                    exact)
    y0 = F.conv2d(x, w, None, stride, padding, dilation, groups)
    g = torch.randn(y0.shape, dtype=torch.float64, generator=gen)
    got, want = torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y0, (x, w), g)
    torch.testing.assert_close(y, y0, rtol=0, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = mac.mac_bmm

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls[0] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mac, "mac_bmm", counted)
    return calls


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_mac_runs_forward_and_backward_only_with_accumulate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count(monkeypatch)
    model = lp.prepare(_mlp(), _recipe())
    loss = model(torch.randn(4, 6)).sum()
    assert calls[0] == 2  # one forward product per linear
    loss.backward()
    assert calls[0] == 5  # + grad-weight of both, grad-input of the second (data needs none)
    calls[0] = 0
    plain = lp.prepare(_mlp(), _recipe(product=None, accumulate=None))
    plain(torch.randn(4, 6)).sum().backward()
    assert calls[0] == 0


def _step(recipe: lp.Recipe, seed: int) -> list[torch.Tensor]:
    model = lp.prepare(_mlp(), recipe, seed=seed)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(9))
    out = model(x)
    out.square().sum().backward()
    return [out.detach(), *(p.grad for p in model.parameters())]


def test_stochastic_accumulation_is_reproducible() -> None:
    sr = _recipe(accumulate=lp.QuantSpec(lp.FloatingPoint(5, 3), "stochastic"), error=None)
    a, b, c = _step(sr, 0), _step(sr, 0), _step(sr, 1)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


BRIEF_TOML = """
name = "fp8_fp16acc"
ops = ["linear", "conv", "matmul", "attention"]
accumulate_block = 32
[input]
format = "fp8_e4m3"
[weight]
format = "fp8_e4m3"
[error]
format = "fp8_e5m2"
[accumulate]
format = "fp16"
"""


def test_fp8_fp16acc_toml_trains_on_digits() -> None:
    from lowprec.study.data import load_dataset
    from lowprec.study.models import build_model

    recipe = lp.Recipe.from_toml(BRIEF_TOML)
    assert recipe.accumulate.format == lp.formats.get("fp16") and recipe.product is None
    assert lp.Recipe.from_toml(recipe.to_toml()) == recipe
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = lp.prepare(build_model("small_cnn", 10, 1, 8), recipe)
    opt = lp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
    x, y = ds.train_x[:16], ds.train_y[:16]
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("table,match", [
    ({"accumulate": "fp16"}, "give the ops"),
    ({"ops": ["linear"], "accumulate": "fp16", "accumulate_block": 0}, "accumulate_block"),
    ({"ops": ["linear"], "product": {"format": "fp16", "scaling": {"granularity": "tensor"}}},
     "scaling"),
])
def test_bad_mac_recipes_name_the_problem(table: dict[str, object], match: str) -> None:
    with pytest.raises(lp.RecipeError, match=match):
        lp.Recipe.from_dict(table)


def test_unsupported_product_op_is_a_clear_error() -> None:
    model = lp.prepare(nn.ConvTranspose2d(2, 2, 3), _recipe(ops=("conv",)))
    with pytest.raises(NotImplementedError, match="conv_transpose2d"):
        model(torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("name", ["fp8_acc128", "fp16_acc", "pot7_fxacc"])
def test_mac_presets_round_inside_products(name: str) -> None:
    recipe = lp.recipes.get(name)
    assert recipe.emulates_mac and recipe.accumulate is not None


class _Attention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_attention_products_run_through_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count(monkeypatch)
    recipe = lp.Recipe(ops=("attention",), accumulate="fp32", accumulate_block=4)
    model = lp.prepare(_Attention(), recipe)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(i),
                           requires_grad=True) for i in range(3))
    out = model(q, k, v)
    assert calls[0] == 2  # QK^T and P.V
    out.sum().backward()
    assert calls[0] == 6  # both backward products of each
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,conv", [((2, 4, 9), nn.Conv1d(4, 6, 3, stride=2, padding=1)),
                                        ((4, 9), nn.Conv1d(4, 6, 3, padding="same")),
                                        ((4, 6, 5), nn.Conv2d(4, 2, 3, padding="same"))])
def test_conv1d_and_unbatched_convs_match_torch(shape: tuple[int, ...], conv: nn.Module) -> None:
    torch.manual_seed(4)
    x = torch.randn(shape, requires_grad=True)
    want = conv(x)
    lp.prepare(conv, lp.Recipe(ops=("conv",), accumulate="fp32", accumulate_block=1000))
    got = conv(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(got.sum(), x)[0]
    torch.testing.assert_close(g, torch.autograd.grad(want.sum(), x)[0], rtol=1e-5, atol=1e-6)
