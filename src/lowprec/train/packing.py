"""Packed storage: a float32 tensor whose values all lie in a format is kept as its codes.

Codes are the format's own (:meth:`lowprec.formats.Format.encode`): unsigned integers
of ``b = fmt.bits`` bits. :func:`pack_codes` stores them in the smallest container:

* ``b <= 4``: two per byte, ``byte = c[2i] | c[2i+1] << 4`` (low nibble first), ``uint8``;
* ``b <= 8``: one per byte, ``uint8``;
* ``b <= 16``: ``int16`` holding the 16-bit pattern (``c - 2**16`` when ``c >= 2**15``).

Fixed point has no negative zero; a :class:`~lowprec.formats.FixedPoint` tensor that
holds ``-0.0`` uses the extra code ``2**wl`` for it, so that tensor's codes have
``wl + 1`` bits. Encoding and decoding work on the float32 bit pattern (sign ``s``,
biased exponent ``E``, mantissa ``M``, ``e = E - 127``) with integer operations. For
``FloatingPoint(exp, man, bias)`` (``emin = 1 - bias``)::

    e >= emin:  code = s << (exp + man) | (e + bias) << man | M >> (23 - man)
    e <  emin:  code = s << (exp + man) | (M + 2**23) >> (23 - man + emin - e)   (subnormal;
                a float32 subnormal has no 2**23 and e = -126)
    decode:     E_f >= 1: s << 31 | (E_f - bias + 127) << 23 | m << (23 - man)
                E_f == 0: (-1)**s * m * 2**(emin - man)

and for ``FixedPoint(wl, fl)``: ``code = round(x * 2**fl) mod 2**wl``, decoded as the
two's complement integer times ``2**-fl``.

**Exactness.** Every encoding is checked: ``decode(encode(t))`` must equal ``t`` bit
for bit (float32 patterns, so the sign of zero too); a tensor that fails (a value
outside the format, NaN, inf) is not packed. So unpacking always
returns ``t``'s exact bits. Only formats of at most 16 bits whose values float32 holds
as normal numbers (or exact subnormal multiples) are used.

**Saved tensors.** :class:`PackHook` is a ``torch.autograd.graph.saved_tensors_hooks``
pair: while it is active, every float32, contiguous, non-leaf tensor autograd saves for
the backward pass is stored packed in the narrowest of its candidate formats that holds
it exactly, and decoded (with its original size and strides) when backward needs it.
Leaves (parameters, inputs, buffers) are kept: something outside autograd holds them
anyway, so a packed copy would add memory. A tensor saved twice in one pass (a ReLU
output that the next layer saves too) is packed once.

**Checkpoints.** :func:`save_packed` / :func:`load_packed`, see ``docs/checkpoint-format.md``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..numerics.formats import FixedPoint, FloatingPoint, Format
from ..numerics.presets import get
from .files import atomic_write
from .recipe import QuantSpec, Recipe

__all__ = [
    "CHECKPOINT_VERSION",
    "PackHook",
    "candidates",
    "decode",
    "encode",
    "load_packed",
    "pack_codes",
    "packed_saved_tensors",
    "save_packed",
    "unpack_codes",
]

CHECKPOINT_VERSION = 1
_MAGIC = "lowprec-packed"
_MAN32, _INT_MIN = 23, -(2**31)
_SAMPLE = 4096  # elements checked first, so that an unrepresentable tensor fails fast

FormatsLike = Recipe | Mapping[str, Any] | Iterable[Format | str | None]


# -- codes <-> containers -------------------------------------------------------------------
def pack_codes(codes: torch.Tensor, bits: int) -> tuple[torch.Tensor, tuple[int, tuple[int, ...]]]:
    """Codes (any integer tensor, values in ``[0, 2**bits)``) in their smallest container.

    Returns ``(data, meta)``; ``meta = (bits, shape)`` is what :func:`unpack_codes` needs.
    """
    meta = (bits, tuple(codes.shape))
    flat = codes.reshape(-1)
    if bits <= 4:
        flat = flat.to(torch.uint8)
        if flat.numel() % 2:
            flat = torch.cat([flat, flat.new_zeros(1)])
        return flat[0::2] | (flat[1::2] << 4), meta
    if bits <= 8:
        return flat.to(torch.uint8), meta
    if bits <= 16:
        flat = flat.to(torch.int32)
        return torch.where(flat >= 1 << 15, flat - (1 << 16), flat).to(torch.int16), meta
    raise ValueError(f"codes of {bits} bits are not packed (no saving over float32)")


def unpack_codes(data: torch.Tensor, meta: tuple[int, tuple[int, ...]]) -> torch.Tensor:
    """The codes :func:`pack_codes` stored, as int32 of the original shape."""
    bits, shape = meta
    d = data.to(torch.int32)
    if bits <= 4:
        n = 1
        for s in shape:
            n *= s
        d = torch.stack([d & 15, d >> 4], dim=-1).reshape(-1)[:n]
    elif bits > 8:
        d = d & 0xFFFF
    return d.reshape(shape)


# -- float32 <-> codes ----------------------------------------------------------------------
def _packable(fmt: Format) -> bool:
    """At most 16 bits, every value a float32 normal (or an exact float32 subnormal)."""
    if fmt.bits > 16 or not fmt.float32_exact:
        return False
    if isinstance(fmt, FloatingPoint):
        return fmt.man <= _MAN32 and fmt.emin >= -126 and fmt.emax <= 127
    return isinstance(fmt, FixedPoint)


def _encode(fmt: Format, t: torch.Tensor) -> torch.Tensor:
    """Candidate codes (int32) of float32 ``t``: right for every value ``fmt`` holds."""
    b = t.reshape(-1).view(torch.int32)
    if isinstance(fmt, FixedPoint):
        k = torch.round(t.reshape(-1) * 2.0**fmt.fl).clamp(-(2**24), 2**24).to(torch.int32)
        return torch.where(b == _INT_MIN, 1 << fmt.wl, k & ((1 << fmt.wl) - 1))
    assert isinstance(fmt, FloatingPoint)
    man, emin = fmt.man, fmt.emin
    sign = ((b >> 31) & 1) << (fmt.exp + man)
    biased = (b >> _MAN32) & 0xFF
    e = biased.clamp(min=1) - 127  # float32 subnormals: M * 2**-149, no hidden bit
    m = b & ((1 << _MAN32) - 1)
    normal = ((e + fmt.ebias) << man) | (m >> (_MAN32 - man))
    shift = (_MAN32 - man + emin - e).clamp(0, 31)
    sub = torch.where(biased > 0, m | (1 << _MAN32), m) >> shift
    code = torch.where((e >= emin) & (biased > 0), normal, sub)
    return sign | torch.where((b & 0x7FFFFFFF) == 0, 0, code)


def _decode(fmt: Format, codes: torch.Tensor) -> torch.Tensor:
    """float32 values of int32 ``codes`` (flat), the inverse of :func:`_encode`."""
    c = codes.reshape(-1).to(torch.int32)
    if isinstance(fmt, FixedPoint):
        k = torch.where(c >= 1 << (fmt.wl - 1), c - (1 << fmt.wl), c)
        v = k.to(torch.float32) * 2.0**-fmt.fl
        return torch.where(c == 1 << fmt.wl, -0.0, v)
    assert isinstance(fmt, FloatingPoint)
    man = fmt.man
    sign = ((c >> (fmt.exp + man)) & 1) << 31
    ef = (c >> man) & ((1 << fmt.exp) - 1)
    m = c & ((1 << man) - 1)
    normal = ((ef - fmt.ebias + 127) << _MAN32) | (m << (_MAN32 - man))
    sub = (m.to(torch.float32) * 2.0 ** (fmt.emin - man)).view(torch.int32)
    return (sign | torch.where(ef >= 1, normal, sub)).view(torch.float32)


def _exact_codes(fmt: Format, t: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``(codes, bits)`` if ``fmt`` holds every element of float32 ``t`` bit for bit."""
    flat = t.reshape(-1)
    for part in [flat] if flat.numel() <= _SAMPLE else [flat[:_SAMPLE], flat]:
        codes = _encode(fmt, part)
        if not torch.equal(_decode(fmt, codes).view(torch.int32), part.view(torch.int32)):
            return None
    bits = fmt.bits + (isinstance(fmt, FixedPoint) and bool((codes == 1 << fmt.wl).any()))
    return (codes, bits) if bits <= 16 else None


