"""Rounding of float32 tensors in C++ (``block_kernel.cpp``): per-block power-of-two
scaling (:func:`run`) and plain rounding (:func:`round_flat`).

:func:`run` computes what :func:`.slicescale.fused_round` computes for blocks on the
shifted grid (``y = 2**X round(x 2**-X)`` per block, ``X`` by the ``"floor"`` rule): the
block's amax, its exponent and the rounding, :func:`.kernel.round_kernel` ported lane for
lane on 16 int32 lanes, stochastic rounding hashing the same element indices with the same
seed words; so the bits are the torch path's, for every mode and overflow rule (block
scaling in float32 sees nearest-even, nearest-away and stochastic rounding: :mod:`.scaling`
computes the directed modes and "odd" in float64). Nearest-even,
for the floating-point formats that admit it, scales, rounds and unscales in float32
operations instead (``NEAREST_FLOAT``: the same bits in about half the operations;
block_kernel.cpp says why they are exact). Inductor's loop takes a horizontal maximum per
block and recomputes a block's exponent and grid once per 16-lane vector; here a block's
exponent is computed once (blocks along rows, 64 blocks' exponents before their roundings)
or for 16 blocks at once (blocks across rows, one per lane): MX block rounding 1.2-2.8x
faster than the compiled kernel, and an mxfp8 GPT step 0.1-0.2x of an fp32 step cheaper
(docs/benchmarks.md).

:func:`round_flat` serves :func:`.cast.round_measured` (every ``lp.quantize`` without
scaling or with a per-tensor scale, and so every rounding of the study's recipes): the
kernel's own time is the compiled kernel's (both compute-bound at about 30 integer vector
operations per element), but a call costs a few microseconds of Python and ctypes instead
of the compiled graph's wrappers, and far less after a convolution has evicted the caches
(a 2400-element rounding right after cifar10_quick's first convolution: 134 us against
336 us): a cifar10_quick training step 0.03-0.07x of an fp32 step cheaper
(docs/benchmarks.md).

It declines (returns ``False``: the caller takes the compiled path) off the CPU, for
non-contiguous tensors, inputs or results other than float32, formats float32 cannot hold,
unsigned formats, with telemetry (the statistics and scales are the compiled kernel's),
with ``2**31`` elements or more, or without a compiler (:mod:`.native`).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from . import kernel, native
from .formats import Format
from .kernel import Shape

__all__ = ["round_flat", "run"]

#: elements below which a call runs on one thread (waking a second costs more)
GRAIN = 1 << 15


@functools.lru_cache(maxsize=1)
def _function() -> Callable[..., int] | None:
    """``lowprec_block_round`` with its C signature; ``None`` without the library."""
    i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    return native.function("block_kernel", "lowprec_block_round",
                           [vp, vp, i64, i64, i64, i64, vp, i32, i32])


@functools.lru_cache(maxsize=1)
def _plain() -> Callable[..., int] | None:
    """``lowprec_round`` with its C signature; ``None`` without the library."""
    i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    return native.function("block_kernel", "lowprec_round", [vp, vp, i64, vp, i32, i32])


@functools.lru_cache(maxsize=256)
def _rule(fmt: Format, rand_bits: int, shape: Shape, saturate: bool, nan_block: bool,
          margin: int) -> tuple[int, ...]:
    """The ``Rule`` of block_kernel.cpp but its two seed words: the float32 grid constants
    and rand_mask, the flags, the format's ``emax`` and ``margin``."""
    grid = (*kernel.grid_constants(fmt, torch.float32), kernel.rand_mask(rand_bits))
    return (*grid, saturate, shape.parity_from_exponent, shape.flush, shape.symmetric,
            shape.negative_zero, nan_block, math.frexp(fmt.max)[1] - 1, margin)


def _call(fn: Callable[..., int] | None, out: torch.Tensor, x: torch.Tensor, fmt: Format,
          rand_bits: int, shape: Shape, mode: str, overflow: str, nan_block: bool,
          margin: int, seed: torch.Tensor, elements: int
          ) -> tuple[Callable[..., int], Any, int, int] | None:
    """``(fn, rule words, mode code, threads)`` of a call of ``fn`` the kernel serves, else
    ``None``; ``elements``: what it indexes (blocks padded)."""
    if (fn is None or x.device.type != "cpu" or x.dtype != torch.float32
            or out.dtype != torch.float32 or not (x.is_contiguous() and out.is_contiguous())
            or shape.wide_index or not shape.signed or elements >= 2**31):
        return None
    rule = _rule(fmt, rand_bits, shape, overflow == "saturate", nan_block, margin)
    words = (ctypes.c_int32 * 20)(*rule, *(seed.tolist() if mode == "stochastic" else (0, 0)))
    by_float = (mode == "nearest" and 1 <= fmt.grid_man <= 22 and shape.symmetric
                and shape.negative_zero and not (shape.flush or shape.parity_from_exponent)
                and fmt.grid_qmin >= -149 and fmt.grid_qmin + fmt.grid_man >= -126)
    threads = 1 if x.numel() < GRAIN else torch.get_num_threads()
    return fn, words, native.NEAREST_FLOAT if by_float else native.MODES.index(mode), threads


def run(out: torch.Tensor, x: torch.Tensor, fmt: Format, rand_bits: int, shape: Shape,
        mode: str, overflow: str, nan_block: bool, margin: int, size: int,
        seed: torch.Tensor) -> bool:
    """``out[:] = 2**X round(x 2**-X)`` per block of ``size`` along dim 1 of the contiguous
    ``(outer, n, inner)`` float32 ``x`` into the contiguous float32 ``out`` (may be ``x``);
    ``shape``: the format's :class:`.kernel.Shape` (signed), its grids shiftable in float32
    (the caller's ``"floor"`` rule, ``margin <= 0``: :func:`.slicescale._shiftable`).
    Returns ``False`` (nothing written) where the kernel declines."""
    outer, n, inner = x.shape
    call = _call(_function(), out, x, fmt, rand_bits, shape, mode, overflow, nan_block,
                 margin, seed, outer * -(-n // size) * size * inner)
    if call is None:
        return False
    fn, words, code, threads = call
    return not fn(x.data_ptr(), out.data_ptr(), outer, n, inner, size, words, code, threads)


def round_flat(out: torch.Tensor, x: torch.Tensor, fmt: Format, rand_bits: int,
               shape: Shape, mode: str, overflow: str, seed: torch.Tensor) -> bool:
    """``out[:] = round(x)`` onto ``fmt`` (no scaling) for flat contiguous float32 ``x`` and
    ``out`` (may be one tensor), as :func:`.kernel.round_flat` computes it (an element's
    stochastic index its position); ``False`` (nothing written) where the kernel
    declines."""
    plain = _plain() if _function() is not None else None  # one library: one switch
    call = _call(plain, out, x, fmt, rand_bits, shape, mode, overflow, False, 0, seed,
                 x.numel())
    if call is None:
        return False
    fn, words, code, threads = call
    return not fn(x.data_ptr(), out.data_ptr(), x.numel(), words, code, threads)
