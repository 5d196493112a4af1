"""Elementwise rounding onto a format, no scaling: the kernel's entry point.

The input is rounded once, from its exact value: float16/bfloat16 inputs are
widened to float32 (exact), float32 inputs are worked on directly and float64
inputs in float64; formats whose values float32 cannot hold (spacings below
``2**-149``, maxima beyond float32) are computed in float64. The result has the
input's dtype. Where the format holds values the input dtype cannot (e.g.
``FixedPoint(12, 8)`` on a bfloat16 tensor, 11 significant bits into 8), that
last conversion rounds to nearest-even: pass ``out=`` a float32 tensor to keep
the exact value. On the CPU, float32 to float32 in float32 arithmetic runs in C++
(:func:`.block_native.round_flat`: the same bits), everything else through
:func:`.kernel.round_flat` (compiled or eager).
"""

from __future__ import annotations

from typing import Any

import torch

from . import block_native, kernel
from .formats import Format
from .rounding import check_mode, check_overflow, check_rand_bits

__all__ = ["check_inputs", "register_generator", "round_measured", "round_to_format",
           "unregister_generator"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"quantize expects a float16/bfloat16/float32/float64 tensor, got {x.dtype}; "
            "convert integer data with .float() first"
        )


def check_inputs(x: Any, out: Any, generator: Any) -> None:
    """Reject an ``x`` that is no float tensor, an ``out`` that cannot receive the result
    and a ``generator`` that is none (clear TypeError/ValueError/RuntimeError)."""
    _check_tensor(x)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}; e.g. torch.Generator().manual_seed(5)")
    if out is None:
        return
    if not isinstance(out, torch.Tensor) or out.dtype not in _FLOAT_DTYPES:
        got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"out must be a float16/bfloat16/float32/float64 tensor, got {got}")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, x has {tuple(x.shape)}")
    if out.requires_grad and out.is_leaf and torch.is_grad_enabled():
        raise RuntimeError("out is a leaf tensor that requires grad: writing into it is an "
                           "in-place operation autograd forbids (as torch's in-place ops do); "
                           "quantize under torch.no_grad() or into out.data")


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The byte range ``[start, end)`` that ``t``'s elements occupy."""
    steps = [(n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)]
    low, high = sum(min(0, s) for s in steps), sum(max(0, s) for s in steps)
    return t.data_ptr() + low * t.element_size(), t.data_ptr() + (high + 1) * t.element_size()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory of ``a`` and ``b`` (non-empty) may intersect."""
    if a.device != b.device:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _draw_seed(generator: torch.Generator | None, device: torch.device,
               anchor: torch.Tensor | None = None) -> torch.Tensor:
    """Two 32-bit seed words from ``generator`` (default: torch's global one), on ``device``.

    Inside a graph ``torch.compile`` traces (which cannot hold a ``torch.Generator``) the
    draw is the custom op ``lowprec::seed_words``: opaque to the compiler, it draws the
    same words from the same generator when the graph runs, so compiled roundings use the
    eager ones' random stream. It takes the tensor to be rounded (``anchor``) as an input,
    so the graph draws when that tensor exists, as eager code does: a backward rounding's
    draw cannot be hoisted into the forward graph."""
    if torch.compiler.is_compiling():
        gen = torch.default_generator if generator is None else generator
        if id(gen) not in _GENERATORS:
            raise ValueError("stochastic rounding inside torch.compile draws from registered "
                             "generators only: call lowprec.numerics.cast.register_generator"
                             "(generator) before compiling (prepare registers its own)")
        return _seed_words(id(gen), torch.empty(0, device=device) if anchor is None else anchor)
    words = torch.randint(-(2**31), 2**31, (2,), generator=generator, dtype=torch.int32,
                          device=generator.device if generator is not None else "cpu")
    return words.to(device, non_blocking=True)


#: the generators compiled graphs draw seeds from, by ``id`` (held while they may run)
_GENERATORS: dict[int, torch.Generator] = {id(torch.default_generator): torch.default_generator}


def register_generator(generator: torch.Generator) -> torch.Generator:
    """Let roundings inside ``torch.compile``d code draw their seeds from ``generator``
    (a compiled graph holds no generator object, only its registered ``id``); returns it."""
    _GENERATORS[id(generator)] = generator
    return generator


def unregister_generator(generator: torch.Generator) -> None:
    """Forget a :func:`register_generator`'d generator (its graphs may run no more)."""
    if generator is not torch.default_generator:
        _GENERATORS.pop(id(generator), None)


@torch.library.custom_op("lowprec::seed_words", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def _seed_words(key: int, anchor: torch.Tensor) -> torch.Tensor:
    """:func:`_draw_seed` from the generator registered under ``key``, on ``anchor``'s
    device, once ``anchor`` is computed (compiled graphs)."""
    return _draw_seed(_GENERATORS[key], anchor.device)


@_seed_words.register_fake
def _(key: int, anchor: torch.Tensor) -> torch.Tensor:
    return torch.empty(2, dtype=torch.int32, device=anchor.device)


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
    return round_measured(x, fmt, rounding, generator=generator, rand_bits=rand_bits,
                          overflow=overflow, out=out, stats=False)[0]


def round_measured(
    x: torch.Tensor,
    fmt: Format,
    rounding: str = "nearest",
    *,
    generator: torch.Generator | None = None,
    rand_bits: int | None = None,
    overflow: str | None = None,
    out: torch.Tensor | None = None,
    stats: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`round_to_format`, and with ``stats`` the rounding's telemetry measured in the
    same pass (:func:`lowprec.numerics.kernel.telemetry`: a float64 device tensor, no sync;
    ``None`` for an empty ``x``)."""
    check_mode(rounding)
    bits = check_rand_bits(rand_bits, rounding)
    ovf = check_overflow(overflow, fmt.has_inf, fmt.has_nan, fmt.name)
    check_inputs(x, out, generator)
    given = out
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out, None
    # traced: the computation itself (dynamo does not keep lru_cache's table; no warning)
    constants = (kernel.constants.__wrapped__ if torch.compiler.is_compiling()
                 else kernel.constants)
    compute, grid, narrow, wide = constants(fmt, x.dtype, bits, x.device)
    stochastic = rounding == "stochastic"
    seed = _draw_seed(generator, x.device, x) if stochastic else kernel.zeros((2,), x.device)
    if torch.compiler.is_compiling():  # traced: a value of the graph, no buffer written
        with torch.no_grad():
            y, measured = kernel.round_values(
                x.detach().contiguous(), grid, seed, rounding, ovf,
                wide if x.numel() > 2**31 else narrow, compute, out.dtype, stats)
        return (y if given is None else given.copy_(y)), measured
    target = out if out.is_contiguous() else out.contiguous()
    # flat aliases that are not autograd views: compiled graphs then do not depend on (and
    # are not recompiled for) the shape of the tensor they alias; in place, one object
    flat_out = target.view(-1).detach()
    same = x.data_ptr() == target.data_ptr() and x.dtype == target.dtype and x.is_contiguous()
    if not same and overlaps(x, target):  # partial overlap: read x before writing any of out
        x = x.clone()
    flat_x = flat_out if same else x.reshape(-1).detach()
    shape = wide if x.numel() > 2**31 else narrow
    if (not stats and compute == torch.float32
            and block_native.round_flat(flat_out, flat_x, fmt, bits, shape, rounding, ovf, seed)):
        measured = None  # the C++ kernel (CPU, float32; the same bits)
    else:
        measured = kernel.round_flat(flat_out, flat_x, grid, seed, rounding, ovf, shape,
                                     compute, stats)
    if target is not out:
        out.copy_(target)
    return out, measured
