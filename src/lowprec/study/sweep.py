"""Sweep files: a grid of training runs from one TOML file (:mod:`lowprec.sweep_runner` runs it).

A sweep file is data (parsed, never executed). Every axis takes one value or a list; the
runs are the cartesian product of the axes, one :class:`~lowprec.experiment.RunSpec` each::

    name = "fp-split"                 # optional (default: the file's stem)
    datasets = "digits"               # axis, required: data set names (lowprec.data.DATASETS)
    models = "small_cnn"              # axis, required: model names (lowprec.models.MODELS)
    seeds = [0, 1, 2]                 # axis (default 0): integers in [0, 2**32)
    epochs = 8                        # axis (default: the solver's reference length)
    batch_size = 64                   # fixed settings, as lowprec train's options (optional)
    lr = 0.05
    telemetry_every = 10
    device = "cpu"

    # the recipe axis: the union of the following (at least one value)
    recipes = ["fp32", "fxp12_sr"]    # preset names (lowprec recipes), or inline tables
    [[recipe]]                        # an inline recipe: the Recipe TOML schema, name required
    name = "fp16_nearest"
    weight = "fp16"
    [[float_split]]                   # one recipe per (exp, man): name "<name>-e<exp>m<man>"
    template = "fp12_sr"              # preset name, or an inline recipe table
    exp = [4, 5, 6]                   # exponent bits
    man = [3, 4, 5]                   # mantissa bits
    bits = [10, 12]                   # optional: keep splits whose 1 + exp + man is listed
    name = "fp_sr"                    # optional (default: the template's name)
    classes = ["weight", "error"]     # optional (default: every class the template quantizes;
                                      # "product" / "accumulate" count as classes)
    subnormals = true                 # optional (default: as the template's float format)
    specials = "none"                 # optional (default: as the template's float format)
    [[fixed_split]]                   # one recipe per (wl, fl): name "<name>-w<wl>f<fl>"
    template = "fxp12_sr_ls"
    wl = [8, 10, 12]                  # word length, sign included
    fl = [4, 6, 8]                    # fraction bits
    # optional: name, classes

A split gives each of its ``classes`` of the template ``FloatingPoint(exp, man)`` (bias
``2**(exp-1) - 1``; ``subnormals`` and ``specials`` kept from that class's float format)
or ``FixedPoint(wl, fl)``, keeping its rounding and scaling; per-layer overrides are kept
as they are. Axis values must be distinct and recipe names unique (they name the run
folders); an invalid file raises :class:`SweepError` naming the entry and the fix.

Each point of the grid is a :class:`SweepRun`: its spec and its folder relative to the
sweep's output folder, ``<run name>``, or ``epochs<N>/<run name>`` when ``epochs`` lists
several values.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..numerics import presets as formats
from ..numerics.formats import Format
from ..train import recipes
from ..train.recipe import QuantSpec, Recipe, parse_toml
from .data import DATASETS
from .models import MODELS
from .rundir import SEEDS, RunError, check_name
from .runs import RunSpec

__all__ = ["Sweep", "SweepError", "SweepRun", "Variant"]

_AXES = ("datasets", "models", "seeds", "epochs")
_SETTINGS = ("batch_size", "lr", "telemetry_every", "device")
_KEYS = ("name", *_AXES, *_SETTINGS, "recipes", "recipe", "float_split", "fixed_split")
#: split key: (format kind, its two parameters, optional keys of that kind)
_SPLITS = {
    "float_split": ("float", ("exp", "man"), ("bits", "subnormals", "specials")),
    "fixed_split": ("fixed", ("wl", "fl"), ()),
}


class SweepError(ValueError):
    """A sweep file is malformed, or a backend cannot run; the message says where and how
    to fix it."""


# -- the grid -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A value of the recipe axis: a recipe, where the file gives it (``recipes[0]``,
    ``float_split[1]``) and, for a split, its name, format kind and parameters."""

    recipe: Recipe
    source: str
    family: str = ""
    kind: str = ""
    params: Mapping[str, int] = field(default_factory=dict)

    @property
    def bits(self) -> int:
        """The widest format the recipe rounds a tensor class to (32: nothing rounded)."""
        return max((s.format.bits for s in self._specs()), default=32)

    @property
    def formats(self) -> str:
        """The recipe's formats, preset names where they are presets: ``"fp12"``."""
        labels = dict.fromkeys(formats.name_of(s.format) for s in self._specs())
        return "/".join(labels) or "fp32"

    def _specs(self) -> list[QuantSpec]:
        return [s for s in self.recipe.specs().values() if s is not None]


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: what to train, in which folder (relative to the output
    folder), and the recipe axis value it comes from."""

    spec: RunSpec
    folder: str
    variant: Variant

    def record(self) -> dict[str, Any]:
        """The run's entry in ``sweep.json`` (status ``pending``)."""
        v = self.variant
        return {"folder": self.folder, "dataset": self.spec.dataset, "model": self.spec.model,
                "recipe": self.spec.recipe.name, "seed": self.spec.seed,
                "epochs": self.spec.epochs, "family": v.family, "kind": v.kind,
                "params": dict(v.params), "bits": v.bits, "formats": v.formats,
                "status": "pending", "reason": None}


