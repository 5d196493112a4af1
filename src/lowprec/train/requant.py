"""Backward requantization of block-scaled products (MX training, as microxcaling does).

A block scaling (one scale per ``block`` consecutive elements) must run along the axis
its product reduces over. The forward product and the two backward products of one op
reduce over different axes, so a block-scaled operand rounded for the forward is not
block-scaled for the backward. Here the unrounded operands (the fp32 master of a
parameter held in its weight format) are saved and each backward product rounds its
operands along its own reduction axis. Write ``Q^k`` for rounding with blocks along
axis ``k``:

``F.linear``: ``y = x Wᵀ + b`` with ``x: (..., K)``, ``W: (N, K)``, ``g = ∂L/∂y: (..., N)``::

    forward  y  = Q^{-1}(x) · Q^{-1}(W)ᵀ + b          reduces over K
    dgrad    ∂x = Q^{-1}(g) · Q^{0}(W)                 reduces over N
    wgrad    ∂W = Q^{0}(g₂)ᵀ · Q^{0}(x₂)               reduces over the T tokens
    bias     ∂b = Σ_T Q^{-1}(g)

(``g₂, x₂``: ``g, x`` flattened to ``(T, N)``, ``(T, K)``). ``matmul / @ / mm / bmm``
with ``a: (..., M, K)``, ``b: (..., K, N)``, both at least 2-d::

    forward  y  = Q^{-1}(a) · Q^{-2}(b)                reduces over K
    dgrad    ∂a = Q^{-1}(g) · Q^{-1}(b)ᵀ               reduces over N
    wgrad    ∂b = Q^{-2}(a)ᵀ · Q^{-2}(g)               reduces over M

(summed over broadcast batch axes). ``F.conv1d/2d/3d`` with ``x: (B, C, ...)``,
``W: (O, C/groups, ...)``, ``g: (B, O, ...)``::

    forward  y  = conv(Q^1(x), Q^1(W)) + b             reduces over C (and the kernel)
    dgrad    ∂x = conv_input(Q^1(g), Q^0(W))           reduces over O
    wgrad    ∂W = conv_weight(Q^0(x), Q^0(g))          reduces over B (and positions)
    bias     ∂b = Σ_{B, positions} Q^1(g)

(as microxcaling's convolution; with ``groups > 1`` a block along ``O`` may span two
groups). The error ``g`` is rounded twice from the same unrounded gradient, once per
backward product. Transposed convolutions, string padding, unbatched inputs, 1-d
operands, ``einsum`` and ``addmm``-style ops keep the forward-rounded operands
(:mod:`.intercept`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ConvArgs", "Rounder", "conv", "product"]

#: ``(stride, padding, dilation, groups)`` of a convolution, as ``F.conv*`` takes them
ConvArgs = tuple[Any, Any, Any, int]

#: ``rnd(operand, phase, t, axis)``: ``t`` rounded as operand 0 (a / x), 1 (b / W) or 2
#: (the error) of phase ``"fwd"``, ``"dgrad"`` or ``"wgrad"``, blocks along ``axis``
Rounder = Callable[[int, str, torch.Tensor, int], torch.Tensor]


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` summed over the leading axes broadcasting added to ``shape``."""
    return t if t.shape == shape else t.sum_to_size(shape)


class _Requant(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                linear: bool, rnd: Rounder) -> torch.Tensor:
        ctx.linear, ctx.rnd = linear, rnd
        ctx.save_for_backward(a, b)
        qa = rnd(0, "fwd", a, -1)
        if linear:
            return F.linear(qa, rnd(1, "fwd", b, -1), bias)
        return torch.matmul(qa, rnd(1, "fwd", b, -2))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        rnd, (need_a, need_b, need_bias, _, _) = ctx.rnd, ctx.needs_input_grad
        ga = gb = gbias = None
        gd = rnd(2, "dgrad", g, -1) if need_a or need_bias else g
        if ctx.linear:
            if need_a:
                ga = gd @ rnd(1, "dgrad", b, 0)
            if need_b:
                g2, a2 = g.reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
                gb = rnd(2, "wgrad", g2, 0).T @ rnd(0, "wgrad", a2, 0)
            if need_bias:
                gbias = gd.reshape(-1, gd.shape[-1]).sum(0)
        else:
            if need_a:
                ga = _sum_to(gd @ rnd(1, "dgrad", b, -1).mT, a.shape)
            if need_b:
                gb = _sum_to(rnd(0, "wgrad", a, -2).mT @ rnd(2, "wgrad", g, -2), b.shape)
        return ga, gb, gbias, None, None


_CONV = {1: (F.conv1d, torch.nn.grad.conv1d_input, torch.nn.grad.conv1d_weight),
         2: (F.conv2d, torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight),
         3: (F.conv3d, torch.nn.grad.conv3d_input, torch.nn.grad.conv3d_weight)}


class _RequantConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                conv_args: ConvArgs, rnd: Rounder) -> torch.Tensor:
        ctx.conv_args, ctx.rnd = conv_args, rnd
        ctx.save_for_backward(x, w)
        fwd = _CONV[x.ndim - 2][0]
        return fwd(rnd(0, "fwd", x, 1), rnd(1, "fwd", w, 1), bias, *conv_args)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        rnd, (need_x, need_w, need_bias, _, _) = ctx.rnd, ctx.needs_input_grad
        _, conv_input, conv_weight = _CONV[x.ndim - 2]
        gx = gw = gbias = None
        gd = rnd(2, "dgrad", g, 1) if need_x or need_bias else g
        if need_x:
            gx = conv_input(x.shape, rnd(1, "dgrad", w, 0), gd, *ctx.conv_args)
        if need_w:
            gw = conv_weight(rnd(0, "wgrad", x, 0), w.shape, rnd(2, "wgrad", g, 0),
                             *ctx.conv_args)
        if need_bias:
            gbias = gd.sum([0, *range(2, gd.ndim)])
        return gx, gw, gbias, None, None


def conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, conv_args: ConvArgs,
         rnd: Rounder) -> torch.Tensor:
    """``F.conv{1,2,3}d(x, w, bias, *conv_args)`` (batched ``x``, numeric padding) with
    every product's operands rounded by ``rnd`` along its reduction axis (module
    docstring)."""
    return _RequantConv.apply(x, w, bias, conv_args, rnd)


def product(linear: bool, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
            rnd: Rounder) -> torch.Tensor:
    """``F.linear(a, b, bias)`` (``linear``) or ``a @ b`` with every product's operands
    rounded by ``rnd`` along that product's reduction axis (module docstring)."""
    return _Requant.apply(a, b, bias, linear, rnd)
