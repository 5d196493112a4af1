"""Per-block power-of-two scaling as one C++ kernel (``block_kernel.cpp``).

:func:`run` computes what :func:`.slicescale.fused_round` computes for blocks on the
shifted grid (``y = 2**X round(x 2**-X)`` per block, ``X`` by the ``"floor"`` rule): the
block's amax, its exponent and the rounding, :func:`.kernel.round_kernel` ported lane for
lane on 16 int32 lanes, stochastic rounding hashing the same element indices with the same
seed words; so the bits are the torch path's, for the modes :mod:`.scaling` computes in
float32 (nearest-even, nearest-away, stochastic) and either overflow rule. Nearest-even,
for the floating-point formats that admit it, scales, rounds and unscales in float32
operations instead (``NEAREST_FLOAT``: the same bits in about half the operations;
block_kernel.cpp says why they are exact). Inductor's loop takes a horizontal maximum per
block and recomputes a block's exponent and grid once per 16-lane vector; here a block's
exponent is computed once (blocks along rows, 64 blocks' exponents before their roundings)
or for 16 blocks at once (blocks across rows, one per lane): MX block rounding 1.2-2.8x
faster than the compiled kernel, and an mxfp8 GPT step 0.1-0.2x of an fp32 step cheaper
(docs/benchmarks.md).

It declines (returns ``False``: the caller takes the compiled path) off the CPU, for
inputs or results other than float32, for the modes :mod:`.scaling` computes in float64
(directed, "odd"), with telemetry (the scales and statistics are the compiled kernel's),
with ``2**31`` elements or more, or without a compiler (:mod:`.native`).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable

import torch

from . import kernel, native
from .formats import Format
from .kernel import Shape

__all__ = ["run"]

#: the modes the kernel has (those :mod:`.scaling` computes in float32)
_MODES = ("nearest", "nearest_away", "stochastic")
#: elements below which a call runs on one thread (waking a second costs more)
GRAIN = 1 << 15


@functools.lru_cache(maxsize=1)
def _function() -> Callable[..., int] | None:
    """``lowprec_block_round`` with its C signature; ``None`` without the library."""
    i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    return native.function("block_kernel", "lowprec_block_round",
                           [vp, vp, i64, i64, i64, i64, vp, i32, i32])


@functools.lru_cache(maxsize=256)
def _rule(fmt: Format, rand_bits: int, shape: Shape, saturate: bool, nan_block: bool,
          margin: int) -> tuple[int, ...]:
    """The ``Rule`` of block_kernel.cpp but its two seed words: the float32 grid constants
    and rand_mask, the flags, the format's ``emax`` and ``margin``."""
    grid = (*kernel.grid_constants(fmt, torch.float32), kernel.rand_mask(rand_bits))
    return (*grid, saturate, shape.parity_from_exponent, shape.flush, shape.symmetric,
            shape.negative_zero, nan_block, math.frexp(fmt.max)[1] - 1, margin)


def run(out: torch.Tensor, x: torch.Tensor, fmt: Format, rand_bits: int, shape: Shape,
        mode: str, overflow: str, nan_block: bool, margin: int, size: int,
        seed: torch.Tensor) -> bool:
    """``out[:] = 2**X round(x 2**-X)`` per block of ``size`` along dim 1 of the contiguous
    ``(outer, n, inner)`` float32 ``x`` into the contiguous float32 ``out`` (may be ``x``);
    ``shape``: the format's :class:`.kernel.Shape` (signed), its grids shiftable in float32
    (the caller's ``"floor"`` rule, ``margin <= 0``: :func:`.slicescale._shiftable`).
    Returns ``False`` (nothing written) where the kernel declines."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or out.dtype != torch.float32
            or mode not in _MODES or shape.wide_index or not shape.signed):
        return False
    outer, n, inner = x.shape
    if outer * -(-n // size) * size * inner >= 2**31:
        return False
    fn = _function()
    if fn is None:
        return False
    rule = _rule(fmt, rand_bits, shape, overflow == "saturate", nan_block, margin)
    words = (ctypes.c_int32 * 20)(*rule, *(seed.tolist() if mode == "stochastic" else (0, 0)))
    by_float = (mode == "nearest" and 1 <= fmt.grid_man <= 22 and shape.symmetric
                and shape.negative_zero and not (shape.flush or shape.parity_from_exponent))
    threads = 1 if x.numel() < GRAIN else torch.get_num_threads()
    failed = fn(x.data_ptr(), out.data_ptr(), outer, n, inner, size, words,
                native.NEAREST_FLOAT if by_float else native.MODES.index(mode), threads)
    return not failed
