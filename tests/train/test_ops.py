"""Op-level rounding, checked on what aten's product ops actually receive."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gpt_fixture import GPT, ProductRecorder
from torch import nn

import lowprec as lp
from lowprec.numerics.quantize import quantize

OPERANDS = """
name = "operands_bf16_e5m2"
ops = ["all"]
[input]
format = "bf16"
[weight]
format = "bf16"
[error]
format = "fp8_e5m2"
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _in(t: torch.Tensor, fmt: str) -> bool:
    return bool(torch.equal(quantize(t, fmt), t))


def _step(model: nn.Module) -> tuple[ProductRecorder, ProductRecorder]:
    idx = torch.randint(64, (2, 16), generator=torch.Generator().manual_seed(0))
    with ProductRecorder() as fwd:
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
    with ProductRecorder() as bwd:
        loss.backward()
    return fwd, bwd


@pytest.mark.parametrize("sdpa", [False, True])
def test_operands_toml_every_product_in_format(sdpa: bool) -> None:
    torch.manual_seed(0)
    model = lp.prepare(GPT(sdpa=sdpa), lp.Recipe.from_toml(OPERANDS))
    fwd, bwd = _step(model)
    assert fwd.calls and bwd.calls
    for name, ops in fwd.calls:
        assert ops, f"fused op {name} ran unrounded"
        assert all(_in(t, "bf16") for t in ops), name
    for name, ops in bwd.calls:
        assert all(_in(t, "bf16") for t in ops), name
        assert any(_in(t, "fp8_e5m2") for t in ops), f"{name}: no e5m2 error operand"
    # 2 blocks x (4 linears + 2 attention products) + tied head
    assert len(fwd.calls) == 13
    cov = lp.coverage(model)
    assert not [r for r in cov if r["product"] and not r["rounded"]]
    head = [r for r in cov if r["module"] == "" and r["kind"] == "linear"]
    assert head and head[0]["rounded"]["weight"] == "bf16"


def test_unprepared_rounds_nothing() -> None:
    """The recorder's check is not vacuous: an fp32 GPT's operands are not all bf16."""
    torch.manual_seed(0)
    fwd, _ = _step(GPT())
    assert not all(_in(t, "bf16") for _, ops in fwd.calls for t in ops)


def test_tied_embedding_one_master() -> None:
    torch.manual_seed(0)
    recipe = lp.Recipe(ops=("linear", "embedding"), weight="fp8_e4m3", master_weights=True)
    model = lp.prepare(GPT(), recipe)
    _step(model)
    sd = model.state_dict()
    assert torch.equal(sd["wte.weight"], model.wte.weight.detach()) is False
    assert _in(model.wte.weight.detach(), "fp8_e4m3")


