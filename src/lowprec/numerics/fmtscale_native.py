"""Per-block scales rounded into a format (NVFP4-style) as one C++ kernel
(``fmtscale_kernel.cpp``).

:func:`run` computes what :func:`.scaling.scaled_round` computes for
``Scaling(granularity="block", scale_format=<a Format>)``, with or without a per-tensor
scale (``tensor_scale``): each block's amax, the tensor scale, the block scales rounded
into the scale format, the elements divided by them, rounded and multiplied back, all in
float64 with the torch path's operations in its order and :func:`.kernel.round_kernel`
ported to float64 lanes (round8.h), stochastic rounding hashing the same indices with the
same seed words: the torch path's bits, for every rounding mode. The torch path makes
about ten passes over the tensor in float64, some of them copies; here three passes read
the float32 tensor (amaxes; elements), so an nvfp4 training step costs about what an
mxfp8 one does (docs/benchmarks.md).

It declines (returns ``None``: the caller takes the torch path) off the CPU, for inputs or
results other than float32, for formats round8 has no variant for (unsigned ones), with
telemetry or history scaling (the caller does not ask then), with ``2**31`` elements or
more, or without a compiler (:mod:`.native`).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable

import torch

from . import native
from .cast import _draw_seed
from .formats import Format
from .rounding import check_mode, check_overflow, check_rand_bits

__all__ = ["run"]

#: elements below which a call runs on one thread (waking a second costs more)
GRAIN = 1 << 15


@functools.lru_cache(maxsize=1)
def _function() -> Callable[..., int] | None:
    """``lowprec_fmtscale_round`` with its C signature; ``None`` without the library."""
    i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    return native.function("fmtscale_kernel", "lowprec_fmtscale_round",
                           [vp, vp, i64, i64, i64, i64, vp, vp, vp, vp, i32, i32])


def run(x: torch.Tensor, fmt: Format, rounding: str, sfmt: Format, axis: int, block: int,
        scale_mode: str, margin: int, nan_block: bool, tensor_scale: bool,
        dtype: torch.dtype, *, generator: torch.Generator | None, rand_bits: int | None,
        overflow: str) -> torch.Tensor | None:
    """``x`` (non-empty) rounded onto ``fmt`` with per-block scales in ``sfmt`` along
    ``axis`` (blocks of ``block``; ``scale_mode`` the scales' rounding mode: "down", "up"
    or "nearest"), as :func:`.scaling.scaled_round`'s torch path rounds it, or ``None``
    where the kernel declines (module docstring)."""
    mode = check_mode(rounding)
    bits = check_rand_bits(rand_bits, mode)
    ovf = check_overflow(overflow, fmt.has_inf, fmt.has_nan, fmt.name)
    if x.device.type != "cpu" or x.dtype != torch.float32 or dtype != torch.float32:
        return None
    axis %= x.ndim
    n = x.shape[axis]
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    size = max(1, min(block, n))
    elem = native.rule64(fmt, bits, ovf)
    scale = native.rule64(sfmt, bits, "saturate")
    fn = _function() if outer * -(-n // size) * size * inner < 2**31 else None
    if elem is None or scale is None or fn is None:
        return None
    seed = (_draw_seed(generator, x.device, x).tolist() if mode == "stochastic"
            else [0, 0])  # drawn as the torch path draws it, once, for the elements
    flags = torch.tensor([*elem[1].tolist(), *scale[1].tolist(),
                          native.MODES.index(scale_mode), nan_block,
                          tensor_scale, *seed], dtype=torch.int32)
    values = torch.tensor([fmt.max, sfmt.max, sfmt.min_subnormal, math.ldexp(1.0, margin)],
                          dtype=torch.float64)
    x3 = x.detach().contiguous()
    y = torch.empty(x.shape, dtype=torch.float32)
    threads = 1 if x.numel() < GRAIN else torch.get_num_threads()
    failed = fn(x3.data_ptr(), y.data_ptr(), outer, n, inner, size, elem[0].data_ptr(),
                scale[0].data_ptr(), flags.data_ptr(), values.data_ptr(),
                native.code64(fmt, mode, bits, ovf), threads)
    assert not failed, mode  # every mode has a kernel
    return y
