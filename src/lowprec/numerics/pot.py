"""Multiplier-free products with powers of two: exponent addition on the float32 bit pattern.

A float32 ``w`` with sign ``s_w``, biased exponent ``E_w`` and mantissa ``M_w`` times
``p = (-1)**s_p * 2**k`` is ``(-1)**(s_w ^ s_p) * (2**23 + M_w) * 2**(E - 150)`` with
``E = E_w + k``, so its bit pattern is formed with integer operations only::

    1 <= E <= 254   (s_w ^ s_p) << 31 | E << 23 | M_w      (exact: nothing to round)
    E >= 255        ±inf                                  (IEEE: the exact value overflows)
    E <= 0          ±RNE((2**23 + M_w) / 2**(1 - E))      (subnormal or 0: an integer shift
                                                           rounded half to even, as IEEE does)
    w = 0 or p = 0  ±0, sign s_w ^ s_p

which is the IEEE float32 product bit for bit. ``p`` must be float32 with every value
0 or ``±2**k``, ``k`` in ``[-126, 127]`` (checked: :class:`ValueError`). Documented
fallback: the rare elements where ``w`` is subnormal, inf or NaN are multiplied by the
FPU (``w * p``, the same IEEE result).

Sums: ``pow2_matmul(p, w)[m, n] = sum_k p[m, k] * w[n, k]`` forms the products of a
block of ``(m, n)`` pairs as a ``[mc, nc, K]`` tensor and sums its last axis with
torch's reduction; ``reference=True`` forms the same blocks by float multiplication,
``(p[:, None, :] * w[None]).sum(-1)``, so the two agree bit for bit exactly when every
product does. The layers reduce to it: ``linear`` (``x W^T``), ``conv2d`` (``unfold``,
then ``cols W^T``; ``groups = dilation = 1``) and the backward products with a
power-of-two error ``g``: grad-input ``g W`` (conv: then ``fold``, which only adds) and
grad-weight ``g^T x``. The product function runs through :mod:`.backend` (fused by
``torch.compile`` where it pays off, integer code: same bits); the sums stay eager.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import Compiled

__all__ = [
    "check_pow2",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "linear",
    "linear_grad_input",
    "linear_grad_weight",
    "mul",
    "pow2_matmul",
]

_INT_MIN, _INF = -(2**31), 0x7F800000
_ZERO_EXP = -(1 << 20)  # exponent given to zero operands: the product underflows to ±0
_BLOCK = 1 << 21  # products formed at once (8 MiB of int32)

IntPair = int | tuple[int, int]


def check_pow2(p: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``p`` is float32 with values 0 or ``±2**k``, k in [-126, 127]."""
    if p.dtype != torch.float32:
        raise ValueError(f"power-of-two operand must be float32, got {p.dtype}")
    b = p.view(torch.int32)
    e = (b >> 23) & 0xFF
    ok = ((b & 0x7FFFFF) == 0) & (e != 0xFF)
    if not bool(ok.all()):
        bad = p[~ok].flatten()[:3].tolist()
        raise ValueError(f"operand holds {bad}, not 0 or ±2**k (k in [-126, 127]); "
                         "round it first, e.g. lowprec.quantize(x, 'pot7')")


def _p_fields(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign bit, exponent k) of power-of-two ``p``; zero gets a huge negative k."""
    b = p.view(torch.int32)
    e = (b >> 23) & 0xFF
    return b & _INT_MIN, torch.where(e == 0, _ZERO_EXP, e - 127)


def _w_fields(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sign bit, biased exponent, mantissa, needs-fallback) of float32 ``w``."""
    b = w.view(torch.int32)
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    special = (e == 0xFF) | ((e == 0) & (m != 0))
    return b & _INT_MIN, torch.where(e == 0, _ZERO_EXP, e), m, special


