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

__all__ = ["ConvArgs", "Rounder", "product"]

#: ``(stride, padding, dilation, groups)`` of a convolution, as ``F.conv*`` takes them
ConvArgs = tuple[Any, Any, Any, int]

#: ``rnd(operand, phase, t, axis)``: ``t`` rounded as operand 0 (a / x), 1 (b / W) or 2
#: (the error) of phase ``"fwd"``, ``"dgrad"`` or ``"wgrad"``, blocks along ``axis``
Rounder = Callable[[int, str, torch.Tensor, int], torch.Tensor]


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` summed over the leading axes broadcasting added to ``shape``."""
    return t if t.shape == shape else t.sum_to_size(shape)


_CONV = {1: (F.conv1d, torch.nn.grad.conv1d_input, torch.nn.grad.conv1d_weight),
         2: (F.conv2d, torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight),
         3: (F.conv3d, torch.nn.grad.conv3d_input, torch.nn.grad.conv3d_weight)}


def _forward(kind: str, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
             conv_args: ConvArgs, rnd: Rounder) -> torch.Tensor:
    if kind == "linear":
        return F.linear(rnd(0, "fwd", a, -1), rnd(1, "fwd", b, -1), bias)
    if kind == "matmul":
        return torch.matmul(rnd(0, "fwd", a, -1), rnd(1, "fwd", b, -2))
    return _CONV[a.ndim - 2][0](rnd(0, "fwd", a, 1), rnd(1, "fwd", b, 1), bias, *conv_args)


def _backward(kind: str, a: torch.Tensor, b: torch.Tensor, g: torch.Tensor,
              need: tuple[bool, bool, bool], conv_args: ConvArgs,
              rnd: Rounder) -> tuple[torch.Tensor | None, ...]:
    """``(∂a, ∂b, ∂bias)`` of the module docstring's table, each ``None`` unless needed."""
    ga = gb = gbias = None
    gd = rnd(2, "dgrad", g, 1 if kind == "conv" else -1) if need[0] or need[2] else g
    if kind == "linear":
        if need[0]:
            ga = gd @ rnd(1, "dgrad", b, 0)
        if need[1]:
            g2, a2 = g.reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
            gb = rnd(2, "wgrad", g2, 0).T @ rnd(0, "wgrad", a2, 0)
        if need[2]:
            gbias = gd.reshape(-1, gd.shape[-1]).sum(0)
    elif kind == "matmul":
        if need[0]:
            ga = _sum_to(gd @ rnd(1, "dgrad", b, -1).mT, a.shape)
        if need[1]:
            gb = _sum_to(rnd(0, "wgrad", a, -2).mT @ rnd(2, "wgrad", g, -2), b.shape)
    else:
        _, conv_input, conv_weight = _CONV[a.ndim - 2]
        if need[0]:
            ga = conv_input(a.shape, rnd(1, "dgrad", b, 0), gd, *conv_args)
        if need[1]:
            gb = conv_weight(rnd(0, "wgrad", a, 0), b.shape, rnd(2, "wgrad", g, 0), *conv_args)
        if need[2]:
            gbias = gd.sum([0, *range(2, gd.ndim)])
    return ga, gb, gbias


class _Requant(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                kind: str, conv_args: ConvArgs, rnd: Rounder) -> torch.Tensor:
        ctx.kind, ctx.conv_args, ctx.rnd = kind, conv_args, rnd
        ctx.save_for_backward(a, b)
        return _forward(kind, a, b, bias, conv_args, rnd)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        return *_backward(ctx.kind, a, b, g, need, ctx.conv_args, ctx.rnd), None, None, None


def product(kind: str, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
            rnd: Rounder, conv_args: ConvArgs = (1, 0, 1, 1)) -> torch.Tensor:
    """``F.linear(a, b, bias)`` (``kind="linear"``), ``a @ b`` (``"matmul"``) or
    ``F.conv{1,2,3}d(a, b, bias, *conv_args)`` (``"conv"``: batched ``a``, numeric padding)
    with every product's operands rounded by ``rnd`` along that product's reduction axis
    (module docstring)."""
    return _Requant.apply(a, b, bias, kind, conv_args, rnd)
