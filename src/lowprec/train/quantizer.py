"""Quantizers: a :class:`~lowprec.QuantSpec` bound to its scale state and random stream.

The split follows Transformer Engine's recipe/quantizer one: a :class:`QuantSpec` is
frozen configuration (a recipe holds it, many tensors share it); a :class:`Quantizer`
holds what one tensor's rounding needs over time: the spec, its scale state (a
:class:`~lowprec.ScaleState` from :meth:`Scaling.new_state`: ``method="history"`` keeps
its amax history here, never in the shared config) and where its random bits come from.
``Q = Quantizer(spec)``; ``Q(x)`` is ``lowprec.quantize(x, spec.format, spec.rounding,
...)``.

Rounding inside autograd (:class:`Quantize`, :func:`quantize_ste`): the forward is
``y = Q_f(x)``; the backward passes the gradient straight through (``dL/dx = dL/dy``,
the straight-through estimator: ``Q_f`` has derivative 0 almost everywhere) or rounded,
``dL/dx = Q_b(dL/dy)``, as QPyTorch's ``Quantizer(forward_number, backward_number)``.

Random streams: :func:`keyed_generator` names a stream by integers (seed, step, op
position, ...) instead of drawing it, so a recomputation (activation checkpointing) of
the same op in the same step draws the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..numerics.quantize import quantize
from ..numerics.telemetry import TelemetryLog
from .recipe import QuantSpec, SpecLike, as_spec

__all__ = ["Quantize", "Quantizer", "keyed_generator", "quantize_ste"]

_MASK64 = 2**64 - 1


def _splitmix64(h: int, k: int) -> int:
    """One splitmix64 step on ``h + k`` (mod 2**64): a bijective, well-mixed 64-bit hash."""
    z = (h + k + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def key_hash(*key: int) -> int:
    """``h(key)``: :func:`_splitmix64` folded over the integers of ``key`` (mod 2**64)."""
    h = 0
    for k in key:
        h = _splitmix64(h, k & _MASK64)
    return h


def keyed_generator(*key: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``h(key)`` (:func:`key_hash`): a stream named by
    its key instead of drawn, so that its seed does not depend on the order of other
    roundings."""
    return torch.Generator().manual_seed(key_hash(*key))


class Quantizer:
    """Rounds tensors with ``spec``, its own scale state and a random stream.

    Args:
        spec: a :class:`QuantSpec` (or anything :func:`~lowprec.recipe.as_spec` takes).
        generator: the stream of stochastic rounding (default: torch's global one), or a
            callable returning the generator to use for each call.
        log, key: if given, ``Q(x, record=True)`` adds a
            :class:`~lowprec.QuantInfo` to ``log`` under ``key``.
    """

    def __init__(self, spec: SpecLike, *,
                 generator: torch.Generator | Callable[[], torch.Generator | None] | None = None,
                 log: TelemetryLog | None = None, key: str = "") -> None:
        s = as_spec(spec, "Quantizer spec")
        if s is None:
            raise ValueError("Quantizer needs a format; 'none' (fp32) rounds nothing")
        self.spec: QuantSpec = s
        self.scaling = s.scaling
        self.scale_state = None if s.scaling is None else s.scaling.new_state()
        self._stream = generator if callable(generator) else (lambda: generator)
        self.log, self.key = log, key

    def __call__(self, x: torch.Tensor, record: bool = False, out: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, scaling: Any = None) -> torch.Tensor:
        """``Q(x)`` into ``out`` (may be ``x``) or a new tensor. ``generator`` replaces the
        stream for this call, ``scaling`` the bound scaling (e.g. on another axis)."""
        s = self.spec
        gen = generator if generator is not None or s.rounding != "stochastic" else self._stream()
        record = record and self.log is not None
        y = quantize(x, s.format, s.rounding, generator=gen, rand_bits=s.rand_bits,
                     overflow=s.overflow, scaling=self.scaling if scaling is None else scaling,
                     scale_state=self.scale_state, out=out, return_info=record)
        if record:
            y, info = y
            self.log.update(self.key, info)  # type: ignore[union-attr]
        return y

    def inplace(self, t: torch.Tensor) -> None:
        """``t ← Q(t)``."""
        self(t, out=t)

    def state_dict(self) -> dict[str, Any]:
        """The scale state (amax history) of ``method="history"``; ``{}`` otherwise."""
        st = self.scale_state
        return {} if st is None else {"scale": st.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scale" in state:
            self.scale_state.load_state_dict(state["scale"])  # type: ignore[union-attr]


class _QuantizeFn(torch.autograd.Function):
    """Forward ``Q_f(x)`` (or ``x``), backward ``Q_b(g)`` (or ``g``: straight through)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fwd: Callable[[torch.Tensor], torch.Tensor] | None,
                bwd: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        ctx.bwd = bwd
        return x.clone() if fwd is None else fwd(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        return (g if ctx.bwd is None else ctx.bwd(g)), None, None


def quantize_ste(x: torch.Tensor, spec: SpecLike, backward: SpecLike = None, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``lowprec.quantize`` with a gradient: forward ``Q(x)`` with ``spec``; backward the
    gradient straight through, or rounded with ``backward`` if given."""
    f = None if as_spec(spec) is None else Quantizer(spec, generator=generator)
    b = None if as_spec(backward) is None else Quantizer(backward, generator=generator)
    return _QuantizeFn.apply(x, f, b)


class Quantize(nn.Module):
    """A layer that rounds what passes through it, forward with ``forward``, the gradient
    with ``backward`` (``None``: unchanged), as QPyTorch's ``Quantizer``; each side keeps
    its own :class:`Quantizer` (scale state)."""

    def __init__(self, forward: SpecLike = None, backward: SpecLike = None, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.fwd = None if as_spec(forward) is None else Quantizer(forward, generator=generator)
        self.bwd = None if as_spec(backward) is None else Quantizer(backward, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantizeFn.apply(x, self.fwd, self.bwd)

    def extra_repr(self) -> str:
        f = self.fwd and self.fwd.spec.format.name
        b = self.bwd and self.bwd.spec.format.name
        return f"forward={f}, backward={b}"
