"""Elementwise rounding onto a format, no scaling: the kernel's entry point.

The input is rounded once, from its exact value: float16/bfloat16 inputs are
widened to float32 (exact), float32 inputs are worked on directly and float64
inputs in float64; formats whose values float32 cannot hold (spacings below
``2**-149``, maxima beyond float32) are computed in float64. The result has the
input's dtype. Where the format holds values the input dtype cannot (e.g.
``FixedPoint(12, 8)`` on a bfloat16 tensor, 11 significant bits into 8), that
last conversion rounds to nearest-even: pass ``out=`` a float32 tensor to keep
the exact value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from . import kernel
from .formats import Format
from .rounding import check_mode, check_overflow, check_rand_bits

__all__ = ["round_to_format"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@lru_cache(maxsize=1024)
def _constants(fmt: Format, dtype: torch.dtype, rand_bits: int, device: torch.device) -> tuple[
    torch.dtype, torch.Tensor, kernel.Shape, kernel.Shape,
]:
    """Compute dtype, the kernel's constants as a tensor on ``device``, and its shapes (for
    up to 2**31 elements, and more)."""
    compute = torch.float32 if dtype != torch.float64 and fmt.float32_exact else torch.float64
    grid = (*kernel.grid_constants(fmt, compute), kernel.rand_mask(rand_bits),
            *range(kernel.LANES))
    flush = fmt.grid_flush > fmt.grid_qmin
    subnormal_inputs = kernel.grid_below_container(grid, flush)
    shapes = (kernel.Shape(fmt.parity_from_exponent, flush, fmt.max == fmt.max_negative,
                            wide, subnormal_inputs, fmt.negative_zero, fmt.signed)
              for wide in (False, True))
    return (compute, torch.tensor(grid, dtype=kernel.int_dtype(compute), device=device),
            *shapes)


def _check_tensor(x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"quantize expects a float16/bfloat16/float32/float64 tensor, got {x.dtype}; "
            "convert integer data with .float() first"
        )


def _draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Two 32-bit seed words from ``generator`` (default: torch's global one), on ``device``."""
    words = torch.randint(-(2**31), 2**31, (2,), generator=generator, dtype=torch.int32,
                          device=generator.device if generator is not None else "cpu")
    return words.to(device, non_blocking=True)


def round_to_format(
    x: torch.Tensor,
    fmt: Format,
    rounding: str = "nearest",
    *,
    generator: torch.Generator | None = None,
    rand_bits: int | None = None,
    overflow: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round ``x`` elementwise onto ``fmt`` (no scaling), into ``out`` or a new tensor like x."""
    _check_tensor(x)
    check_mode(rounding)
    bits = check_rand_bits(rand_bits, rounding)
    ovf = check_overflow(overflow, fmt.has_inf, fmt.has_nan, fmt.name)
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, x has {tuple(x.shape)}")
    if x.numel() == 0:
        return out
    compute, grid, narrow, wide = _constants(fmt, x.dtype, bits, x.device)
    stochastic = rounding == "stochastic"
    seed = _draw_seed(generator, x.device) if stochastic else kernel.zeros((2,), x.device)
    target = out if out.is_contiguous() else out.contiguous()
    # flat aliases that are not autograd views: compiled graphs then do not depend on (and
    # are not recompiled for) the shape of the tensor they alias; in place, one object
    flat_out = target.view(-1).detach()
    same = x.data_ptr() == target.data_ptr() and x.dtype == target.dtype and x.is_contiguous()
    kernel.round_flat(
        flat_out,
        flat_out if same else x.reshape(-1).detach(),
        grid,
        seed,
        rounding,
        ovf,
        wide if x.numel() > 2**31 else narrow,
        compute,
    )
    if target is not out:
        out.copy_(target)
    return out
