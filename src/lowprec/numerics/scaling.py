"""Scaling: let a narrow format follow each slice's own range.

A :class:`Scaling` cuts a tensor into *slices* (the whole tensor, one slice per
index along ``axis``, or blocks of ``block`` consecutive elements along
``axis``), gives each slice a positive scale ``s`` and stores ``x`` as

    y = s * round(x / s)          (round: lowprec.quantize's rounding into the element format)

Scale rules, with ``amax`` the largest finite magnitude in the slice (``method="amax"``)
or the largest of the last ``history`` recorded ones (``method="history"``), ``max``
the element format's largest value and ``emax = floor(log2(max))``:

* ``scale_format="pow2"`` (default): ``s = 2**X``, ``X`` an E8M0-like exponent in
  ``[-127, 127]``. ``scale_rounding="floor"`` is the OCP MX rule ``X = floor(log2(amax)) - emax``
  (the slice's top lands in the element's top binade; what exceeds ``max`` saturates);
  ``"ceil"`` the smallest ``X`` with ``amax / 2**X <= max`` (never saturates; this is
  ``X = ceil(log2(amax / max))``, NVIDIA's and torchao's "RCEIL" to our knowledge);
  ``"even"`` rounds ``amax / max`` to the nearest power of two (a tie goes to the even
  exponent). ``margin`` is added to ``X`` (headroom, as Transformer Engine's margin).
  ``X`` is then clamped to ``[-127, 127]``: a slice beyond that range saturates or flushes.
  An all-zero slice gets the smallest scale, ``2**-127`` (``log2(0) = -inf``, clamped).
* any other ``scale_format`` (a :class:`~lowprec.formats.Format`, a preset name such
  as ``"fp8_e4m3"`` or ``"fp32"``): ``s = amax * 2**margin / max`` (computed in float64)
  rounded into the scale format *down* (``"floor"``, the top may saturate), *up*
  (``"ceil"``, never saturates) or to nearest-even (``"even"``), saturating at the scale
  format's max and raised to its smallest positive value where it would be 0.
  ``tensor_scale=True`` adds NVFP4's second level: a float32 per-tensor scale
  ``g = amax_tensor / (scale_max * max)`` divides the slice scales before they are
  rounded (``s = g * round(amax / (max * g))``).

Non-finite inputs: ``nan_policy="local"`` (default) leaves NaN elements NaN and scales
each slice by the amax of its finite elements; inf elements overflow like any value
beyond ``max``. ``nan_policy="block"`` is the OCP rule "a NaN scale makes the whole
block NaN": a slice holding a NaN or an inf gets a NaN scale and all its elements
become NaN (microxcaling does the same for inf, whose exponent overflows E8M0).

With scaling, ``overflow=None`` means ``"saturate"`` (the OCP MX conversion rule).
Power-of-two scaling is exact: ``x * 2**-X`` and ``q * 2**X`` are computed in float32
only when that is provably exact for the rounding (see :func:`_compute_dtype`), else in
float64. Other scales divide in float64 (one correct rounding before the element
rounding; for float32 inputs it cannot change a nearest-mode result).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from . import fmtscale_native
from .cast import round_measured, round_to_format
from .formats import Format, _require_int
from .slicescale import exp2_exact, slice_round
from .standard import standard
from .telemetry import QuantInfo

__all__ = ["Scaling", "ScaleState", "ScaledFormat", "scaled_round"]

GRANULARITIES = ("tensor", "channel", "block")
METHODS = ("amax", "history")
SCALE_ROUNDINGS = ("floor", "ceil", "even")
DEPRECATED_ROUNDING = ("Scaling's 'rounding' is deprecated: it is 'scale_rounding' now (floor, "
                       "ceil or even: how the scale is rounded; 'rounding' is the element's)")
NAN_POLICIES = ("local", "block")
EXP_MIN, EXP_MAX = -127, 127  # E8M0 exponent range (its 255th code is NaN)
_FORMAT_MODE = {"floor": "down", "ceil": "up", "even": "nearest"}


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown; allowed: {', '.join(allowed)}")


class ScaleState:
    """The amax history of one tensor for ``method="history"`` (delayed scaling).

    ``amax`` is a float64 tensor ``[length, *slice shape]`` (a ring buffer, created on the
    first call on the input's device) and ``count`` the number of calls recorded. Each
    call scales with the max over the recorded rows, i.e. the previous ``length`` calls
    (the current amax when none is recorded yet), then records the current amax.
    """

    def __init__(self, length: int) -> None:
        self.length = _require_int("history", length, 1)
        self.amax: torch.Tensor | None = None
        self.count = 0

    def step(self, current: torch.Tensor) -> torch.Tensor:
        """The amax to scale with now; records ``current`` (float64, per slice)."""
        if self.amax is None:
            self.amax = current.new_zeros((self.length, *current.shape))
        elif self.amax.shape[1:] != current.shape:
            raise ValueError(
                f"state holds amax for slices of shape {tuple(self.amax.shape[1:])}, this call "
                f"has {tuple(current.shape)}: keep one state per tensor (Scaling.new_state())"
            )
        used = self.amax[: min(self.count, self.length)].amax(0) if self.count else current
        self.amax[self.count % self.length] = current
        self.count += 1
        return used

    def reset(self) -> None:
        """Forget the history."""
        self.amax, self.count = None, 0

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: ``{"amax": tensor or None, "count": int}``."""
        return {"amax": self.amax, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        amax = state["amax"]
        if amax is not None and amax.shape[0] != self.length:
            raise ValueError(f"history length {amax.shape[0]} != this state's {self.length}")
        self.amax, self.count = amax, int(state["count"])


@dataclass(frozen=True)
class Scaling:
    """How to cut a tensor into slices and choose each slice's scale (module docstring).

    ``granularity``: ``"tensor"`` (one scale), ``"channel"`` (one per index along
    ``axis``), ``"block"`` (``block`` consecutive elements along ``axis``; a ragged tail is
    its own shorter block, as if zero-padded). The scales come back as ``info.scales``
    (``quantize(..., return_info=True)``): shape ``()`` per tensor, ``(C,)`` per channel,
    ``x``'s shape with ``axis`` cut to the number of blocks per block.

    Delayed scaling: ``Scaling(method="history", history=16)`` is configuration only (as
    in a recipe); the history lives in a :class:`ScaleState` that the caller owns, one per
    tensor, and passes along: ``quantize(x, fmt, scaling=s, scale_state=state)`` reads and
    updates it (a training integration's :class:`lowprec.Quantizer` holds it). Without a
    state, ``method="history"`` raises ``ValueError`` rather than silently sharing one
    history between tensors.
    """

    granularity: str = "tensor"
    axis: int = -1
    block: int = 32
    scale_format: Format | str = "pow2"
    method: str = "amax"
    scale_rounding: str = "floor"
    margin: int = 0
    history: int = 16
    nan_policy: str = "local"
    tensor_scale: bool = False
    #: deprecated spelling of ``scale_rounding`` (it collided with the element rounding)
    rounding: InitVar[str | None] = None

    def __post_init__(self, rounding: str | None) -> None:
        if rounding is not None:
            warnings.warn(DEPRECATED_ROUNDING, DeprecationWarning, stacklevel=3)
            if self.scale_rounding not in ("floor", rounding):
                raise ValueError(f"rounding={rounding!r} and scale_rounding="
                                 f"{self.scale_rounding!r}: give only scale_rounding")
            object.__setattr__(self, "scale_rounding", rounding)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("method", self.method, METHODS)
        _choice("scale_rounding", self.scale_rounding, SCALE_ROUNDINGS)
        _choice("nan_policy", self.nan_policy, NAN_POLICIES)
        _require_int("axis", self.axis)
        _require_int("block", self.block, 1)
        _require_int("margin", self.margin)
        _require_int("history", self.history, 1)
        if self.scale_format != "pow2":
            object.__setattr__(self, "scale_format", _scale_format(self.scale_format))
        if self.tensor_scale and (self.pow2 or self.granularity == "tensor"):
            raise ValueError(
                "tensor_scale=True needs a non-pow2 scale_format and granularity "
                "'channel' or 'block' (it is NVFP4's second, per-tensor level)"
            )

    @property
    def pow2(self) -> bool:
        """True for power-of-two (E8M0-like) scales."""
        return self.scale_format == "pow2"

    def new_state(self) -> ScaleState | None:
        """A fresh :class:`ScaleState` for one tensor (``None`` unless ``method="history"``)."""
        return ScaleState(self.history) if self.method == "history" else None

    def transposed(self, dim0: int = -2, dim1: int = -1) -> Scaling:
        """The same slices for ``x.transpose(dim0, dim1)``: ``axis`` follows the swap.

        ``quantize(x.transpose(dim0, dim1), fmt, scaling=s.transposed(dim0, dim1))`` equals
        ``quantize(x, fmt, scaling=s).transpose(dim0, dim1)``. Give ``dim0``/``dim1`` with
        the sign convention of ``axis``. A bound state is shared (same tensor, same slices).
        """
        if self.granularity == "tensor":
            return self
        if not (self.axis < 0) == (dim0 < 0) == (dim1 < 0):
            raise ValueError(
                f"axis={self.axis} and dims ({dim0}, {dim1}) mix negative and non-negative "
                "indices; use one convention"
            )
        axis = dim1 if self.axis == dim0 else dim0 if self.axis == dim1 else self.axis
        return replace(self, axis=axis)


def _scale_format(value: Format | str) -> Format:
    if isinstance(value, ScaledFormat) or not isinstance(value, Format | str):
        raise ValueError(f"scale_format={value!r} must be 'pow2', a preset name or a Format")
    try:
        fmt = standard(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(
            f"scale_format={value!r} is unknown; allowed: 'pow2', a Format or a preset name"
        ) from None
    if not fmt.max > 0:
        raise ValueError(f"scale_format={fmt.name} has no positive values")
    return fmt


@dataclass(frozen=True)
class ScaledFormat(Format):
    """An element format with its scaling, e.g. OCP MX: ``mxfp8_e4m3`` = E4M3 + blocks of 32.

    :func:`lowprec.quantize` accepts it as ``fmt`` and applies ``scaling``; it has no grid
    of its own, so unscaled rounding into it fails. ``bits`` is the element width.
    """

    element: Format
    scaling: Scaling

    def __post_init__(self) -> None:
        if isinstance(self.element, ScaledFormat) or not isinstance(self.element, Format):
            raise ValueError(f"element={self.element!r} must be an unscaled Format")

    @property
    def bits(self) -> int:
        return self.element.bits


def _emax(fmt: Format) -> int:
    """``floor(log2(fmt.max))``: the element format's top binade."""
    if not fmt.max > 0:
        raise ValueError(f"{fmt.name} has no positive values to scale onto")
    return math.frexp(fmt.max)[1] - 1


def _pow2_exponent(amax: torch.Tensor, fmt: Format, s: Scaling) -> torch.Tensor:
    """The scale exponent ``X`` (float64, integer-valued, clamped) of each slice.

    With ``amax = m * 2**e`` (``m`` in [0.5, 1)) and ``max = c * 2**(emax + 1)``,
    ``Xf = e - 1 - emax`` is OCP's exponent and ``amax / max = (m / c) * 2**Xf``. The
    comparisons of ``m`` with ``c``, ``3c/2`` and ``3c/4`` are done on 53-bit integers,
    so they are exact.
    """
    return _exponent(amax, fmt.max, _emax(fmt), s.scale_rounding, s.margin)


def _exponent(amax: torch.Tensor, fmax: float, emax: int, scale_rounding: str,
              margin: int) -> torch.Tensor:
    """:func:`_pow2_exponent` of a format whose largest value is ``fmax``, with
    ``emax = floor(log2 fmax)``."""
    m, e = torch.frexp(amax)
    x = (e.to(torch.float64) - 1 - emax)
    mi = torch.ldexp(m, torch.tensor(53.0, dtype=m.dtype, device=m.device)).to(torch.int64)
    ci = int(math.ldexp(fmax, 52 - emax))  # c * 2**53
    if scale_rounding == "ceil":
        x = x + (mi > ci).to(x.dtype)
    elif scale_rounding == "even":  # amax/max in (2**(Xf-1), 2**Xf) or [2**Xf, 2**(Xf+1))
        top = mi >= ci
        mid2, mid = torch.where(top, 2 * mi, 4 * mi), 3 * ci  # compared with the midpoint
        lo = torch.where(top, x, x - 1)
        tie_up = (mid2 == mid) & (torch.remainder(lo, 2) == 1)
        x = lo + ((mid2 > mid) | tie_up).to(x.dtype)
    x = torch.where(amax > 0, x + margin, -math.inf)
    return x.clamp(EXP_MIN, EXP_MAX)


@torch.library.custom_op("lowprec::pow2_scale", mutates_args=())
def _pow2_scale(amax: torch.Tensor, fmax: float, emax: int, scale_rounding: str,
                margin: int) -> torch.Tensor:
    """``2**X`` (float64, exactly) for the exponent :func:`_exponent` of ``amax``: an op
    opaque to the compiler, so that a compiled graph computes the scale once, into its own
    buffer, instead of inlining the ``frexp`` chain into the loop over the tensor it
    scales (once per 16 elements there: a compiled stochastic rounding of 3.3M elements
    took 4.8-6.1 ms with it, 4.0-4.4 ms without)."""
    return exp2_exact(_exponent(amax, fmax, emax, scale_rounding, margin), torch.float64)


@_pow2_scale.register_fake
def _(amax: torch.Tensor, fmax: float, emax: int, scale_rounding: str,
      margin: int) -> torch.Tensor:
    return torch.empty_like(amax, dtype=torch.float64)


def _pow2_exponent_of(amax: float, fmt: Format, s: Scaling) -> int:
    """:func:`_pow2_exponent` of one finite amax, in Python integers (no tensor operations:
    a per-tensor scale costs microseconds, which small tensors notice)."""
    if amax <= 0:
        return EXP_MIN
    emax = _emax(fmt)
    m, e = math.frexp(amax)
    x, mi, ci = e - 1 - emax, int(math.ldexp(m, 53)), int(math.ldexp(fmt.max, 52 - emax))
    if s.scale_rounding == "ceil":
        x += mi > ci
    elif s.scale_rounding == "even":
        lo, mid2 = (x, 2 * mi) if mi >= ci else (x - 1, 4 * mi)
        x = lo + (mid2 > 3 * ci or (mid2 == 3 * ci and lo % 2 == 1))
    return min(max(x + s.margin, EXP_MIN), EXP_MAX)


def _tensor_exponent(x: torch.Tensor, fmt: Format, s: Scaling, state: ScaleState | None
                     ) -> int:
    """The scale exponent of a whole tensor (``granularity="tensor"``, power-of-two)."""
    if state is None:  # one pass over x, then scalar arithmetic
        lo, hi = torch.aminmax(x)
        amax = max(float(hi), -float(lo))
        if math.isfinite(amax):
            return _pow2_exponent_of(amax, fmt, s)
    amax_t = _amax(x, None, s.nan_policy)[0].reshape(())
    if state is not None:
        amax_t = state.step(amax_t)
    return int(_pow2_exponent(amax_t, fmt, s))


def _format_scale(amax: torch.Tensor, fmt: Format, s: Scaling) -> torch.Tensor:
    """Scales rounded into a non-pow2 ``scale_format`` (float64; see the module docstring)."""
    sfmt = s.scale_format
    assert isinstance(sfmt, Format)
    g = torch.ones((), dtype=torch.float64, device=amax.device)
    if s.tensor_scale:
        g = (amax.amax() / (sfmt.max * fmt.max)).to(torch.float32).to(torch.float64)
        g = torch.where((g > 0) & torch.isfinite(g), g, 1.0)
    target = (amax * math.ldexp(1.0, s.margin) / (fmt.max * g)).reshape(-1).clone()
    sc = round_to_format(target, sfmt, _FORMAT_MODE[s.scale_rounding], overflow="saturate")
    return torch.where(sc > 0, sc, sfmt.min_subnormal).view(amax.shape) * g


def _view(x: torch.Tensor, s: Scaling) -> tuple[
    torch.Tensor, tuple[int, ...] | None, Callable[[torch.Tensor], torch.Tensor],
    Callable[[torch.Tensor], torch.Tensor],
]:
    """``x`` laid out so that per-slice scales broadcast: (view, reduced dims, back, compact).

    ``back`` maps a tensor of the view's shape to ``x``'s; ``compact`` maps keepdim
    per-slice scales to their reported shape: ``()`` per tensor, ``(C,)`` per channel,
    ``x``'s shape with ``axis`` cut to the number of blocks per block.
    """
    if s.granularity == "tensor":
        return x, None, lambda t: t, lambda t: t.reshape(())
    if not -x.ndim <= s.axis < x.ndim:
        raise ValueError(f"axis={s.axis} is out of range for a {x.ndim}-d tensor")
    axis = s.axis % x.ndim
    if s.granularity == "channel":
        dims = tuple(d for d in range(x.ndim) if d != axis)
        return x, dims, lambda t: t, lambda t: t.reshape(-1)
    xt = x.movedim(axis, -1)
    n = xt.shape[-1]
    size = max(1, min(s.block, n))  # a block longer than the axis is padded no further
    nb = -(-n // size)
    pad = nb * size - n
    padded = F.pad(xt, (0, pad)) if pad else xt  # zeros change no amax
    xb = padded.reshape(*xt.shape[:-1], nb, size)

    def back(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(padded.shape)[..., :n].movedim(-1, axis)

    return xb, (xb.ndim - 1,), back, lambda t: t.squeeze(-1).movedim(-1, axis)


def _absmax(t: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    """``max |t|`` over ``dims`` (all if None, none if empty), keepdim; NaN propagates.

    As ``max(amax, -amin)``: two reductions without a temporary, much faster on CPU than
    ``abs().amax()`` or ``linalg.vector_norm(ord=inf)``.
    """
    if dims == ():
        return t.abs()
    if dims is None:
        return torch.maximum(t.amax(), -t.amin()).reshape([1] * t.ndim)
    return torch.maximum(t.amax(dim=dims, keepdim=True), -t.amin(dim=dims, keepdim=True))


def _amax(xs: torch.Tensor, dims: tuple[int, ...] | None, nan_policy: str) -> tuple[
    torch.Tensor, torch.Tensor | None,
]:
    """Per-slice amax of the finite elements (float64, keepdim) and the NaN-block mask."""
    raw = _absmax(xs, dims)
    bad = ~torch.isfinite(raw)  # NaN propagates, inf is inf: a slice with non-finite values
    if nan_policy == "block":
        return torch.where(bad, 0.0, raw.to(torch.float64)), bad
    if bool(bad.any()):
        raw = _absmax(torch.nan_to_num(xs, nan=0.0, posinf=0.0, neginf=0.0), dims)
    return raw.to(torch.float64), None


def _compute_dtype(x: torch.Tensor, fmt: Format, rounding: str, pow2: bool) -> torch.dtype:
    """float32 when power-of-two scaling in float32 is exact for the result, else float64.

    ``x * 2**-X`` in float32 is exact unless it leaves float32's normal range. Below
    ``2**-126`` an inexact or flushed value still rounds exactly as the true one when the
    format's smallest spacing is ``>= 2**-94`` and the mode is nearest (the value is under
    half a spacing) or stochastic (under ``2**-32`` of a spacing, finer than the at most
    30 random bits resolve). Above float32's range the value is inf, which saturates or overflows
    exactly as the true value would in these modes. ``q * 2**X`` is one correctly rounded
    product either way.
    """
    check = _float32_scaling.__wrapped__ if torch.compiler.is_compiling() else _float32_scaling
    fast = pow2 and x.dtype != torch.float64 and check(fmt, rounding)  # (dynamo warns on caches)
    return torch.float32 if fast else torch.float64


@functools.lru_cache(maxsize=256)
def _float32_scaling(fmt: Format, rounding: str) -> bool:
    """:func:`_compute_dtype`'s conditions on the format and mode (cached: microseconds
    that small tensors notice)."""
    return (fmt.float32_exact and fmt.grid_qmin >= -94
            and rounding in ("nearest", "nearest_away", "stochastic"))


def scaled_round(
    x: torch.Tensor,
    fmt: Format,
    rounding: str,
    scaling: Scaling,
    return_info: bool,
    *,
    generator: torch.Generator | None = None,
    rand_bits: int | None = None,
    overflow: str | None = None,
    out: torch.Tensor | None = None,
    state: ScaleState | None = None,
) -> tuple[torch.Tensor, QuantInfo | None]:
    """``y = s * round(x / s)`` per slice of ``scaling``; returns ``(y, QuantInfo or None)``.

    Called by :func:`lowprec.quantize` for ``scaling=`` (see there for the arguments; ``out``
    may be ``x``; ``state`` is its ``scale_state``). ``info.scales`` holds the per-slice
    scales (float64, NaN for NaN blocks).
    """
    if not isinstance(scaling, Scaling):
        raise TypeError(f"scaling must be a lowprec.Scaling, got {scaling!r}")
    if scaling.method == "history" and state is None:
        raise ValueError("method='history' needs a state: pass scale_state=scaling.new_state() "
                         "(one per tensor, kept between calls)")
    if state is not None and state.length != scaling.history:
        raise ValueError(f"scale_state has length {state.length}, history={scaling.history}")
    if out is not None and out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, x has {tuple(x.shape)}")
    dtype = x.dtype if out is None else out.dtype
    info = None
    if x.numel() == 0:
        y = x.to(dtype, copy=True)
        if return_info:
            info = _info(x, y, fmt, None, None)
    elif scaling.granularity == "tensor" and scaling.pow2 and scaling.nan_policy == "local":
        if torch.compiler.is_compiling():
            y, info = _traced_tensor_round(x, fmt, rounding, scaling, return_info, state,
                                           generator=generator, rand_bits=rand_bits,
                                           overflow=overflow, dtype=dtype)
            return (y if out is None else out.copy_(y)), info
        # one scale for the tensor: round(x / 2**X) * 2**X is rounding x onto the format
        # shifted by 2**X (same codes, bias/fraction bits moved), exactly: one amax pass
        # and one rounding pass instead of four
        exp = _tensor_exponent(x.detach(), fmt, scaling, state)
        y, stats = round_measured(x, fmt.scaled_by(exp), rounding, generator=generator,
                                  rand_bits=rand_bits,
                                  overflow="saturate" if overflow is None else overflow,
                                  out=out, stats=return_info)
        if return_info:  # measured in the rounding pass, against the shifted format's range
            sc = torch.tensor(math.ldexp(1.0, exp), dtype=torch.float64, device=x.device)
            info = QuantInfo(x.numel(), stats, scales=sc)
        return y, info
    elif scaling.pow2 and state is None:  # per block or channel: one fused pass
        y, sc, stats = slice_round(
            x, fmt, rounding, scaling.granularity, scaling.axis, scaling.block,
            scaling.scale_rounding, scaling.margin, scaling.nan_policy == "block",
            _compute_dtype(x, fmt, rounding, True), dtype, generator=generator,
            rand_bits=rand_bits, overflow="saturate" if overflow is None else overflow,
            out=out, stats=return_info)
        return y, (QuantInfo(x.numel(), stats, scales=sc) if return_info else None)
    elif (y_native := _native_format_scales(
            x, fmt, rounding, scaling, return_info or state is not None, dtype,
            generator=generator, rand_bits=rand_bits, overflow=overflow)) is not None:
        y = y_native
    else:
        compute = _compute_dtype(x, fmt, rounding, scaling.pow2)
        xs, dims, back, compact = _view(x.detach().to(compute), scaling)
        amax, bad = _amax(xs, dims, scaling.nan_policy)
        if state is not None:
            amax = state.step(amax)
        if scaling.pow2:
            exps = _pow2_exponent(amax, fmt, scaling)
            sc = exp2_exact(exps, torch.float64)  # 2**X, exactly
        else:
            sc = _format_scale(amax, fmt, scaling)
        if bad is not None:
            sc = torch.where(bad, math.nan, sc)
        sc_c = sc.to(compute)
        # one fresh 1-D buffer, rounded in place (the compiled kernel fails on views of
        # tensors with 3 or more dimensions: reported)
        v = torch.empty(xs.numel(), dtype=compute, device=x.device)
        if scaling.pow2:
            torch.mul(xs, 1 / sc_c, out=v.view(xs.shape))  # 1 / 2**X is exact
        else:
            torch.div(xs, sc_c, out=v.view(xs.shape))
        round_to_format(v, fmt, rounding, generator=generator, rand_bits=rand_bits,
                        overflow="saturate" if overflow is None else overflow, out=v)
        y = back(v.view(xs.shape).mul_(sc_c)).to(dtype)
        if return_info:  # before writing into out, which may be x
            info = _info(x, y, fmt, back(sc.expand(xs.shape)) if dims else sc, compact(sc))
    if out is None:
        return y.contiguous(), info
    return out.copy_(y), info


def _native_format_scales(x: torch.Tensor, fmt: Format, rounding: str, s: Scaling,
                          declined: bool, dtype: torch.dtype, *,
                          generator: torch.Generator | None, rand_bits: int | None,
                          overflow: str | None) -> torch.Tensor | None:
    """Block scales in a format (not power-of-two) by :mod:`.fmtscale_native`, or ``None``
    (``declined``: telemetry or history asked; traced; other granularities; where the
    kernel declines)."""
    if (declined or s.granularity != "block" or s.pow2 or torch.compiler.is_compiling()
            or not -x.ndim <= s.axis < x.ndim):
        return None
    assert isinstance(s.scale_format, Format)
    return fmtscale_native.run(
        x, fmt, rounding, s.scale_format, s.axis, s.block, _FORMAT_MODE[s.scale_rounding],
        s.margin, s.nan_policy == "block", s.tensor_scale, dtype, generator=generator,
        rand_bits=rand_bits, overflow="saturate" if overflow is None else overflow)


def _traced_tensor_round(x: torch.Tensor, fmt: Format, rounding: str, s: Scaling,
                         return_info: bool, state: ScaleState | None, *,
                         generator: torch.Generator | None, rand_bits: int | None,
                         overflow: str | None, dtype: torch.dtype,
                         ) -> tuple[torch.Tensor, QuantInfo | None]:
    """Per-tensor power-of-two rounding with no host sync, what ``torch.compile`` traces:
    the exponent ``X`` stays a device tensor and ``y = 2**X * round(x * 2**-X)``.

    Bit-identical to the eager path (rounding onto ``fmt.scaled_by(X)``): ``x * 2**-X`` is
    exact in the compute dtype, or inexact only where the rounding cannot tell
    (:func:`_compute_dtype`), so the kernel takes the same decisions, with the same random
    bits, on the same significands; ``q * 2**X`` is the shifted format's value, correctly
    rounded to ``dtype`` as that path's result is. Telemetry is measured on ``x * 2**-X``
    and scaled back (counts unchanged, ``sum x**2`` and ``sum (x-y)**2`` times ``4**X``,
    ``amax`` times ``2**X``: exact in float64). Compiled, the scaling and the rounding
    fuse into one pass after the ``aminmax`` one.
    """
    xd = x.detach()
    amax = torch.where(torch.isfinite(xd), xd.abs(), 0).amax().to(torch.float64)  # finite |x|
    if state is not None:
        amax = state.step(amax)
    compute = _compute_dtype(x, fmt, rounding, True)
    sc64 = _pow2_scale(amax, fmt.max, _emax(fmt), s.scale_rounding, s.margin)  # 2**X
    sc = sc64.to(compute)
    v = xd.to(compute) * (1 / sc)  # 1 / 2**X is exact
    v, stats = round_measured(v, fmt, rounding, generator=generator, rand_bits=rand_bits,
                              overflow="saturate" if overflow is None else overflow,
                              stats=return_info)
    y = (v * sc).to(dtype)
    info = None
    if return_info and stats is not None:
        scaled = torch.cat([stats[:5], stats[5:7] * (sc64 * sc64), stats[7:] * sc64])
        info = QuantInfo(x.numel(), scaled, scales=sc64)
    return y, info


def _info(x: torch.Tensor, y: torch.Tensor, fmt: Format, scale: torch.Tensor | None,
          scales: torch.Tensor | None) -> QuantInfo:
    return replace(QuantInfo.measure(x, y, fmt, scale=scale), scales=scales)