def _combine(sw: torch.Tensor, ew: torch.Tensor, mw: torch.Tensor, sp: torch.Tensor,
             kp: torch.Tensor) -> torch.Tensor:
    """The products' float32 values from the operands' fields (module doc), broadcasting."""
    e = ew + kp
    s = (1 - e).clamp(1, 25)
    sig = mw | (1 << 23)
    q = sig >> s
    rem = sig & ((1 << s) - 1)
    half = 1 << (s - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    normal = (e.clamp(0, 255) << 23) | mw  # clamped: no shift of a negative number
    mag = torch.where(e >= 255, _INF, torch.where(e >= 1, normal, q + up.to(q.dtype)))
    return (mag | (sw ^ sp)).view(torch.float32)


_combine_compiled = Compiled(_combine, "power-of-two product kernel")


def _products(*fields: torch.Tensor) -> torch.Tensor:
    """:func:`_combine` through the backend (:mod:`.backend`: compiled or eager, same bits)."""
    # dynamo specialises sizes of 0 and 1 (broadcast dimensions) into graphs of their own
    variant = tuple((f.dtype, *(n <= 1 for n in f.shape)) for f in fields)
    return _combine_compiled(variant, *fields)


def mul(w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``w * p`` (broadcasting) for power-of-two ``p``, by exponent addition (module doc)."""
    check_pow2(p)
    if w.dtype != torch.float32:
        raise ValueError(f"w must be float32, got {w.dtype}")
    sw, ew, mw, special = _w_fields(w)
    out = _products(sw, ew, mw, *_p_fields(p))
    return torch.where(special, w * p, out) if bool(special.any()) else out


def pow2_matmul(p: torch.Tensor, w: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
    """``out[m, n] = sum_k p[m, k] * w[n, k]`` (``p @ w.T``) for power-of-two ``p`` [M, K].

    Products by exponent addition (or, ``reference=True``, by float multiplication), in
    blocks of at most 2**21, each summed over ``k`` by ``.sum(-1)``.
    """
    if p.dim() != 2 or w.dim() != 2 or p.shape[1] != w.shape[1]:
        raise ValueError(f"expected p [M, K] and w [N, K], got {tuple(p.shape)}, "
                         f"{tuple(w.shape)}")
    check_pow2(p)
    if w.dtype != torch.float32:
        raise ValueError(f"w must be float32, got {w.dtype}")
    p, w = p.contiguous(), w.contiguous()
    (m_, k_), n_ = p.shape, w.shape[0]
    out = p.new_empty(m_, n_)
    nc = max(1, min(n_, _BLOCK // max(k_, 1)))
    mc = max(1, min(m_, _BLOCK // max(nc * k_, 1)))
    sp, kp = _p_fields(p)
    sw, ew, mw, special = _w_fields(w)
    fallback = bool(special.any())
    for i in range(0, m_, mc):
        pi = slice(i, i + mc)
        for j in range(0, n_, nc):
            nj = slice(j, j + nc)
            if reference:
                prod = p[pi, None, :] * w[None, nj, :]
            else:
                prod = _products(sw[None, nj], ew[None, nj], mw[None, nj], sp[pi, None],
                                 kp[pi, None])
                if fallback:
                    prod = torch.where(special[None, nj], p[pi, None, :] * w[None, nj, :], prod)
            out[pi, nj] = prod.sum(-1)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           reference: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for power-of-two ``x`` [..., in]: products are shifts."""
    out_f, in_f = weight.shape
    y = pow2_matmul(x.reshape(-1, in_f), weight, reference=reference)
    y = y.reshape(*x.shape[:-1], out_f)
    return y if bias is None else y + bias


def linear_grad_input(err: torch.Tensor, weight: torch.Tensor, *,
                      reference: bool = False) -> torch.Tensor:
    """``dL/dx = err @ weight`` for power-of-two ``err`` [..., out]."""
    out_f, in_f = weight.shape
    dx = pow2_matmul(err.reshape(-1, out_f), weight.t(), reference=reference)
    return dx.reshape(*err.shape[:-1], in_f)


def linear_grad_weight(err: torch.Tensor, x: torch.Tensor, *,
                       reference: bool = False) -> torch.Tensor:
    """``dL/dW = err^T @ x`` [out, in] for power-of-two ``err``, any float32 ``x``."""
    e = err.reshape(-1, err.shape[-1]).t()
    return pow2_matmul(e, x.reshape(-1, x.shape[-1]).t(), reference=reference)


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntPair = 1, padding: IntPair = 0, *, reference: bool = False
           ) -> torch.Tensor:
    """``F.conv2d`` (groups = dilation = 1) for power-of-two ``x`` [B, C, H, W]."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    b, _, h, w = x.shape
    o, c, kh, kw = weight.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # [B, C*kh*kw, L]
    y = pow2_matmul(cols.transpose(1, 2).reshape(-1, c * kh * kw), weight.reshape(o, -1),
                    reference=reference)
    y = y.reshape(b, ho * wo, o).transpose(1, 2).reshape(b, o, ho, wo)
    return y if bias is None else y + bias[:, None, None]


def conv2d_grad_input(err: torch.Tensor, weight: torch.Tensor, input_size: IntPair,
                      stride: IntPair = 1, padding: IntPair = 0, *,
                      reference: bool = False) -> torch.Tensor:
    """``dL/dx`` [B, C, H, W] of :func:`conv2d` for power-of-two ``err`` [B, O, Ho, Wo]."""
    b, o, ho, wo = err.shape
    _, c, kh, kw = weight.shape
    e = err.reshape(b, o, ho * wo).transpose(1, 2).reshape(-1, o)
    cols = pow2_matmul(e, weight.reshape(o, -1).t(), reference=reference)
    cols = cols.reshape(b, ho * wo, c * kh * kw).transpose(1, 2)
    return F.fold(cols, _pair(input_size), (kh, kw), padding=_pair(padding),
                  stride=_pair(stride))


def conv2d_grad_weight(err: torch.Tensor, x: torch.Tensor, kernel_size: IntPair,
                       stride: IntPair = 1, padding: IntPair = 0, *,
                       reference: bool = False) -> torch.Tensor:
    """``dL/dW`` [O, C, kh, kw] of :func:`conv2d` for power-of-two ``err``, any float32 ``x``."""
    b, o = err.shape[:2]
    kh, kw = _pair(kernel_size)
    cols = F.unfold(x, (kh, kw), padding=_pair(padding), stride=_pair(stride))
    e = err.reshape(b, o, -1).transpose(0, 1).reshape(o, -1)
    dw = pow2_matmul(e, cols.transpose(0, 1).reshape(cols.shape[1], -1), reference=reference)
    return dw.reshape(o, x.shape[1], kh, kw)
