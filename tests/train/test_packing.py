"""Packed storage: exact codes, saved tensors, checkpoints."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

import lowprec as lp
from lowprec import recipes
from lowprec.study.models import build_model
from lowprec.train import packing
from lowprec.train import prepare as training

PRESETS = ["pot7", "fp12", "fxp12", "fp8_e4m3", "fp8_e5m2", "fp16", "bf16", "fp6_e3m2",
           "fp4_e2m1", "int8"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 7, 8, 9, 12, 13, 16])
def test_pack_codes_round_trip_in_the_smallest_container(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (3, 7), generator=torch.Generator().manual_seed(bits))
    codes[0, :2] = torch.tensor([0, 2**bits - 1])
    data, meta = packing.pack_codes(codes, bits)
    dtype, nbytes = ((torch.uint8, 11) if bits <= 4 else (torch.uint8, 21) if bits <= 8
                     else (torch.int16, 42))
    assert data.dtype == dtype and data.nbytes == nbytes
    assert torch.equal(packing.unpack_codes(data, meta).long(), codes)


@pytest.mark.parametrize("name", PRESETS)
def test_codes_are_the_formats_own(name: str) -> None:
    fmt = lp.formats.get(name)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(5000, generator=g) * s for s in (1e-3, 1.0, 1e3)])
    y = lp.quantize(x, fmt, overflow="saturate" if fmt.has_nan else None)
    extremes = torch.tensor([fmt.max, -fmt.max_negative, fmt.min_subnormal, fmt.min_normal, 0.0])
    y = torch.cat([y, extremes.float()])
    codes = packing.encode(fmt, y)
    expected = fmt.encode(y)
    if isinstance(fmt, lp.FixedPoint):  # -0.0: the extra code 2**wl
        expected[_bits(y) == -(2**31)] = 2**fmt.wl
    assert codes is not None and torch.equal(codes.long(), expected)
    assert torch.equal(_bits(packing.decode(fmt, codes)), _bits(y))
    own = expected.clone()  # the format's own codes: -0.0 is its code 0
    if isinstance(fmt, lp.FixedPoint):
        own[own == 2**fmt.wl] = 0
    assert torch.equal(packing.decode(fmt, codes), fmt.decode(own))


def test_only_exactly_representable_tensors_are_encoded() -> None:
    pot7 = lp.formats.get("pot7")
    y = lp.quantize(torch.randn(10_000), pot7)
    assert packing.encode(pot7, y) is not None
    for bad in (0.75, float("nan"), float("inf"), 2.0**40, 1e-45):
        z = y.clone()
        z[-1] = bad  # one value past the sampled head still fails
        assert packing.encode(pot7, z) is None
    assert packing.encode(pot7, y.double()) is None
    assert packing.encode("fp32", torch.ones(3)) is None  # 32-bit codes: nothing to gain


def test_fixed_point_keeps_the_sign_of_zero() -> None:
    fxp = lp.formats.get("fxp12")
    y = torch.tensor([-0.0, 0.0, -8.0, 2.0**-8, -(2.0**-8), 7.99609375])
    codes = packing.encode(fxp, y)
    assert codes is not None and int(codes[0]) == 2**12
    data, meta = packing.pack_codes(codes, 13)
    back = packing.decode(fxp, packing.unpack_codes(data, meta))
    assert torch.equal(_bits(back), _bits(y))


def _train(recipe_name: str, pack: bool, steps: int = 2) -> tuple[list[torch.Tensor], list]:
    """Prepared small_cnn, SGD steps; returns (grads + params, hook stats per step)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8)
    recipe = recipes.get(recipe_name)
    training.prepare(model, recipe, seed=5)
    opt = training.wrap_optimizer(torch.optim.SGD(model.parameters(), 0.1, momentum=0.9), recipe)
    hook = packing.PackHook(recipe if pack else [])
    hook.attach(model)
    g = torch.Generator().manual_seed(1)
    stats = []
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        stats.append((hook.held_bytes, hook.packed))
        opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    return grads + [p.detach().clone() for p in model.parameters()], stats


@pytest.mark.parametrize("recipe_name", ["pot7", "fxp12_sr"])
def test_training_with_packing_is_bit_identical(recipe_name: str) -> None:
    plain, fp32_stats = _train(recipe_name, pack=False)
    packed, stats = _train(recipe_name, pack=True)
    for a, b in zip(plain, packed, strict=True):
        assert torch.equal(_bits(a), _bits(b))
    (held32, n32), (held, n) = fp32_stats[-1], stats[-1]
    # relu1, pool1, relu2, avg-pool outputs (36,864 values) packed; indices and input kept
    assert n32 == 0 and n == 4
    code_bytes = 1 if recipe_name == "pot7" else 2
    assert held32 - held == 36_864 * (4 - code_bytes)


def test_views_and_strided_saved_tensors_unpack_exactly() -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 5, generator=g, requires_grad=True)
    a = torch.randn(5, 6, generator=g, requires_grad=True)

    def run(hook: packing.PackHook | None) -> list[torch.Tensor]:
        a.grad = w.grad = None
        x = lp.quantize(a.detach(), "pot7").requires_grad_()
        with hook or torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            h = (x * 2).relu()
            out = (h.t() * w).sum() + (h[:, 1:] ** 2).sum() + h.unsqueeze(1).expand(5, 3, 6).sum()
        out.backward()
        return [w.grad.clone(), x.grad.clone()] if x.grad is not None else [w.grad.clone()]

    hook = packing.PackHook(["pot7"])
    got, ref = run(hook), run(None)
    assert hook.packed >= 1
    for a_, b_ in zip(got, ref, strict=True):
        assert torch.equal(_bits(a_), _bits(b_))


def test_packed_saved_tensors_takes_a_per_tensor_choice() -> None:
    x = lp.quantize(torch.randn(64, 32), "fp12").requires_grad_()
    chosen = []

    def choose(t: torch.Tensor) -> lp.Format | None:
        chosen.append(t.shape)
        return lp.formats.get("fp12")

    with packing.packed_saved_tensors(choose) as hook:
        y = (x * 1.0).sin()
    y.sum().backward()
    assert chosen and hook.packed == 1
    assert torch.equal(x.grad, (x * 1.0).cos().detach())


def test_checkpoint_round_trip_is_bit_identical(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8)
    training.prepare(model, recipes.get("fp12_sr"))  # weights now hold fp12 values
    state = copy.copy(model.state_dict())
    state["acts"] = lp.quantize(torch.randn(3, 5), "pot7")
    state["fp4"] = lp.quantize(torch.randn(7), "fp4_e2m1")  # odd count of nibbles
    state["raw"] = torch.randn(4)
    state["step"] = torch.tensor(12)
    state["lr"] = 0.01
    path = tmp_path / "ckpt.pt"
    packing.save_packed(state, path, ["pot7", "fp12", "fp4_e2m1"])
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # the temporary file was renamed
    back = packing.load_packed(path)
    assert list(back) == list(state)
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == back[k].dtype and v.shape == back[k].shape
            assert torch.equal(v.view(torch.int32) if v.is_floating_point() else v,
                               back[k].view(torch.int32) if v.is_floating_point() else back[k])
        else:
            assert back[k] == v
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    assert path.stat().st_size < 0.7 * plain.stat().st_size
    with pytest.raises(ValueError, match="not a lowprec packed checkpoint"):
        packing.load_packed(plain)
