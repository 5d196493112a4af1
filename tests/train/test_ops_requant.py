"""MX backward requantization: every backward product's operands are blocks along that
product's reduction axis, checked on what aten's mm/bmm receive, against torch's E4M3."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from gpt_fixture import GPT, ProductRecorder
from torch.utils._python_dispatch import TorchDispatchMode

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



class _ConvBackward(TorchDispatchMode):
    """Records ``(grad_output, input, weight, output_mask)`` of every aten
    ``convolution_backward`` (``torch.nn.grad.conv*_input/_weight`` pass a placeholder for
    the operand they compute the gradient of)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[bool]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        if func is torch.ops.aten.convolution_backward.default:
            self.calls.append((*(t.detach().clone() for t in args[:3]), list(args[-1])))
        return func(*args, **(kwargs or {}))


def test_mxfp8_conv_backward_operands_blocked_along_their_reduction_axis() -> None:
    """dgrad gets the error in blocks along the output channels and the weight along its
    output-channel axis 0; wgrad gets input and error in blocks along the batch axis (as
    microxcaling's convolution)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(6, 40, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(40, 36, 3, stride=2))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(torch.exp2(torch.randint(-6, 7, p.shape).float()))
    lp.prepare(net, "mxfp8")
    x = torch.randn(34, 6, 7, 7) * torch.exp2(torch.randint(-6, 7, (34, 6, 7, 7)).float())
    y = net(x.requires_grad_())
    with _ConvBackward() as bwd:
        (y * torch.randn_like(y)).sum().backward()
    masks = [mask for *_, mask in bwd.calls]
    assert sorted(masks) == [[False, True, False]] * 2 + [[True, False, False]] * 2
    for g, inp, w, (dgrad, wgrad, _) in bwd.calls:
        if dgrad:  # reduces over the output channels
            assert _mx_blocks(g, 1) and _mx_blocks(w, 0) and not _mx_blocks(w, 1)
        if wgrad:  # reduces over the batch (and positions)
            assert _mx_blocks(g, 0) and _mx_blocks(inp, 0) and not _mx_blocks(inp, 1)


def test_mxfp8_conv_transpose_weight_blocked_along_its_input_channels() -> None:
    """A transposed convolution's weight is ``(C_in, C_out, ...)``: its forward reduces
    over axis 0."""
    torch.manual_seed(0)
    net = torch.nn.ConvTranspose2d(40, 36, 3)
    with torch.no_grad():
        net.weight.mul_(torch.exp2(torch.randint(-6, 7, net.weight.shape).float()))
    lp.prepare(net, "mxfp8")
    with ProductRecorder() as fwd:
        net(torch.randn(2, 40, 5, 5))
    ((_, (x, w)),) = fwd.calls
    assert _mx_blocks(x, 1) and _mx_blocks(w, 0) and not _mx_blocks(w, 1)
