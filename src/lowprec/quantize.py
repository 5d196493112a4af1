"""``quantize``: the value a tensor holds once stored in a format with a rounding mode.

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
from typing import TYPE_CHECKING, Any

import torch

from . import _kernel
from .formats import Format, get
from .rounding import check_mode, check_overflow, check_rand_bits

if TYPE_CHECKING:
    from .scaling import Scaling

__all__ = ["quantize", "round_to_format"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@lru_cache(maxsize=1024)
def _constants(fmt: Format, dtype: torch.dtype, rand_bits: int, device: torch.device) -> tuple[
    torch.dtype, torch.Tensor, _kernel.Shape, _kernel.Shape,
]:
    """Compute dtype, the kernel's constants as a tensor on ``device``, and its shapes (for
    up to 2**31 elements, and more)."""
    compute = torch.float32 if dtype != torch.float64 and fmt.float32_exact else torch.float64
    grid = (*_kernel.grid_constants(fmt, compute), _kernel.rand_mask(rand_bits),
            *range(_kernel.LANES))
    flush = fmt.grid_flush > fmt.grid_qmin
    subnormal_inputs = _kernel.grid_below_container(grid, flush)
    shapes = (_kernel.Shape(fmt.parity_from_exponent, flush, fmt.max == fmt.max_negative,
                            wide, subnormal_inputs, fmt.negative_zero, fmt.signed)
              for wide in (False, True))
    return (compute, torch.tensor(grid, dtype=_kernel.int_dtype(compute), device=device),
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
    seed = _draw_seed(generator, x.device) if stochastic else _kernel.zeros((2,), x.device)
    target = out if out.is_contiguous() else out.contiguous()
    # flat aliases that are not autograd views: compiled graphs then do not depend on (and
    # are not recompiled for) the shape of the tensor they alias; in place, one object
    flat_out = target.view(-1).detach()
    same = x.data_ptr() == target.data_ptr() and x.dtype == target.dtype and x.is_contiguous()
    _kernel.round_flat(
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


def quantize(
    x: torch.Tensor,
    fmt: Format | str,
    rounding: str = "nearest",
    *,
    generator: torch.Generator | None = None,
    rand_bits: int | None = None,
    overflow: str | None = None,
    scaling: Scaling | None = None,
    out: torch.Tensor | None = None,
    return_info: bool = False,
) -> Any:
    """Round ``x`` into ``fmt`` with mode ``rounding``; returns a tensor like ``x``.

    Args:
        x: float16/bfloat16/float32/float64 tensor on any device.
        fmt: a :class:`~lowprec.formats.Format` or a preset name; a
            :class:`~lowprec.scaling.ScaledFormat` (e.g. ``"mxfp8_e4m3"``) brings its scaling.
        rounding: one of :data:`lowprec.rounding.MODES`.
        generator: source of the seed for ``"stochastic"`` (default: torch's global one).
        rand_bits: random bits per stochastic rounding (1..30; default 30, see rounding).
        overflow: ``"saturate"`` or ``"inf"``; default ``"inf"`` if the format has inf.
        scaling: a :class:`~lowprec.scaling.Scaling` mapping the tensor's range onto
            the format before rounding (and back after).
        out: tensor to write into (may be ``x`` itself); its dtype may differ from x's.
        return_info: also return a :class:`~lowprec.quantinfo.QuantInfo`.
    """
    fmt = get(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a lowprec Format or a preset name, got {fmt!r}")
    from .scaling import ScaledFormat

    if isinstance(fmt, ScaledFormat):  # a preset such as mxfp8_e4m3: element format + scaling
        if scaling is not None:
            raise ValueError(f"{fmt.name} carries its own scaling; do not pass scaling=")
        fmt, scaling = fmt.element, fmt.scaling
    kwargs = {"generator": generator, "rand_bits": rand_bits, "overflow": overflow, "out": out}
    info = None
    if scaling is not None:
        from .scaling import scaled_round

        y, info = scaled_round(x, fmt, rounding, scaling, return_info, **kwargs)
    else:
        in_place = out is not None and out.data_ptr() == x.data_ptr()
        x_in = x.clone() if return_info and in_place else x
        y = round_to_format(x, fmt, rounding, **kwargs)
        if return_info:
            from .quantinfo import QuantInfo

            info = QuantInfo.measure(x_in, y, fmt)
    return (y, info) if return_info else y