def encode(fmt: Format | str, t: torch.Tensor) -> torch.Tensor | None:
    """Codes (int32, shape of ``t``) of float32 ``t`` in ``fmt``, or ``None`` if not exact."""
    fmt = get(fmt)
    if t.dtype != torch.float32 or not _packable(fmt):
        return None
    found = _exact_codes(fmt, t)
    return None if found is None else found[0].reshape(t.shape)


def decode(fmt: Format | str, codes: torch.Tensor) -> torch.Tensor:
    """float32 values of ``codes`` in ``fmt`` (shape of ``codes``); inverse of :func:`encode`."""
    return _decode(get(fmt), codes).reshape(codes.shape)


def candidates(formats: FormatsLike) -> list[Format]:
    """Packable formats named by ``formats``, narrowest first.

    ``formats``: a :class:`~lowprec.Recipe` (every format of its specs and overrides),
    a mapping whose values are formats, specs or ``None``, or an iterable of those.
    """
    if isinstance(formats, Recipe):
        tables = [formats.specs(), *formats.overrides.values()]
        items: list[Any] = [s for table in tables for s in table.values()]
    elif isinstance(formats, Mapping):
        items = list(formats.values())
    else:
        items = list(formats)
    found: list[Format] = []
    for item in items:
        fmt = item.format if isinstance(item, QuantSpec) else item
        if fmt is not None:
            fmt = get(fmt)
            if _packable(fmt) and fmt not in found:
                found.append(fmt)
    return sorted(found, key=lambda f: f.bits)