@dataclass(frozen=True)
class Sweep:
    """A named list of runs, expanded from a sweep file (see the module docstring)."""

    name: str
    runs: tuple[SweepRun, ...]
    text: str = ""
    file: str = ""

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Sweep:
        """Read and expand a sweep file."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        sweep = cls.from_toml(text, f"sweep file {os.fspath(path)!r}", default_name=path.stem)
        return dataclasses.replace(sweep, file=str(path.resolve()))

    @classmethod
    def from_toml(cls, text: str, source: str = "sweep", default_name: str = "sweep") -> Sweep:
        """Parse and expand sweep TOML text."""
        data = parse_toml(text, source, SweepError)
        return dataclasses.replace(cls.from_dict(data, source, default_name), text=text)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "sweep",
                  default_name: str = "sweep") -> Sweep:
        """Expand a parsed sweep file; errors name ``source`` and the entry."""
        try:
            return cls(_name(d, default_name), tuple(_expand(d)))
        except SweepError as exc:
            raise SweepError(f"{source}: {exc}") from None


def _name(d: Mapping[str, Any], default: str) -> str:
    try:
        return check_name(d.get("name", default), "name:")
    except RunError as exc:
        raise SweepError(f"{exc}; set name = \"...\"") from None


def _expand(d: Mapping[str, Any]) -> list[SweepRun]:
    _check_keys(d, _KEYS, "")
    datasets = _axis(d, "datasets", str, choices=DATASETS)
    models = _axis(d, "models", str, choices=MODELS)
    seeds = _axis(d, "seeds", int, default=0, low=0)
    for i, seed in enumerate(seeds):
        if seed >= SEEDS:
            raise SweepError(f"seeds[{i}]: {seed} is too large; seeds are integers in "
                             "[0, 2**32)")
    epochs = _axis(d, "epochs", int, default=None, low=1)
    settings = _settings(d)
    variants = _variants(d)
    runs = []
    for dataset, model, n, variant, seed in itertools.product(
            datasets, models, epochs, variants, seeds):
        try:
            spec = RunSpec(dataset, model, variant.recipe, seed, n, **settings)
        except ValueError as exc:  # RunSpec's other checks
            raise SweepError(f"{variant.source}, seed {seed}: {exc}") from None
        folder = f"epochs{n}/{spec.name}" if len(epochs) > 1 else spec.name
        runs.append(SweepRun(spec, folder, variant))
    return runs


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepError(f"{where}unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _check_type(value: Any, kind: type, where: str, low: int | None = None) -> None:
    """``kind`` is ``str``, ``int`` or ``float`` (which admits ints); bools are neither."""
    ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
    if isinstance(value, bool) or not ok:
        raise SweepError(f"{where}: expected {kind.__name__}, got {value!r}")
    if low is not None and value < low:
        raise SweepError(f"{where}: must be at least {low}, got {value!r}")


_REQUIRED = object()


def _axis(d: Mapping[str, Any], key: str, kind: type, *, default: Any = _REQUIRED,
          low: int | None = None, choices: Mapping[str, str] | None = None) -> list[Any]:
    """An axis: one value or a list of distinct values of ``kind`` (``[default]`` when the
    key is absent; without a default the key is required)."""
    if key not in d:
        if default is _REQUIRED:
            raise SweepError(f"{key}: missing; give one name or a list, e.g. {key} = [...]")
        return [default]
    values = d[key] if isinstance(d[key], list) else [d[key]]
    if not values:
        raise SweepError(f"{key}: empty list; give at least one value or leave the key out")
    for i, value in enumerate(values):
        _check_type(value, kind, f"{key}[{i}]", low)
        if choices is not None and value not in choices:
            raise SweepError(f"{key}[{i}]: unknown {value!r}; known: {', '.join(choices)}")
    dup = [v for v, n in Counter(values).items() if n > 1]
    if dup:
        raise SweepError(f"{key}: {dup[0]!r} is listed twice; list each value once")
    return values


def _settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed settings present in ``d``, checked, as RunSpec keyword arguments."""
    checks: dict[str, tuple[type, int | None]] = {
        "batch_size": (int, 1), "lr": (float, None), "telemetry_every": (int, 0),
        "device": (str, None)}
    out = {}
    for key, (kind, low) in checks.items():
        if key in d:
            _check_type(d[key], kind, key, low)
            out[key] = d[key]
    if "lr" in out and not (math.isfinite(out["lr"]) and out["lr"] > 0):
        raise SweepError(f"lr: must be a finite number > 0, got {out['lr']!r}")
    if "device" in out:
        try:
            torch.device(out["device"])
        except RuntimeError as exc:
            raise SweepError(f"device: {exc}") from None
    return out


