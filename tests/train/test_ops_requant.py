"""MX backward requantization: every backward product's operands are blocks along that
product's reduction axis, checked on what aten's mm/bmm receive, against torch's E4M3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gpt_fixture import GPT, ProductRecorder

import lowprec as lp


def _mx_blocks(t: torch.Tensor, axis: int, block: int = 32) -> bool:
    """Blocks of ``block`` consecutive elements along ``axis`` (shorter if the axis is)
    each hold E4M3 values (torch's float8_e4m3fn cast) times one power-of-two scale
    ``2**max(floor(log2 amax) - 8, -127)`` (OCP MX: E4M3's largest exponent is 8, E8M0's
    smallest scale ``2**-127``)."""
    x = t.detach().double().movedim(axis, -1)
    n = x.shape[-1]
    size = min(block, n)
    x = x[..., : n // size * size].reshape(-1, size)
    amax = x.abs().amax(-1, keepdim=True)
    exp = torch.clamp(torch.floor(torch.log2(amax)) - 8, min=-127)
    scale = torch.where(amax > 0, torch.exp2(exp), 1.0)
    e = x / scale
    return bool(torch.equal(e.float().to(torch.float8_e4m3fn).double(), e))


def _backward_products(preset: str, sdpa: bool = False) -> list[tuple[str, list[torch.Tensor]]]:
    torch.manual_seed(0)
    model = GPT(sdpa=sdpa)
    with torch.no_grad():  # magnitudes varying over 2**±6 inside any block, either way
        for p in model.parameters():
            p.mul_(torch.exp2(torch.randint(-6, 7, p.shape).float()))
    lp.prepare(model, preset)
    idx = torch.randint(64, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
    with ProductRecorder() as bwd:
        loss.backward()
    return bwd.calls


def test_mxfp8_backward_operands_blocked_along_their_reduction_axis() -> None:
    calls = _backward_products("mxfp8")
    assert len(calls) >= 20
    forward_axis_too = []
    for name, (a, b) in calls:  # mm / bmm: a (.., M, K) @ b (.., K, N) reduce over K
        assert _mx_blocks(a, -1), name
        assert _mx_blocks(b, -2), name
        forward_axis_too.append(_mx_blocks(b, -1) and _mx_blocks(a, -2))
    assert not any(forward_axis_too)  # not merely every axis at once: along K only



def test_mxfp8_multihead_attention_chunked_weight_requantized_from_its_master() -> None:
    """nn.MultiheadAttention's q/k/v weights are views (chunks) of one parameter: each
    backward product gets the same chunk of the fp32 master, blocked along its axis."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 2)
    with torch.no_grad():
        mha.in_proj_weight.mul_(torch.exp2(torch.randint(-6, 7, (192, 64)).float()))
    lp.prepare(mha, "mxfp8")
    x = torch.randn(32, 2, 64, requires_grad=True)  # in_proj's dgrad: the chunks' masters
    y, _ = mha(x, x, x)
    with ProductRecorder() as bwd:
        y.square().sum().backward()
    assert len(bwd.calls) == 12  # out_proj 2, attention products 4, in_proj chunks 3 x 2
    for name, (a, b) in bwd.calls:
        assert _mx_blocks(a, -1) and _mx_blocks(b, -2), name