# -- saved tensors --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Packed:
    """What autograd holds instead of a tensor: packed codes plus how to rebuild it."""

    data: torch.Tensor
    meta: tuple[int, tuple[int, ...]]
    fmt: Format
    size: torch.Size
    stride: tuple[int, ...]


class PackHook:
    """Saved-tensor hooks that store representable tensors as packed codes (module doc).

    ``formats``: the candidate formats (see :func:`candidates`: a recipe, a mapping or an
    iterable), or a callable ``fmt_for_tensor(t) -> Format | None`` naming the one format
    to try for each tensor. Use as a context manager around the forward pass (the
    backward needs no hook: each saved tensor keeps its unpack function), or
    :meth:`attach` it to a model. After a pass, ``held_bytes`` is what the saved tensors
    seen in it hold (packed data, or the storage of a kept tensor, each counted once;
    parameters not counted) and ``packed`` how many tensors were packed.
    """

    def __init__(self, formats: FormatsLike | Callable[[torch.Tensor], Format | None]) -> None:
        if callable(formats):
            self._choose: Callable[[torch.Tensor], list[Format]] = (
                lambda t: candidates([formats(t)]))
        else:
            fmts = candidates(formats)  # type: ignore[arg-type]
            self._choose = lambda t: fmts
        self.held_bytes = 0
        self.packed = 0
        self._cache: dict[int, tuple[weakref.ref[torch.Tensor], int, _Packed]] = {}
        self._seen: set[int] = set()
        self._ctx: Any = None

    def pack(self, t: torch.Tensor) -> torch.Tensor | _Packed:
        """Autograd's pack hook: ``t`` itself or its packed codes."""
        base = t if t._base is None else t._base
        if base.grad_fn is None and base.requires_grad:
            return t  # a parameter (or a view of one): the model holds it anyway
        hit = self._cache.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        if base.grad_fn is not None and t.dtype == torch.float32 and t.is_contiguous():
            for fmt in self._choose(t):
                found = _exact_codes(fmt, t)
                if found is not None:
                    data, meta = pack_codes(*found)
                    p = _Packed(data, meta, fmt, t.size(), t.stride())
                    self._cache[id(t)] = (weakref.ref(t), t._version, p)
                    self.held_bytes += data.nbytes
                    self.packed += 1
                    return p
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.held_bytes += storage.nbytes()
        return t

    @staticmethod
    def unpack(p: torch.Tensor | _Packed) -> torch.Tensor:
        """Autograd's unpack hook: the tensor, rebuilt bit for bit with its strides."""
        if isinstance(p, torch.Tensor):
            return p
        values = _decode(p.fmt, unpack_codes(p.data, p.meta))
        return torch.as_strided(values, p.size, p.stride)

    def __enter__(self) -> PackHook:
        self.held_bytes, self.packed = 0, 0
        self._cache.clear()
        self._seen.clear()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        ctx, self._ctx = self._ctx, None
        self._cache.clear()
        self._seen.clear()
        if ctx is not None:
            ctx.__exit__(*exc)

    def attach(self, model: nn.Module) -> list[Any]:
        """Be active during every forward of ``model``; returns the hook handles to remove."""
        return [model.register_forward_pre_hook(self._start),
                model.register_forward_hook(self._stop, always_call=True)]

    def _start(self, module: nn.Module, args: Any) -> None:
        self.__enter__()

    def _stop(self, module: nn.Module, args: Any, out: Any) -> None:
        self.__exit__(None, None, None)


