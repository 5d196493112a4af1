"""Products of intercepted ops computed as MAC hardware does, forward and backward.

For a recipe with ``product`` / ``accumulate`` (:class:`~lowprec.Recipe`),
:mod:`.intercept` hands every product op it rounds to :func:`run` (after rounding its
operands with ``input`` / ``weight``). Each of the three products of a training step,
with ``Q_p`` = ``product``, ``Q_a`` = ``accumulate`` and ``b`` = ``accumulate_block``,
runs the recurrence of :mod:`lowprec.numerics.mac`
(``s <- Q_a(s + sum_{next b terms} Q_p(a_k b_k))``, blocks in increasing ``k``)::

    forward      y  = mac(x, W)          reduction over the op's contracted axis
    grad-input   dx = mac(ĝ, W^T)        ĝ: the error as the recipe's error class rounded it
    grad-weight  dW = mac(ĝ^T, x)        x, W: the rounded operands the forward saved

========================  =====================================================================
``F.linear(x, W, b)``     ``x`` flattened to ``[N, K]``: forward reduces over ``K`` (in order),
                          grad-input over the ``out_features``, grad-weight over the ``N``
                          rows (batch and sequence positions, row-major order)
``matmul``/``@``/``mm``   ``[..., M, K] @ [..., K, N]``: forward over ``K``, grad-input over
``bmm``/``baddbmm``       ``N``, grad-weight over ``M`` per batch entry (a 2-D right operand
``addmm``                 with a batched left one: over all rows, as for linear); a broadcast
                          operand's gradient is then summed over the broadcast axes in fp32
``F.conv1d/2d(x, W, b)``  forward: :func:`~lowprec.numerics.mac.mac_conv2d` (``k = (c, r, s)``);
                          grad-input: the transposed convolution as a convolution of the
                          zero-dilated, padded ``ĝ`` with the flipped, transposed kernel
                          (``k = (o, r, s)``; the inserted zeros are exact terms of a block);
                          grad-weight: im2col, reduction over ``(n, y, x)``
========================  =====================================================================

Biases (and ``addmm``'s ``c``) are added to the result in the output dtype, their gradient
is a plain fp32 sum. Other product ops (``einsum``, ``conv3d``, transposed convolutions,
``addbmm``) raise a :class:`NotImplementedError` naming the op: drop its kind from ``ops``
or the ``product``/``accumulate`` classes. Stochastic roundings use one keyed generator per
(op call, product, class) (:func:`arithmetic`), so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..numerics import mac
from ..numerics.mac import RoundTo
from .quantizer import keyed_generator
from .recipe import QuantSpec, Recipe

__all__ = ["Arith", "PRODUCTS", "arithmetic", "run"]

#: the three products of a training step, in the order of :func:`arithmetic`'s result
PRODUCTS = ("forward", "grad_input", "grad_weight")
_CODE = {"product": 5, "accumulate": 6}


@dataclass(frozen=True)
class Arith:
    """The rounding of one product: ``mac_bmm(a, b, product=, accumulate=, block=)``."""

    product: RoundTo | None
    accumulate: RoundTo | None
    block: int

    def bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mac.mac_bmm(a, b, product=self.product, accumulate=self.accumulate,
                           block=self.block)

    def conv2d(self, x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int],
               padding: tuple[int, int], dilation: tuple[int, int],
               groups: int) -> torch.Tensor:
        return mac.mac_conv2d(x, w, None, stride, padding, dilation, groups,
                              product=self.product, accumulate=self.accumulate,
                              block=self.block)

    def conv2d_weight_grad(self, x: torch.Tensor, g: torch.Tensor,
                           kernel_size: tuple[int, int], stride: tuple[int, int],
                           padding: tuple[int, int], dilation: tuple[int, int],
                           groups: int) -> torch.Tensor:
        return mac.mac_conv2d_weight_grad(x, g, kernel_size, stride, padding, dilation, groups,
                                          product=self.product, accumulate=self.accumulate,
                                          block=self.block)


def _round_to(spec: QuantSpec | None, nearest: bool, key: tuple[int, ...]) -> RoundTo | None:
    if spec is None:
        return None
    if spec.rounding == "stochastic" and not nearest:
        return RoundTo(spec.format, spec.rounding, spec.overflow, spec.rand_bits,
                       keyed_generator(*key))
    rounding = "nearest" if spec.rounding == "stochastic" else spec.rounding
    return RoundTo(spec.format, rounding, spec.overflow)


def arithmetic(recipe: Recipe, key: tuple[int, ...], nearest: bool = False) -> list[Arith]:
    """The :class:`Arith` of the forward, grad-input and grad-weight products of one op call.

    A stochastic class draws from ``keyed_generator(*key, class code, product index)``;
    ``nearest`` (evaluation) rounds stochastic classes to nearest instead.
    """
    return [Arith(*(_round_to(getattr(recipe, c), nearest, (*key, _CODE[c], i))
                    for c in ("product", "accumulate")), recipe.accumulate_block)
            for i in range(len(PRODUCTS))]


class _MacMM(torch.autograd.Function):
    """``a @ b`` on ``[B, M, K] @ [B, K, N]`` with the three products through mac."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, arith: Sequence[Arith]) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.arith = arith
        return arith[0].bmm(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        _, dgrad, wgrad = ctx.arith
        ga = dgrad.bmm(g, b.mT).to(a.dtype) if ctx.needs_input_grad[0] else None
        gb = wgrad.bmm(a.mT, g).to(b.dtype) if ctx.needs_input_grad[1] else None
        return ga, gb, None


def _matmul(a: torch.Tensor, b: torch.Tensor, arith: Sequence[Arith]) -> torch.Tensor:
    """``torch.matmul(a, b)`` semantics (1-D operands, broadcasting) through :class:`_MacMM`."""
    va, vb = a.dim() == 1, b.dim() == 1
    a2 = a.unsqueeze(0) if va else a
    b2 = b.unsqueeze(-1) if vb else b
    if b2.dim() == 2:  # rows of every batch entry share the right operand: one product
        out = _MacMM.apply(a2.reshape(1, -1, a2.shape[-1]), b2.unsqueeze(0), arith)
        out = out.reshape(*a2.shape[:-1], b2.shape[-1])
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        a3 = a2.expand(*batch, *a2.shape[-2:]).reshape(-1, *a2.shape[-2:])
        b3 = b2.expand(*batch, *b2.shape[-2:]).reshape(-1, *b2.shape[-2:])
        out = _MacMM.apply(a3, b3, arith).reshape(*batch, a2.shape[-2], b2.shape[-1])
    if vb:
        out = out.squeeze(-1)
    return out.squeeze(-2) if va else out


def _pair(v: Any) -> tuple[int, int]:
    """An int or a 1- or 2-sequence as ``(h, w)``."""
    if isinstance(v, int):
        return v, v
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


class _MacConv2d(torch.autograd.Function):
    """``F.conv2d`` (no bias) with the three products through mac (module doc)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, geom: tuple[Any, ...],
                arith: Sequence[Arith]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.geom, ctx.arith = geom, arith
        return arith[0].conv2d(x, w, *geom)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        (sh, sw), (ph, pw), (dh, dw), groups = ctx.geom
        _, dgrad, wgrad = ctx.arith
        n, c_in, h, wd = x.shape
        c_out, c_g, kh, kw = w.shape
        gx = gw = None
        if ctx.needs_input_grad[0]:
            ho, wo = g.shape[2:]
            gd = g
            if (sh, sw) != (1, 1):
                gd = g.new_zeros(n, c_out, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
                gd[:, :, ::sh, ::sw] = g
            top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
            bottom = h - (gd.shape[2] + top - dh * (kh - 1))
            right = wd - (gd.shape[3] + left - dw * (kw - 1))
            pad = (0, 0)
            if (top, left) == (bottom, right) and min(top, left) >= 0:
                pad = (top, left)  # symmetric: padded by the convolution itself
            else:
                gd = F.pad(gd, (left, right, top, bottom))
            wt = w.flip(2, 3).view(groups, c_out // groups, c_g, kh, kw).transpose(1, 2)
            gx = dgrad.conv2d(gd, wt.reshape(c_in, c_out // groups, kh, kw), (1, 1), pad,
                              (dh, dw), groups).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = wgrad.conv2d_weight_grad(x, g, (kh, kw), *ctx.geom).to(w.dtype)
        return gx, gw, None, None


def _conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: Any,
            padding: Any, dilation: Any, groups: int, arith: Sequence[Arith]) -> torch.Tensor:
    dil = _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        else:  # "same": stride 1 (torch's rule); symmetric padding only
            total = [d * (k - 1) for d, k in zip(dil, w.shape[2:], strict=True)]
            if any(t % 2 for t in total):
                raise NotImplementedError("padding='same' with an even kernel extent pads "
                                          "asymmetrically; mac emulation needs explicit padding")
            padding = (total[0] // 2, total[1] // 2)
    geom = (_pair(stride), _pair(padding), dil, int(groups))
    out = _MacConv2d.apply(x.unsqueeze(0) if x.dim() == 3 else x, w, geom, arith)
    out = out if bias is None else out + bias.view(1, -1, 1, 1)
    return out.squeeze(0) if x.dim() == 3 else out


def _conv1d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
            stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1, *,
            arith: Sequence[Arith]) -> torch.Tensor:
    s, d = _pair(stride)[0], _pair(dilation)[0]
    p = padding if isinstance(padding, str) else (0, _pair(padding)[0])
    out = _conv2d(x.unsqueeze(-2), w.unsqueeze(2), bias, (1, s), p, (1, d), groups, arith)
    return out.squeeze(-2)


def _linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
            arith: Sequence[Arith]) -> torch.Tensor:
    y = _matmul(x, w.t(), arith)
    return y if bias is None else y + bias


def _unpack(args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str]) -> list[Any]:
    """Positional values of ``names`` from ``args`` and ``kwargs`` (missing: ``None``)."""
    vals = (list(args) + [None] * len(names))[:len(names)]
    for i, n in enumerate(names):
        if n in kwargs:
            vals[i] = kwargs[n]
    return vals


_T = torch.Tensor
_MATMULS = (torch.matmul, _T.matmul, _T.__matmul__, torch.mm, _T.mm, torch.bmm, _T.bmm)
_ADDMMS = (torch.addmm, _T.addmm, torch.baddbmm, _T.baddbmm)
_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def run(func: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any],
        arith: Sequence[Arith]) -> torch.Tensor:
    """``func(*args, **kwargs)`` with its products through mac (module doc)."""
    if func is F.linear:
        x, w, b = _unpack(args, kwargs, ("input", "weight", "bias"))
        return _linear(x, w, b, arith=arith)
    if func is F.conv2d:
        x, w, b, s, p, d, g = _unpack(args, kwargs, _CONV)
        return _conv2d(x, w, b, 1 if s is None else s, 0 if p is None else p,
                       1 if d is None else d, 1 if g is None else g, arith)
    if func is F.conv1d:
        x, w, b, s, p, d, g = _unpack(args, kwargs, _CONV)
        return _conv1d(x, w, b, 1 if s is None else s, 0 if p is None else p,
                       1 if d is None else d, 1 if g is None else g, arith=arith)
    if func in _MATMULS:
        a, b = _unpack(args, kwargs, ("input", "other"))
        return _matmul(a, b, arith)
    if func is _T.__rmatmul__:
        return _matmul(args[1], args[0], arith)
    if func in _ADDMMS:
        names = ("input", "mat1", "mat2") if func in (torch.addmm, _T.addmm) else (
            "input", "batch1", "batch2")
        c, a, b = _unpack(args, kwargs, names)
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
        prod = _matmul(a, b, arith)
        return beta * c + (prod if alpha == 1 else alpha * prod)
    raise NotImplementedError(
        f"{name}: its products cannot be emulated with the recipe's product/accumulate "
        "classes (supported: linear, conv1d, conv2d, matmul, mm, bmm, @, addmm, baddbmm); "
        "drop its kind from the recipe's ops, or the product/accumulate classes")