# -- the recipe axis ------------------------------------------------------------------------


def _tables(d: Mapping[str, Any], key: str) -> list[Any]:
    value = d.get(key, [])
    return value if isinstance(value, list) else [value]


def _variants(d: Mapping[str, Any]) -> list[Variant]:
    variants = [_plain(v, f"recipes[{i}]") for i, v in enumerate(_tables(d, "recipes"))]
    variants += [_inline(t, f"recipe[{i}]") for i, t in enumerate(_tables(d, "recipe"))]
    for key in _SPLITS:
        for i, table in enumerate(_tables(d, key)):
            variants += _split(key, table, f"{key}[{i}]")
    if not variants:
        raise SweepError("no recipes: give recipes = [...], [[recipe]], [[float_split]] "
                         "or [[fixed_split]]")
    seen: dict[str, str] = {}
    for v in variants:
        name = v.recipe.name
        if name in seen:
            raise SweepError(f"recipe name {name!r} comes from both {seen[name]} and {v.source}; "
                             "run folders are named after recipes: rename one")
        try:
            check_name(name, f"{v.source}: recipe name")
        except RunError as exc:
            raise SweepError(str(exc)) from None
        seen[name] = v.source
    return variants


def _plain(value: Any, where: str) -> Variant:
    """A ``recipes`` entry: a preset name or an inline table."""
    if isinstance(value, Mapping):
        return _inline(value, where)
    if not isinstance(value, str):
        raise SweepError(f"{where}: expected a preset name or a recipe table, got {value!r}")
    return Variant(_preset(value, where), where)


def _preset(name: str, where: str) -> Recipe:
    try:
        return recipes.get(name)
    except ValueError as exc:
        raise SweepError(f"{where}: {exc}") from None


def _recipe_table(table: Any, where: str) -> Recipe:
    if not isinstance(table, Mapping):
        raise SweepError(f"{where}: expected a recipe table, got {table!r}")
    try:
        return Recipe.from_dict(table, where)
    except ValueError as exc:  # RecipeError, and format parameter errors
        raise SweepError(str(exc)) from None


def _inline(table: Any, where: str) -> Variant:
    recipe = _recipe_table(table, where)
    if not recipe.name:
        raise SweepError(f"{where}: an inline recipe needs a name (it names the run folders)")
    return Variant(recipe, where)


