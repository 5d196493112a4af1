"""The MAC recurrence of :mod:`.mac` as one fused C++ kernel (``mac_kernel.cpp``).

:func:`run` computes what :func:`.mac._mac` computes: for each output the running sum
``s <- Q_acc(s + sum_block Q_prod(a_k b_k))`` over blocks in increasing ``k``, products
exact in float64 (float32 operands), block sums float64 FMA chains in increasing ``k``
(exact under :mod:`.mac`'s condition; elsewhere within the same bound as its BLAS sums),
``Q`` :func:`.kernel.round_kernel` ported lane for lane (nearest-even, where the format
allows, by the float addition of ``round8_add``: the same bits). Each ``MR x NR`` tile of
outputs keeps its running and block sums in registers through the blocks of a chunk of
``K`` (``B`` packed to float64 per chunk, ``A`` read in place), so no pass over memory per
block remains: 30-40 GMAC/s on the 2-core development machine for blocks of 32 (float64
BLAS alone: 11-16), about 10x the torch path (docs/benchmarks.md). Operands are views given
by element offsets per dimension group (:func:`offsets`): im2col's windows without a copy.
When ``N > M`` it computes ``C^T = B^T A^T`` (the same sums, element for element), so that
the larger operand is the one read in place and the smaller the one packed.

It declines (returns ``None``: the caller takes the torch path) off the CPU, for float64
operands, product roundings other than nearest-even, scaled, unsigned or sub-float64
formats, more than ``2**31`` outputs per batch entry, or without a compiler
(:mod:`.native`). Deterministic roundings give the torch path's bits. A stochastic
accumulator draws two seed words per batch entry and block from its generator and hashes
the output's flat index ``i N + j`` (:func:`.kernel.random_bits`'s stream): reproducible and
unbiased, but not the torch path's bits (which index within its row tiles), so a machine
without a compiler draws other stochastic roundings.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable

import torch

from . import native
from .quantize import RoundTo
from .rounding import MODES, check_mode, check_overflow, check_rand_bits
from .scaling import ScaledFormat

__all__ = ["GRAIN", "offsets", "run"]

#: multiply-adds below which a call runs on one thread (waking a second costs more)
GRAIN = 1 << 16
_I64P = ctypes.POINTER(ctypes.c_int64)
_I32P = ctypes.POINTER(ctypes.c_int32)
assert set(native.MODES) == set(MODES)


@functools.lru_cache(maxsize=1)
def _function() -> Callable[..., int] | None:
    """``lowprec_mac`` with its C signature; ``None`` without the library."""
    i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    return native.function("mac_kernel", "lowprec_mac",
                           [vp, _I64P, _I64P, _I64P, vp, _I64P, _I64P, _I64P, vp, i32, i64,
                            i64, i64, i64, i64, _I64P, _I32P, i32, _I64P, _I32P, i32, _I32P,
                            i64, i64, i32])


def _rule(rounder: RoundTo, modes: tuple[str, ...]) -> tuple[
        torch.Tensor, torch.Tensor, int] | None:
    """``(constants, flags, mode code)`` of a rounding the kernel runs (float64 container,
    :func:`.kernel.grid_constants` and :class:`.kernel.Shape`), else ``None``."""
    fmt = rounder.format
    mode = check_mode(rounder.rounding)
    if isinstance(fmt, ScaledFormat) or mode not in modes:
        return None
    bits = check_rand_bits(rounder.rand_bits, mode)
    overflow = check_overflow(rounder.overflow, fmt.has_inf, fmt.has_nan, fmt.name)
    rule = native.rule64(fmt, bits, overflow)
    if rule is None:
        return None
    return rule[0], rule[1], native.code64(fmt, mode, bits, overflow)


def offsets(t: torch.Tensor, split: tuple[int, int, int]) -> list[torch.Tensor]:
    """Element offsets of ``t``'s three dimension groups (``split`` dimensions each):
    ``t[e, i, k]`` of the grouped view is element ``o[0][e] + o[1][i] + o[2][k]`` of ``t``
    (row-major within a group)."""
    out = []
    for lo, hi in _bounds(split):
        off = torch.zeros((), dtype=torch.int64)
        for size, stride in zip(t.shape[lo:hi], t.stride()[lo:hi], strict=True):
            off = off.unsqueeze(-1) + torch.arange(size, dtype=torch.int64) * stride
        out.append(off.reshape(-1))
    return out


def _bounds(split: tuple[int, int, int]) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` dimension ranges of the three groups of ``split``."""
    return [(sum(split[:i]), sum(split[:i + 1])) for i in range(3)]


def _ptr(t: torch.Tensor, kind: type) -> object:
    return ctypes.cast(t.data_ptr(), kind)


def run(a: torch.Tensor, a_split: tuple[int, int, int], b: torch.Tensor,
        b_split: tuple[int, int, int], product: RoundTo | None, accumulate: RoundTo,
        block: int) -> torch.Tensor | None:
    """The ``[B, M, N]`` result of :func:`.mac._mac` on the grouped views of ``a``
    (``[B, M, K]``) and ``b`` (``[B, K, N]``), or ``None`` where the kernel declines: float32
    when the result is float32 and holds every accumulator value exactly, else float64."""
    if a.device.type != "cpu" or torch.float64 in (a.dtype, b.dtype):
        return None
    acc = _rule(accumulate, native.MODES)
    prod = None if product is None else _rule(product, ("nearest",))
    batch, m, k = (math.prod(a.shape[lo:hi]) for lo, hi in _bounds(a_split))
    n = math.prod(b.shape[sum(b_split[:2]):])
    fn = _function() if acc is not None and (product is None or prod is not None) \
        and m * n < 2**31 else None
    if fn is None:
        return None
    a32, b32 = a.detach().float(), b.detach().float()  # float16/bfloat16: exact copies
    a_off, b_off = offsets(a32, a_split), offsets(b32, b_split)
    swap = n > m  # C^T = B^T A^T: the larger operand is read in place, the smaller packed
    if swap:
        a32, b32, a_off, b_off = b32, a32, [b_off[0], b_off[2], b_off[1]], \
            [a_off[0], a_off[2], a_off[1]]
    fmt = accumulate.format
    narrow = fmt.float32_exact and torch.float32 in (a.dtype, b.dtype)
    out = (torch.empty if k else torch.zeros)(  # k = 0: s_0
        batch, *((n, m) if swap else (m, n)), dtype=torch.float32 if narrow else torch.float64)
    seeds = None
    if acc[2] == native.MODES.index("stochastic"):
        seeds = torch.randint(-(2**31), 2**31, (batch, -(-k // block), 2),
                              generator=accumulate.generator, dtype=torch.int32)
    prule, pflags, pmode = prod if prod is not None else (acc[0], acc[1], native.NONE)
    threads = 1 if math.prod((batch, m, n, k)) < GRAIN else torch.get_num_threads()
    failed = fn(a32.data_ptr(), *(_ptr(o, _I64P) for o in a_off),
                b32.data_ptr(), *(_ptr(o, _I64P) for o in b_off), out.data_ptr(), narrow,
                batch, *out.shape[1:], k, block, _ptr(acc[0], _I64P), _ptr(acc[1], _I32P),
                acc[2], _ptr(prule, _I64P), _ptr(pflags, _I32P), pmode,
                None if seeds is None else _ptr(seeds, _I32P), *((1, n) if swap else (n, 1)),
                threads)
    if failed:
        return None
    return out.mT.contiguous() if swap else out