def test_checkpoint_recompute_same_bits_and_eval_deterministic() -> None:
    torch.manual_seed(0)
    recipe = lp.Recipe(ops=("all",), input={"format": "fp12", "rounding": "stochastic"},
                       error={"format": "fp12", "rounding": "stochastic"})
    model = lp.prepare(GPT(), recipe)
    idx = torch.randint(64, (2, 16))
    model.eval()
    assert torch.equal(model(idx), model(idx))
    model.train()

    class Ckpt(nn.Module):
        def __init__(self, use: bool) -> None:
            super().__init__()
            self.inner, self.use = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), use

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.use:
                return self.inner(x)
            return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)

    torch.manual_seed(1)
    plain = lp.prepare(Ckpt(False), recipe, seed=5)
    torch.manual_seed(1)
    ck = lp.prepare(Ckpt(True), recipe, seed=5)
    x = torch.randn(4, 8)
    for m in (plain, ck):
        m(x).square().sum().backward()
    grads = [p.grad for p in plain.parameters()], [p.grad for p in ck.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def _mantissa_at_most(t: torch.Tensor, man: int) -> bool:
    """Every value has at most ``man`` fraction bits (any exponent: scales included)."""
    m, _ = torch.frexp(t.double())
    return bool(torch.equal(torch.ldexp(m, torch.tensor(man + 1.0)).round(),
                            torch.ldexp(m, torch.tensor(man + 1.0))))


def _fp4_blocks(t: torch.Tensor, block: int = 16) -> bool:
    """Blocks of ``block`` along rows or along columns hold at most 8 magnitudes (E2M1's
    0, 0.5, 1, 1.5, 2, 3, 4, 6 times the block's scale)."""
    m = t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t.reshape(1, -1)
    for a in (m, m.T):
        a = a.abs()[:, : a.shape[1] // block * block].reshape(-1, block)
        if all(len(torch.unique(r)) <= 8 for r in a):
            return True
    return False


# forward operand mantissa bits, backward: every operand, and the error operand
FIELD = {"fp8_hybrid": (3, 3, 2), "mxfp8": (3, 3, 3), "bf16_mixed": (7, 7, 7),
         "nvfp4": (1, 1, 1), "mxfp4": (1, 1, 1), "pot7_operands": (0, 5, 0)}


@pytest.mark.parametrize("sdpa", [False, True])
@pytest.mark.parametrize("preset", sorted(FIELD))
def test_field_presets_round_every_gemm_operand(preset: str, sdpa: bool) -> None:
    torch.manual_seed(0)
    fwd_man, bwd_man, err_man = FIELD[preset]
    model = lp.prepare(GPT(sdpa=sdpa), preset)
    fwd, bwd = _step(model)
    for name, ops in fwd.calls:
        assert ops, f"fused op {name} ran unrounded"
        if preset == "nvfp4":  # E4M3 block scales: count magnitudes per block instead
            assert all(_fp4_blocks(t) for t in ops), name
        elif preset == "pot7_operands":  # the input operand is a power of two
            assert _mantissa_at_most(ops[0], 0) or _mantissa_at_most(ops[1], 0), name
        else:
            assert all(_mantissa_at_most(t, fwd_man) for t in ops), name
    for name, ops in bwd.calls:
        if preset == "nvfp4":
            assert all(_fp4_blocks(t) for t in ops), name
            continue
        assert all(_mantissa_at_most(t, bwd_man) for t in ops), name
        assert any(_mantissa_at_most(t, err_man) for t in ops), name


def test_pot7_operands_conv_after_batchnorm_and_avgpool() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AvgPool2d(2),
                        nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 3))
    lp.prepare(net, "pot7_operands")
    with ProductRecorder() as fwd:
        net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert fwd.calls
    for name, ops in fwd.calls:
        assert any(_mantissa_at_most(t, 0) for t in ops), name


def test_multihead_attention_op_by_op_and_rnn_listed_unrounded() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
            self.rnn = nn.GRU(16, 16, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.mha(x, x, x, need_weights=False)
            return self.rnn(y)[0]

    net = Net()
    x = torch.randn(2, 5, 16)
    want = net(x)
    lp.prepare(net, lp.Recipe(ops=("all",), input="fp32", weight="fp32"))
    torch.testing.assert_close(net(x), want)  # the decomposition computes the same function
    lp.unprepare(net)
    lp.prepare(net, lp.Recipe(ops=("all",), input="bf16", weight="bf16"))
    with ProductRecorder() as fwd:
        net(x)
    mha = [ops for name, ops in fwd.calls][:6]  # 3 projections, QK^T, PV, out projection
    assert all(_in(t, "bf16") for ops in mha for t in ops)
    cov = lp.coverage(net)
    assert [r["op"] for r in cov if r["product"] and not r["rounded"]] == ["gru"]


def test_inspect_lists_every_op_and_flags_unrounded_products(
        capsys: pytest.CaptureFixture[str]) -> None:
    from lowprec import cli
    assert cli.main(["inspect", "--model", "small_cnn", "--recipe", "fp8_hybrid"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "fp8_e4m3" in out and "0 product op(s) ran unrounded" in out
    toml = "name = 'lin'\nops = ['linear']\ninput = 'bf16'\n"
    path = Path(tempfile.mkdtemp()) / "lin.toml"
    path.write_text(toml)
    assert cli.main(["inspect", "--model", "small_cnn", "--recipe", str(path)]) == 0
    assert "conv1:conv2d" in capsys.readouterr().out  # convs are not rounded: flagged


def test_quantize_inside_autograd_and_quantizer_state() -> None:
    x = torch.linspace(-3, 3, 64, requires_grad=True)
    y = lp.quantize_ste(x, "fp8_e4m3")
    assert torch.equal(y, quantize(x.detach(), "fp8_e4m3"))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(64))  # straight through
    q = lp.Quantize(forward="bf16", backward="fp8_e5m2")
    x.grad = None
    g = torch.linspace(0.01, 1, 64)
    q(x).backward(g)
    assert torch.equal(x.grad, quantize(g, "fp8_e5m2"))
    spec = lp.QuantSpec("fp8_e4m3", scaling=lp.Scaling(method="history", history=2))
    a, b = lp.Quantizer(spec), lp.Quantizer(spec)
    a(torch.full((4,), 100.0))
    assert a.state_dict()["scale"]["count"] == 1 and b.state_dict()["scale"]["count"] == 0
    assert not hasattr(spec.scaling, "state")  # the recipe's config holds no state