def packed_saved_tensors(fmt_for_tensor: Callable[[torch.Tensor], Format | None]
                         | FormatsLike) -> PackHook:
    """Context manager: within it, saved tensors are packed (see :class:`PackHook`)."""
    return PackHook(fmt_for_tensor)


# -- checkpoints ----------------------------------------------------------------------------
def save_packed(state_dict: Mapping[str, Any], path: str | os.PathLike[str],
                formats: FormatsLike) -> None:
    """Write ``state_dict`` with every exactly representable float32 tensor packed.

    Each tensor is stored in the narrowest of :func:`candidates` ``(formats)`` that holds
    it bit for bit, else as is; other values pass through. The file is written
    atomically (:func:`~lowprec.train.files.atomic_write`).
    """
    fmts = candidates(formats)
    entries: dict[str, Any] = {}
    for key, value in state_dict.items():
        entries[key] = value
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            t = value.detach().contiguous()
            for fmt in fmts:
                found = _exact_codes(fmt, t)
                if found is not None:
                    data, (bits, shape) = pack_codes(*found)
                    entries[key] = {"codes": data, "bits": bits, "shape": list(t.shape),
                                    "format": fmt.to_dict()}
                    break
    payload = {"magic": _MAGIC, "version": CHECKPOINT_VERSION, "entries": entries}
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_packed(path: str | os.PathLike[str],
                map_location: str | torch.device | None = None) -> dict[str, Any]:
    """Read a :func:`save_packed` file (``torch.load(weights_only=True)``): the state dict."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise ValueError(f"{os.fspath(path)!r} is not a lowprec packed checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{os.fspath(path)!r}: packed checkpoint version "
                         f"{payload.get('version')!r} is not supported ({CHECKPOINT_VERSION} is)")
    out: dict[str, Any] = {}
    for key, value in payload["entries"].items():
        if isinstance(value, dict) and "codes" in value:
            shape = tuple(value["shape"])
            codes = unpack_codes(value["codes"], (value["bits"], shape))
            value = decode(Format.from_dict(value["format"]), codes)
        out[key] = value
    return out
