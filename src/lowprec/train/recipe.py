"""Recipes: the format, rounding and scaling of every tensor class of a training step.

A :class:`QuantSpec` says how one tensor is rounded: ``y = s * Q(x / s)`` with ``Q``
the rounding of :func:`lowprec.quantize` into ``format`` with mode ``rounding``
(``rand_bits``, ``overflow``) and ``s`` the scale chosen by ``scaling`` (``s = 1``
without scaling). A :class:`Recipe` gives one spec, or ``None`` for fp32 (no rounding),
to each tensor class (:data:`TENSOR_CLASSES`):

===============  ================================================================
``input``        the non-parameter operand(s) of a product op (a GEMM's activation
                 operand; both operands of an activation x activation product such
                 as QK^T and P.V), rounded before the op runs (op-level recipes only)
``weight``       parameters of a prepared layer (op-level: the parameter operands of
                 product ops) as forward and backward see them
``activation``   the output of every prepared layer or rounded op (the study's "outputs")
``error``        the gradient w.r.t. a prepared layer's (an op's) output, rounded before
                 that layer's (op's) own backward products use it (the study's "errors")
``weight_grad``  the gradient w.r.t. the parameters, before the optimizer sees it
``update``       what the optimizer writes back: the stored parameters after the
                 step and the optimizer state (momentum, Adam moments)
===============  ================================================================

``grad_comm`` (optional, not a per-layer class) is the format gradients are communicated
in under data-parallel training (:mod:`lowprec.distributed`): each rank's gradient is
rounded into it before the all-reduce and the mean after it; ``None`` (the default, and
what a single process ignores) communicates fp32.

``master_weights=True`` keeps an fp32 master copy of the parameters (mixed
precision); by default the stored parameters are themselves in the weight format,
as in the study. ``overrides`` maps ``fnmatch`` globs on layer names
(``model.named_modules()``), or ``"<first>"`` / ``"<last>"`` (the first / last layer
:func:`~lowprec.prepare` quantizes, in registration order: forward order for the usual
models), to per-class replacements, applied in order (later wins);
:mod:`lowprec.training` applies a recipe to a model.

Recipes are stored as TOML (:meth:`Recipe.to_file`, :meth:`Recipe.from_file`); the
file is data, never executed::

    name = "fp12_sr"
    description = "..."
    master_weights = false          # optional
    pack = false                    # optional: store saved activations as packed codes
    [weight]                        # a class omitted (or "none") is fp32
    format = "fp12"                 # a preset name, or a table, see below
    rounding = "stochastic"         # optional: rand_bits, overflow
    scaling = { granularity = "tensor" }   # keyword arguments of lowprec.Scaling
    activation = "fp12"             # (at top level) shorthand: preset, round to nearest
    [grad_comm]                     # optional: gradients' all-reduce format (DDP)
    format = "bf16"
    [overrides."fc"]                # layers whose name matches the glob
    activation = "none"             # "none": this class stays fp32 there

``ops`` (optional) lists the op kinds rounded at the level of the ops a forward executes
(:mod:`lowprec.train.intercept`): ``linear, conv, matmul, attention, embedding, norm,
softmax, pointwise`` or ``all``. A recipe without ``ops`` rounds as the study did, at the
level of ``nn.Linear``/``nn.Conv*`` modules (weights, outputs, errors; no ``input``
class), bit for bit as before ops existed; with ``ops`` (``ops = ["linear", "conv"]``
included) every listed op is intercepted wherever it runs.

**Arithmetic inside the product** (op-level recipes only): ``product`` and
``accumulate`` (specs, any format and rounding, stochastic included; :data:`MAC_CLASSES`)
and ``accumulate_block`` (an integer >= 1, default 1) make every product of the listed
ops sum as a MAC unit does (:mod:`lowprec.numerics.mac`, :mod:`lowprec.train.mac_ops`)::

    p_k = Q_product(a_k b_k),   s <- Q_accumulate(s + sum of the next block of p_k)

forward and backward (grad-input and grad-weight products alike), on the operands as
``input`` / ``weight`` / ``error`` rounded them. ``accumulate`` omitted with ``product``
given: one rounding-free float64 sum (``accumulate_block`` then has no effect). Both
omitted: the products run as torch computes them (bit for bit as before). They apply
recipe-wide (overrides cannot change them).

A format table is ``{kind = "fixed", wl = 12, fl = 8}``, ``{kind = "float", exp = 6,
man = 5, bias = 31, subnormals = true, specials = "none"}`` (``bias``, ``subnormals``,
``specials`` optional), ``{kind = "pow2", exp_bits = 6, emax = 31}`` or
``{kind = "scale_exp", exp_bits = 8, bias = 127}``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import sys
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from ..numerics import presets
from ..numerics.formats import Format
from ..numerics.rounding import check_mode, check_overflow, check_rand_bits
from ..numerics.scaling import Scaling

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MAC_CLASSES", "OP_KINDS", "POSITIONS", "PRODUCT_KINDS", "TENSOR_CLASSES",
           "QuantSpec", "Recipe", "RecipeError"]

TENSOR_CLASSES = ("weight", "activation", "error", "weight_grad", "update", "input")
#: the arithmetic inside a product: its scalar products and its running sum
MAC_CLASSES = ("product", "accumulate")
#: op kinds a recipe's ``ops`` may list (:mod:`lowprec.train.ops`); ``"all"`` means every one
OP_KINDS = ("linear", "conv", "matmul", "attention", "embedding", "norm", "softmax", "pointwise")
#: the product kinds: ops whose operands (``input``, ``weight``) are rounded before they run
PRODUCT_KINDS = ("linear", "conv", "matmul", "attention", "embedding")
POSITIONS = ("<first>", "<last>")  # override keys: the first / last layer prepare() quantizes
NONE = "none"  # the TOML spelling of "this class is not rounded"


class RecipeError(ValueError):
    """A recipe (file or dict) is malformed; the message names the offending entry."""


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor class is rounded: ``lowprec.quantize(x, format, rounding, ...)``.

    ``format`` may be given as a preset name; it is stored as a
    :class:`~lowprec.formats.Format`. ``scaling`` is a template: every tensor it is
    used for gets its own copy (history scaling keeps per-tensor state).
    """

    format: Format
    rounding: str = "nearest"
    scaling: Scaling | None = None
    rand_bits: int | None = None
    overflow: str | None = None

    def __post_init__(self) -> None:
        fmt = presets.get(self.format) if isinstance(self.format, str) else self.format
        if not isinstance(fmt, Format):
            raise TypeError(f"format must be a lowprec Format or preset name, got {fmt!r}")
        object.__setattr__(self, "format", fmt)
        check_mode(self.rounding)
        check_rand_bits(self.rand_bits, self.rounding)
        check_overflow(self.overflow, fmt.has_inf, fmt.has_nan, fmt.name)
        if self.scaling is not None and not isinstance(self.scaling, Scaling):
            raise TypeError(f"scaling must be a lowprec.Scaling or None, got {self.scaling!r}")

    def to_dict(self) -> dict[str, Any]:
        """TOML-ready table (``rand_bits``, ``overflow`` and ``scaling`` only when set)."""
        d: dict[str, Any] = {"format": _format_to_toml(self.format), "rounding": self.rounding}
        if self.scaling is not None:
            d["scaling"] = _scaling_to_dict(self.scaling)
        for key in ("rand_bits", "overflow"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


SpecLike = QuantSpec | Format | str | Mapping[str, Any] | None


def as_spec(value: SpecLike, where: str = "spec") -> QuantSpec | None:
    """``None``/``"none"`` -> fp32; a preset name or Format -> nearest; a table -> its fields."""
    try:
        if value is None or value == NONE:
            return None
        if isinstance(value, QuantSpec):
            return value
        if isinstance(value, str | Format):
            return QuantSpec(value)
        if isinstance(value, Mapping):
            return _spec_from_dict(value)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise RecipeError(f"{where}: {exc}") from exc
    raise RecipeError(
        f"{where}: expected a QuantSpec, format, preset name, table or None, got {value!r}"
    )


def _check_keys(
    d: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise RecipeError(f"unknown key(s) {unknown}; allowed: {list(allowed)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise RecipeError(f"missing key(s) {missing}")


def _format_from_toml(value: Any) -> Format:
    if isinstance(value, str):
        return presets.get(value)
    if not isinstance(value, Mapping):
        raise RecipeError(f"format must be a preset name or a table, got {value!r}")
    return Format.from_dict(value)


def _format_to_toml(fmt: Format) -> str | dict[str, Any]:
    name = presets.name_of(fmt)
    return name if name in presets.names() else fmt.to_dict()


def _scaling_to_dict(s: Scaling) -> dict[str, Any]:
    """``granularity`` and the constructor arguments that differ from their defaults."""
    d = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
         if f.init and f.compare and (f.name == "granularity" or getattr(s, f.name) != f.default)}
    if isinstance(d.get("scale_format"), Format):
        d["scale_format"] = _format_to_toml(d["scale_format"])
    return d


def _scaling_from_dict(d: Any) -> Scaling:
    if not isinstance(d, Mapping):
        raise RecipeError(f"scaling must be a table of lowprec.Scaling arguments, got {d!r}")
    kwargs = dict(d)
    if "rounding" in kwargs:  # the spelling before scale_rounding
        warnings.warn(f"scaling key 'rounding' is deprecated: write scale_rounding = "
                      f"{kwargs['rounding']!r}", DeprecationWarning, stacklevel=2)
        kwargs["scale_rounding"] = kwargs.pop("rounding")
    _check_keys(kwargs, tuple(f.name for f in dataclasses.fields(Scaling)
                              if f.init and f.compare))
    if isinstance(d.get("scale_format"), Mapping):
        kwargs["scale_format"] = _format_from_toml(d["scale_format"])
    return Scaling(**kwargs)


def _spec_from_dict(d: Mapping[str, Any]) -> QuantSpec:
    _check_keys(d, tuple(f.name for f in dataclasses.fields(QuantSpec)), ("format",))
    kwargs = dict(d)
    kwargs["format"] = _format_from_toml(d["format"])
    if "scaling" in d:
        kwargs["scaling"] = _scaling_from_dict(d["scaling"])
    return QuantSpec(**kwargs)


def parse_toml(text: str, source: str, error: type[ValueError] = RecipeError) -> dict[str, Any]:
    """TOML text as data (nothing in it is executed); a malformed or absurdly nested text
    raises ``error`` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply to parse") from None


@dataclass(frozen=True)
class Recipe:
    """A :class:`QuantSpec` (or ``None``: fp32) per tensor class, plus per-layer overrides.

    Each class, and ``grad_comm``, accepts a :class:`QuantSpec`, a format or preset name
    (round to nearest), a mapping of QuantSpec fields, or ``None``.
    """

    weight: QuantSpec | None = None
    activation: QuantSpec | None = None
    error: QuantSpec | None = None
    weight_grad: QuantSpec | None = None
    update: QuantSpec | None = None
    master_weights: bool = False
    pack: bool = False
    overrides: Mapping[str, Mapping[str, QuantSpec | None]] = field(default_factory=dict)
    name: str = ""
    description: str = ""
    grad_comm: QuantSpec | None = None
    input: QuantSpec | None = None
    ops: tuple[str, ...] | None = None
    product: QuantSpec | None = None
    accumulate: QuantSpec | None = None
    accumulate_block: int = 1

    def __post_init__(self) -> None:
        for cls in (*TENSOR_CLASSES, "grad_comm", *MAC_CLASSES):
            object.__setattr__(self, cls, as_spec(getattr(self, cls), cls))
        b = self.accumulate_block
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise RecipeError(f"accumulate_block must be an integer >= 1 (terms summed "
                              f"exactly before each accumulator rounding), got {b!r}")
        if self.ops is not None:
            ops = [self.ops] if isinstance(self.ops, str) else list(self.ops)
            bad = [o for o in ops if o not in (*OP_KINDS, "all")]
            if bad or not ops:
                raise RecipeError(f"ops: unknown op kind(s) {bad}; allowed: "
                                  f"{[*OP_KINDS, 'all']}")
            kinds = OP_KINDS if "all" in ops else tuple(k for k in OP_KINDS if k in ops)
            object.__setattr__(self, "ops", kinds)
        if self.input is not None and self.ops is None:
            raise RecipeError("input: the input class rounds operands of ops; give the ops "
                              "to round, e.g. ops = [\"linear\", \"conv\"]")
        for cls in MAC_CLASSES:
            if getattr(self, cls) is not None and self.ops is None:
                raise RecipeError(f"{cls}: the arithmetic inside products applies to ops; "
                                  "give the ops to emulate, e.g. ops = [\"linear\", \"conv\"]")
            spec = getattr(self, cls)
            if spec is not None and spec.scaling is not None:
                raise RecipeError(f"{cls}: scaling is not supported inside a product (a MAC "
                                  "has no scale); remove the scaling table")
        scaling = self.grad_comm and self.grad_comm.scaling
        if scaling and scaling.method == "history":
            raise RecipeError("grad_comm: scaling method 'history' is not supported (the "
                              "communication hook keeps no per-tensor state)")
        for flag in ("master_weights", "pack"):
            if not isinstance(getattr(self, flag), bool):
                raise RecipeError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        for key in ("name", "description"):
            if not isinstance(getattr(self, key), str):
                raise RecipeError(f"{key} must be a string, got {getattr(self, key)!r}")
        if not isinstance(self.overrides, Mapping):
            raise RecipeError(f"overrides must map layer globs to tables, got {self.overrides!r}")
        resolved: dict[str, dict[str, QuantSpec | None]] = {}
        for pattern, table in self.overrides.items():
            where = f"overrides[{pattern!r}]"
            if not isinstance(pattern, str) or not isinstance(table, Mapping):
                raise RecipeError(f"{where}: expected a layer glob mapped to a table")
            try:
                _check_keys(table, TENSOR_CLASSES)
            except RecipeError as exc:
                raise RecipeError(f"{where}: {exc}") from None
            resolved[pattern] = {c: as_spec(v, f"{where}.{c}") for c, v in table.items()}
        object.__setattr__(self, "overrides", resolved)

    @property
    def op_level(self) -> bool:
        """True if the recipe rounds at the level of ops (it has ``ops``)."""
        return self.ops is not None

    def specs(self) -> dict[str, QuantSpec | None]:
        """The top-level spec of every tensor class."""
        return {c: getattr(self, c) for c in TENSOR_CLASSES}

    def mac_specs(self) -> dict[str, QuantSpec | None]:
        """The spec of every class of :data:`MAC_CLASSES` (``product``, ``accumulate``)."""
        return {c: getattr(self, c) for c in MAC_CLASSES}

    @property
    def emulates_mac(self) -> bool:
        """True if the recipe rounds inside its products (``product`` or ``accumulate``)."""
        return self.product is not None or self.accumulate is not None

    def for_layer(self, name: str, positions: Collection[str] = ()) -> dict[str, QuantSpec | None]:
        """The specs of layer ``name``: top level, then every matching override in order.

        ``positions``: which of :data:`POSITIONS` the layer holds (``prepare`` passes them).
        """
        specs = self.specs()
        for pattern, table in self.overrides.items():
            if pattern in positions or fnmatch.fnmatchcase(name, pattern):
                specs.update(table)
        return specs

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # -- TOML ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A TOML-ready dict (``None`` classes and ``grad_comm`` left out, or ``"none"`` in
        overrides)."""
        d: dict[str, Any] = {"name": self.name, "description": self.description,
                             "master_weights": self.master_weights, "pack": self.pack}
        d.update({c: s.to_dict() for c, s in self.specs().items() if s is not None})
        if self.grad_comm is not None:
            d["grad_comm"] = self.grad_comm.to_dict()
        if self.ops is not None:
            d["ops"] = list(self.ops)
        d.update({c: s.to_dict() for c, s in self.mac_specs().items() if s is not None})
        if self.emulates_mac:
            d["accumulate_block"] = self.accumulate_block
        if self.overrides:
            d["overrides"] = {
                pattern: {c: NONE if s is None else s.to_dict() for c, s in table.items()}
                for pattern, table in self.overrides.items()
            }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """Build from a dict as :meth:`to_dict` writes it; errors name ``source``."""
        try:
            if not isinstance(d, Mapping):
                raise RecipeError(f"expected a table, got {type(d).__name__}")
            _check_keys(d, (*TENSOR_CLASSES, "master_weights", "pack", "overrides", "name",
                            "description", "grad_comm", "ops", *MAC_CLASSES,
                            "accumulate_block"))
            return cls(**d)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None

    def to_toml(self) -> str:
        """The recipe as TOML text."""
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str, source: str = "recipe") -> Recipe:
        """Parse TOML text (data only: nothing in it is executed)."""
        return cls.from_dict(parse_toml(text, source), source)

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the recipe as a human-editable TOML file."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_toml())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a TOML recipe file (see the module docstring for the schema)."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_toml(fh.read(), f"recipe file {os.fspath(path)!r}")