def _template(value: Any, where: str) -> Recipe:
    return _preset(value, where) if isinstance(value, str) else _recipe_table(value, where)


def _ints(table: Mapping[str, Any], key: str, where: str) -> list[int]:
    values = table[key] if isinstance(table[key], list) else [table[key]]
    if not values:
        raise SweepError(f"{where}.{key}: empty list; give at least one value")
    for value in values:
        _check_type(value, int, f"{where}.{key}")
    if len(set(values)) < len(values):
        raise SweepError(f"{where}.{key}: a value is listed twice; list each value once")
    return values


def _split(key: str, table: Any, where: str) -> list[Variant]:
    """The recipes of one ``float_split`` / ``fixed_split`` table."""
    kind, (p, q), extra = _SPLITS[key]
    if not isinstance(table, Mapping):
        raise SweepError(f"{where}: expected a table with template, {p}, {q}")
    _check_keys(table, ("template", p, q, "name", "classes", *extra), f"{where}: ")
    missing = [k for k in ("template", p, q) if k not in table]
    if missing:
        raise SweepError(f"{where}: missing key(s) {missing}; e.g. template = \"fp12_sr\", "
                         f"{p} = [...], {q} = [...]")
    template = _template(table["template"], f"{where}.template")
    name = table.get("name", template.name)
    if not isinstance(name, str) or not name:
        raise SweepError(f"{where}: name the split (name = \"...\"): its template has no name")
    classes = _split_classes(template, table.get("classes"), where)
    pairs = list(itertools.product(_ints(table, p, where), _ints(table, q, where)))
    if "bits" in table:
        bits = _ints(table, "bits", where)
        pairs = [(e, m) for e, m in pairs if 1 + e + m in bits]
        if not pairs:
            raise SweepError(f"{where}: no (exp, man) pair has 1 + exp + man in bits = {bits}")
    options = {k: table[k] for k in extra if k in table and k != "bits"}
    out = []
    for a, b in pairs:
        params = {p: a, q: b}
        label = f"e{a}m{b}" if kind == "float" else f"w{a}f{b}"
        try:
            recipe = _with_format(template, classes, kind, params, options)
        except (TypeError, ValueError) as exc:  # the format's or the spec's checks
            raise SweepError(f"{where}: {p}={a}, {q}={b}: {exc}") from None
        recipe = recipe.replace(
            name=f"{name}-{label}",
            description=f"{template.name or name} with {', '.join(classes)} in {kind} "
                        f"{p}={a}, {q}={b} (sweep split)")
        out.append(Variant(recipe, where, name, kind, params))
    return out


def _split_classes(template: Recipe, classes: Any, where: str) -> list[str]:
    specs = {**template.specs(), **template.mac_specs()}
    quantized = [c for c, s in specs.items() if s is not None]
    if classes is None:
        if not quantized:
            raise SweepError(f"{where}.template: rounds no tensor class; use a template "
                             "that quantizes the classes to sweep")
        return quantized
    if not isinstance(classes, list) or not classes:
        raise SweepError(f"{where}.classes: expected a list of tensor classes, got {classes!r}")
    for c in classes:
        if c not in quantized:
            raise SweepError(f"{where}.classes: {c!r} is not a class the template rounds; "
                             f"choose from {quantized}")
    return classes


def _with_format(template: Recipe, classes: list[str], kind: str, params: dict[str, int],
                 options: dict[str, Any]) -> Recipe:
    """``template`` with the format of ``classes`` replaced, rounding and scaling kept; a
    float split keeps the other settings of the class's float format (not its bias)."""
    changes = {}
    for cls in classes:
        spec = getattr(template, cls)
        old = spec.format
        kept = old.to_dict() if kind == "float" and old.table_kind == kind else {}
        kept.pop("bias", None)
        fmt = Format.from_dict({**kept, "kind": kind, **params, **options})
        changes[cls] = dataclasses.replace(spec, format=fmt)
    return template.replace(**changes)
