"""The op table: which torch functions :func:`lowprec.prepare` rounds, of which kind, and
which of their arguments are the operands of a product.

An entry maps a function (as ``torch.overrides.TorchFunctionMode`` sees it: ``F.linear``,
``torch.matmul``, ``torch.Tensor.__matmul__``, ...) to an :class:`Op`: its kind (one of
:data:`~lowprec.recipe.OP_KINDS`) and, for a product, the positions of its operands with
the axis each one reduces over in the forward product (the axis blocks of an MX /
per-block scaling run along):

==============================================  =========================================
``F.linear(x, W, b)``                           x: -1, W: -1 (``y = x W^T``; b is added)
``F.conv*(x, W, b)``                            x: 1, W: 1 (input channels)
``F.conv_transpose*(x, W, b)``                  x: 1, W: 0 (input channels)
``matmul / @ / mm / bmm (a, b)``                a: -1, b: -2 (b: -1 if 1-d)
``addmm / baddbmm / addbmm (c, a, b)``          a: -1, b: -2 (c is added)
``einsum(eq, *ops)`` with 2+ operands           each operand's first contracted index
``F.embedding(idx, W)``                         W (a lookup: no reduction; -1)
``F.scaled_dot_product_attention(q, k, v)``     decomposed (see :mod:`.intercept`)
==============================================  =========================================

Ops that are not products (norm, softmax, pointwise) have no operands here: their output
(``activation``) and its gradient (``error``) are rounded. :data:`OPAQUE` names
functions that compute products inside one call that the interception cannot see into
(RNN kernels, fused attention it is not allowed to decompose): coverage lists them as
unrounded products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["OPAQUE", "OPS", "REQUANT", "Op", "einsum_operands", "lookup"]

Operands = Callable[[Sequence[Any]], list[tuple[int, int]]]  # args -> [(position, axis)]


@dataclass(frozen=True)
class Op:
    """One entry: ``kind`` and, for a product, ``operands(args)`` -> ``[(position, axis)]``."""

    kind: str
    name: str
    operands: Operands | None = None

    @property
    def product(self) -> bool:
        return self.operands is not None


def _ab(i: int) -> Operands:
    def f(args: Sequence[Any]) -> list[tuple[int, int]]:
        b = args[i + 1] if len(args) > i + 1 else None
        return [(i, -1), (i + 1, -2 if isinstance(b, torch.Tensor) and b.ndim >= 2 else -1)]
    return f


def _fixed(*pairs: tuple[int, int]) -> Operands:
    return lambda args: list(pairs)


def einsum_operands(args: Sequence[Any]) -> list[tuple[int, int]]:
    """Operand positions of ``torch.einsum(eq, *operands)`` (or ``(eq, [operands])``) and
    the axis of each operand's first contracted index (one not in the output)."""
    eq = str(args[0]).replace(" ", "")
    ins, _, out = eq.partition("->")
    terms = ins.split(",")
    if not _:
        letters = [c for c in ins if c.isalpha()]
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    pairs = []
    for i, term in enumerate(terms):
        contracted = [j for j, c in enumerate(term.replace("...", "")) if c not in out]
        axis = contracted[0] if contracted else -1
        if "..." in term and contracted:  # count from the end past the ellipsis
            tail = term.split("...")[1]
            axis = -(len(tail) - tail.index(term.replace("...", "")[axis])) if (
                term.replace("...", "")[axis] in tail) else axis
        pairs.append((i + 1, axis))
    return pairs


def _einsum_operands(args: Sequence[Any]) -> list[tuple[int, int]]:
    if len(args) == 2 and isinstance(args[1], list | tuple):
        return []  # list form: the caller unpacks it first (see intercept)
    return einsum_operands(args) if len(args) >= 3 else []


_T = torch.Tensor
_PRODUCTS: dict[Any, tuple[str, Operands]] = {
    F.linear: ("linear", _fixed((0, -1), (1, -1))),
    **{f: ("conv", _fixed((0, 1), (1, 1))) for f in (F.conv1d, F.conv2d, F.conv3d)},
    **{f: ("conv", _fixed((0, 1), (1, 0))) for f in (  # W: (C_in, C_out / groups, ...)
        F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    **{f: ("matmul", _ab(0)) for f in (
        torch.matmul, _T.matmul, _T.__matmul__, torch.mm, _T.mm, torch.bmm, _T.bmm)},
    _T.__rmatmul__: ("matmul", lambda args: [(0, -2), (1, -1)]),
    **{f: ("matmul", _ab(1)) for f in (
        torch.addmm, _T.addmm, torch.baddbmm, _T.baddbmm, torch.addbmm, _T.addbmm)},
    torch.einsum: ("matmul", _einsum_operands),
    F.embedding: ("embedding", _fixed((1, -1))),
    F.scaled_dot_product_attention: ("attention", _fixed((0, -1), (1, -1), (2, -2))),
    F.multi_head_attention_forward: ("attention", _fixed()),  # decomposed (intercept)
}
_OTHERS: dict[Any, str] = {
    **dict.fromkeys((F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm,
                     F.rms_norm, F.local_response_norm), "norm"),
    **dict.fromkeys((F.softmax, torch.softmax, _T.softmax, F.log_softmax,
                     torch.log_softmax, _T.log_softmax), "softmax"),
    **dict.fromkeys((F.gelu, F.relu, torch.relu, _T.relu, F.silu, F.leaky_relu, F.elu,
                     torch.tanh, _T.tanh, torch.sigmoid, _T.sigmoid, F.tanh, F.sigmoid,
                     torch.add, _T.add, _T.__add__, _T.__radd__, torch.sub, _T.sub,
                     _T.__sub__, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
                    "pointwise"),
}


def _name(f: Any) -> str:
    owner = "Tensor." if getattr(f, "__objclass__", None) is torch.Tensor or (
        getattr(f, "__qualname__", "").startswith("Tensor.")) else ""
    return owner + getattr(f, "__name__", repr(f))


OPS: dict[Any, Op] = {
    **{f: Op(k, _name(f), o) for f, (k, o) in _PRODUCTS.items()},
    **{f: Op(k, _name(f)) for f, k in _OTHERS.items()},
}

#: products whose backward requantizes block-scaled operands (:mod:`.requant`):
#: function -> ``"linear"``, ``"matmul"`` (2 operands) or ``"conv"``
REQUANT: dict[Any, str] = {
    F.linear: "linear",
    **dict.fromkeys((torch.matmul, _T.matmul, _T.__matmul__, torch.mm, _T.mm, torch.bmm,
                     _T.bmm), "matmul"),
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), "conv")}

#: functions computing products that op-level rounding cannot see into
OPAQUE = frozenset({"lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell",
                    "rnn_tanh_cell", "rnn_relu_cell", "bilinear",
                    "_scaled_dot_product_attention_math", "conv_tbc"})


def lookup(func: Any) -> Op | None:
    """The table's entry for ``func`` (``None``: not rounded)."""
    try:
        return OPS.get(func)
    except TypeError:  # unhashable
        return None
