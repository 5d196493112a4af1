"""Cost model: what a recipe's formats would buy in hardware. Every number here is *modelled*.

**Layers.** One forward pass (2 random inputs) with hooks on every layer type that
:func:`lowprec.prepare` quantizes (Conv, Linear) gives each layer's sizes. Products
(multiply-accumulates) per image and product type, forward ``x·W``, grad-input ``ĝ·W``
and grad-weight ``ĝ·x``, all the same count::

    conv:   out_elems * (in_channels / groups) * kernel_h * kernel_w
    linear: out_elems * in_features

times the batch ``B`` per training step; a layer whose input needs no gradient (the
first: its input is the data) has no grad-input products. Bias additions, pooling and
activation functions are not counted.

**Operand formats** (the layer's specs, :meth:`lowprec.Recipe.for_layer`; ``None`` =
fp32; a scaled format counts its element format, shared scales are not counted):
``W`` weight, ``ĝ`` error, the output ``y`` activation. The input ``x`` is in
the activation format of the previous prepared layer if it holds that layer's outputs
unchanged (through ReLU, max-pool, flatten), else fp32 (the data, an average pool,
LRN, a residual sum). A probe finds out: the forward pass rounds every prepared
layer's output to a power of two (all exponents); ``x`` holds stored outputs iff
every value is then ``0`` or ``±2**k``, not all ``0``. A product is *shift-only* iff
one operand's format is power-of-two valued (``man = 0``, e.g. pot7): with pot7
activations and errors, every product of a layer fed by ReLU/max-pool is a shift; a
layer fed by the data or an average pool needs multipliers in its forward pass.

**Energy per operation** (Horowitz, ISSCC 2014, 45 nm, pJ; the table in STUDY.md):
int add 8/16/32 bit 0.03/0.05/0.1; int multiply 8/32 bit 0.2/3.1; float add 16/32 bit
0.4/0.9; float multiply 16/32 bit 1.1/3.7; 64-bit read: SRAM 8 KB 10, 32 KB 20, 1 MB
100, DRAM 1300 to 2600. Rule between and beyond the points: ``E(d)`` is piecewise
linear in a driver ``d`` through ``(0, 0)`` and the table's points, and proportional to
``d`` past the last point::

    integer add, n bits          d = n            (8, 0.03) (16, 0.05) (32, 0.1)
    float add, n-bit format      d = n            (16, 0.4) (32, 0.9)
    integer multiply, a x b bits d = a * b        (64, 0.2) (1024, 3.1)
    float multiply               d = p_a * p_b    (121, 1.1) (576, 3.7)
                                 (p: significand bits with the hidden bit, man + 1;
                                  a fixed-point operand: its word length)
    shift (a product with a power-of-two operand): an integer add of the wider
                                 exponent field of the two operands (fixed point: 1 bit)
    accumulate                   one fp32 add per product, for every recipe (the
                                 emulation, like the study's, sums in float32)
    memory                       bits * E64 / 64; E64 = 10, 20, 100 pJ (SRAM 8 KB,
                                 32 KB, 1 MB) or 1300 pJ (DRAM, the table's low end).
                                 Default DRAM: a batch-100 step's tensors exceed 1 MB.

**Traffic** per layer and step: each operand is read once per product type and each
result written once (perfect on-chip reuse: a lower bound), in its class's bits::

    forward      read x [activation], read W [weight], write y [activation]
    grad-input   read ĝ [error], read W [weight], write dx [error]   (if x needs it)
    grad-weight  read ĝ [error], read x [activation], write G [weight_grad]
    step (SGD with momentum): read G [weight_grad], read + write v [update],
                 read + write W [weight]; with ``master_weights``: read + write the
                 fp32 master [weight, 32 bits] and write W

**Stored** during a step: ``W`` (and the fp32 master), ``v``, ``G`` of every layer,
every layer's ``x`` (saved for grad-weight) and the largest ``ĝ``. Ratios are to the
fp32 recipe (every class ``None``) on the same model, batch and memory level.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import formats
from .formats import FixedPoint, FloatingPoint, Format, PowerOfTwo
from .models import MODELS, build_model
from .quantize import quantize
from .recipe import TENSOR_CLASSES, Recipe
from .training import layer_types

__all__ = [
    "MEMORY_PJ_PER_64_BITS",
    "LayerCost",
    "add_cost_subcommand",
    "analyse",
    "as_recipe",
    "energy",
    "main",
    "plot",
    "recipe_table",
    "report_section",
    "summarize",
]

INT_ADD = ((8, 0.03), (16, 0.05), (32, 0.1))
FLOAT_ADD = ((16, 0.4), (32, 0.9))
INT_MUL = ((64, 0.2), (1024, 3.1))
FLOAT_MUL = ((121, 1.1), (576, 3.7))
MEMORY_PJ_PER_64_BITS = {"sram8k": 10.0, "sram32k": 20.0, "sram1m": 100.0, "dram": 1300.0}
PRODUCTS = ("forward", "grad_input", "grad_weight")
_PROBE = PowerOfTwo(8, emax=127)  # every float32 exponent: marks stored layer outputs
_DEFAULT_INPUT = {"small_cnn": (1, 8)}  # model: (channels, image size); others (3, 32)


def energy(table: tuple[tuple[int, float], ...], d: float) -> float:
    """pJ at driver ``d``: piecewise linear through (0, 0) and ``table``, proportional beyond."""
    x0, y0 = 0.0, 0.0
    for x1, y1 in table:
        if d <= x1:
            return y0 + (y1 - y0) * (d - x0) / (x1 - x0)
        x0, y0 = x1, y1
    return y0 * d / x0


def _bits(f: Format | None) -> int:
    return 32 if f is None else f.bits


def _pow2(f: Format | None) -> bool:
    return isinstance(f, FloatingPoint) and f.man == 0


def _exp_bits(f: Format | None) -> int:
    return 8 if f is None else f.exp if isinstance(f, FloatingPoint) else 1


def _significand(f: Format | None) -> int:
    return 24 if f is None else f.man + 1 if isinstance(f, FloatingPoint) else f.bits


def product_pj(a: Format | None, b: Format | None) -> float:
    """Modelled pJ of one product of operands in formats ``a`` and ``b`` (module doc)."""
    if _pow2(a) or _pow2(b):
        return energy(INT_ADD, max(_exp_bits(a), _exp_bits(b)))
    if isinstance(a, FixedPoint) and isinstance(b, FixedPoint):
        return energy(INT_MUL, a.bits * b.bits)
    return energy(FLOAT_MUL, _significand(a) * _significand(b))


ACCUMULATE_PJ = energy(FLOAT_ADD, 32)


@dataclass(frozen=True)
class LayerCost:
    """One prepared layer in a training step of ``batch`` inputs (counts per step)."""

    name: str
    macs: int  # products per product type
    grad_input: bool  # whether the input needs a gradient
    x_elems: int
    y_elems: int
    params: int
    fmt: Mapping[str, Format | None]  # TENSOR_CLASSES and "input"
    master: bool = False  # an fp32 master copy of the weights (master_weights recipes)

    def operands(self) -> dict[str, tuple[Format | None, Format | None]]:
        """The two operand formats of each product type."""
        f = self.fmt
        return {"forward": (f["input"], f["weight"]), "grad_input": (f["error"], f["weight"]),
                "grad_weight": (f["error"], f["input"])}

    def products(self) -> dict[str, tuple[int, bool]]:
        """Per product type: (count, shift-only)."""
        return {k: (0 if k == "grad_input" and not self.grad_input else self.macs,
                    _pow2(a) or _pow2(b)) for k, (a, b) in self.operands().items()}

    def compute_pj(self) -> float:
        ops = self.operands()
        return sum(n * (product_pj(*ops[k]) + ACCUMULATE_PJ)
                   for k, (n, _) in self.products().items())

    def moved_bits(self) -> dict[str, int]:
        """Bits read and written per tensor class (module doc)."""
        f, gi, p = self.fmt, int(self.grad_input), self.params
        x = self.x_elems * _bits(f["input"])
        w = p * _bits(f["weight"])
        return {
            "activation": 2 * x + self.y_elems * _bits(f["activation"]),
            "weight": (2 + gi) * w + (2 * p * 32 + w if self.master else w),
            "error": ((1 + gi) * self.y_elems + gi * self.x_elems) * _bits(f["error"]),
            "weight_grad": 2 * p * _bits(f["weight_grad"]),
            "update": 2 * p * _bits(f["update"]),
        }

    def stored_bits(self) -> dict[str, int]:
        """Bits held during the step (the error: this layer's ĝ; the step holds the largest)."""
        f, p = self.fmt, self.params
        return {"activation": self.x_elems * _bits(f["input"]),
                "weight": p * (_bits(f["weight"]) + 32 * self.master),
                "error": self.y_elems * _bits(f["error"]),
                "weight_grad": p * _bits(f["weight_grad"]), "update": p * _bits(f["update"])}


def as_recipe(recipe: Recipe | str | Mapping[str, Any] | None) -> Recipe:
    """A Recipe from a Recipe, a preset name, a TOML path or a dict (``{class: format}``)."""
    if recipe is None:
        return Recipe(name="fp32")
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    if os.path.isfile(recipe):
        return Recipe.from_file(recipe)
    from . import recipes

    return recipes.get(recipe)


def analyse(model: nn.Module, input_shape: Sequence[int],
            recipe: Recipe | str | Mapping[str, Any] | None) -> list[LayerCost]:
    """The prepared layers of ``model`` for inputs ``(batch, *one input)`` (module doc)."""
    rec = as_recipe(recipe)
    batch, one = int(input_shape[0]), tuple(int(s) for s in input_shape[1:])
    probe = copy.deepcopy(model).eval()
    found: list[LayerCost] = []
    last: list[Format | None] = [None]
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def pre(name: str, module: nn.Module, args: Any) -> None:
        inputs[name] = args[0]

    def post(name: str, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        x = inputs.pop(name)
        frac, _ = torch.frexp(x.detach())
        stored = bool(((frac.abs() == 0.5) | (x == 0)).all()) and bool((x != 0).any())
        specs = rec.for_layer(name)
        fmt: dict[str, Format | None] = {
            c: None if s is None else getattr(s.format, "element", s.format)  # MX: element
            for c, s in specs.items()}
        fmt["input"] = last[0] if stored else None
        per_out = out.numel() // 2
        kernel = getattr(module, "kernel_size", ())
        k = module.in_channels // module.groups if kernel else module.in_features
        for size in kernel:
            k *= size
        found.append(LayerCost(name, batch * per_out * k, x.requires_grad,
                               batch * (x.numel() // 2), batch * per_out,
                               sum(p.numel() for p in module.parameters(recurse=False)), fmt,
                               rec.master_weights and fmt["weight"] is not None))
        if specs["activation"] is None:
            return out
        last[0] = specs["activation"].format
        return quantize(out.detach(), _PROBE).requires_grad_(out.requires_grad)

    for name, module in probe.named_modules():
        if isinstance(module, layer_types()):
            handles.append(module.register_forward_pre_hook(
                lambda m, a, n=name: pre(n, m, a)))
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: post(n, m, a, o)))
    if not handles:
        raise ValueError("model has no Conv or Linear layer")
    probe(torch.randn((2, *one), generator=torch.Generator().manual_seed(0)))
    return found


def summarize(layers: Sequence[LayerCost], memory: str = "dram") -> dict[str, Any]:
    """Totals of a training step: products, energy (pJ), bits moved and stored per class."""
    if memory not in MEMORY_PJ_PER_64_BITS:
        raise ValueError(f"memory={memory!r} is unknown; allowed: {list(MEMORY_PJ_PER_64_BITS)}")
    counts = [c for la in layers for c in la.products().values()]
    moved = {c: sum(la.moved_bits()[c] for la in layers) for c in TENSOR_CLASSES}
    stored = {c: sum(la.stored_bits()[c] for la in layers) for c in TENSOR_CLASSES}
    stored["error"] = max((la.stored_bits()["error"] for la in layers), default=0)
    compute = sum(la.compute_pj() for la in layers)
    mem = sum(moved.values()) * MEMORY_PJ_PER_64_BITS[memory] / 64
    return {
        "products": sum(n for n, _ in counts),
        "multiplier_products": sum(n for n, shift in counts if not shift),
        "shift_products": sum(n for n, shift in counts if shift),
        "compute_pj": compute, "memory_pj": mem, "energy_pj": compute + mem,
        "moved_bits": sum(moved.values()), "stored_bits": sum(stored.values()),
        **{f"moved_bits_{c}": v for c, v in moved.items()},
        **{f"stored_bits_{c}": v for c, v in stored.items()},
    }


RATIOS = ("energy_pj", "compute_pj", "moved_bits", "stored_bits", "multiplier_products")
_LABELS = ("energy", "compute energy", "bits moved (memory energy)", "bits stored",
           "products needing a multiplier")


def _input_shape(model_name: str, batch: int, in_channels: int | None,
                 image_size: int | None) -> tuple[int, ...]:
    c, s = _DEFAULT_INPUT.get(model_name, (3, 32))
    c = in_channels or c
    s = image_size or s
    return batch, c, s, s


def recipe_table(model_name: str, recipe_names: Sequence[Any], *, batch: int = 100,
                 memory: str = "dram", num_classes: int = 10, in_channels: int | None = None,
                 image_size: int | None = None,
                 per_layer: bool = False) -> list[dict[str, Any]]:
    """One row per recipe (all values modelled): :func:`summarize`'s totals, plus
    ``<total>_ratio`` to fp32 for each of :data:`RATIOS`, ``recipe`` and ``kind =
    "modelled"``; ``per_layer=True`` adds ``layers``: the :class:`LayerCost` list.

    ``recipe_names``: preset names, TOML paths, Recipe objects or ``{class: format}``
    dicts. Input: ``in_channels`` x ``image_size``^2 (default 1x8x8 for small_cnn,
    else 3x32x32).
    """
    shape = _input_shape(model_name, batch, in_channels, image_size)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes, shape[1], shape[2])
    base = summarize(analyse(model, shape, None), memory)
    rows = []
    for r in recipe_names:
        recipe = as_recipe(r)
        layers = analyse(model, shape, recipe)
        row = {"recipe": recipe.name or "custom", "kind": "modelled", **summarize(layers, memory)}
        row.update({f"{k}_ratio": row[k] / base[k] for k in RATIOS})
        if per_layer:
            row["layers"] = layers
        rows.append(row)
    return rows


def _g(x: float) -> str:
    return f"{x:.3g}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: energy per step and the ratios to fp32 (all modelled)."""
    lines = ["| recipe | energy pJ | " + " | ".join(_LABELS) + " |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['recipe']} | {_g(r['energy_pj'])} | "
                     + " | ".join(_g(r[f"{k}_ratio"]) for k in RATIOS) + " |")
    return "\n".join(lines)


def _name(f: Format | None) -> str:
    """A format's preset name if it has one."""
    if f is None:
        return "fp32"
    return next((n for n in formats.names() if formats.get(n) == f), f.name)


def format_layers(layers: Sequence[LayerCost], memory: str = "dram") -> str:
    """Markdown table: per layer, products per type (``*``: needs a multiplier), pJ."""
    lines = ["| layer | forward | grad-input | grad-weight | x format | compute pJ | "
             "moved bits |", "|---|---|---|---|---|---|---|"]
    for la in layers:
        cells = [f"{n:,}{'' if shift or not n else '*'}" for n, shift in la.products().values()]
        lines.append(f"| {la.name} | {' | '.join(cells)} | {_name(la.fmt['input'])} | "
                     f"{_g(la.compute_pj())} | {sum(la.moved_bits().values()):,} |")
    return "\n".join(lines)


def _note(batch: int, memory: str) -> str:
    return (f"All numbers are **modelled** (not measured): Horowitz 45 nm energies per "
            f"operation with the rules of `lowprec.cost`, one training step of batch {batch}, "
            f"memory at {memory} ({MEMORY_PJ_PER_64_BITS[memory]:g} pJ per 64 bits); ratios "
            "to fp32 on the same model.")


def report_section(model: str, recipes: Mapping[str, Any], *,
                   input_shape: Sequence[int] | None = None, num_classes: int = 10,
                   batch: int = 100, memory: str = "dram") -> str:
    """Markdown for the study report: :func:`format_table` of ``recipes`` ({name: dict}).

    ``input_shape``: one input's ``(channels, height, width)``; default by model.
    """
    c, s = (input_shape[0], input_shape[1]) if input_shape else (None, None)
    rows = recipe_table(model, [{**d, "name": n} for n, d in recipes.items()], batch=batch,
                        memory=memory, num_classes=num_classes, in_channels=c, image_size=s)
    return f"{_note(batch, memory)}\n\n{format_table(rows)}"


def plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
         title: str = "") -> list[str]:
    """Grouped bars of the ratios to fp32 per recipe; writes ``path``.png and .svg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        ax.bar([k + i * width for k in range(len(RATIOS))], [r[f"{k}_ratio"] for k in RATIOS],
               width, label=r["recipe"])
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(RATIOS))],
                  [label.replace(" (", "\n(").replace("needing", "needing\n")
                   for label in _LABELS], fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("ratio to fp32 (modelled)")
    ax.set_title(title or "modelled cost per training step, ratio to fp32 (Horowitz 45 nm)")
    ax.set_ylim(0, 1.3)
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(rows), 6))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    base = os.fspath(path)
    out = [f"{base}.png", f"{base}.svg"]
    for p in out:
        fig.savefig(p)
    return out


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="cifar10_quick", choices=list(MODELS))
    p.add_argument("--recipe", action="append", dest="recipes",
                   help="preset name or TOML file; repeat for several (default: pot7)")
    p.add_argument("--batch", type=int, default=100, help="inputs per training step")
    p.add_argument("--memory", default="dram", choices=list(MEMORY_PJ_PER_64_BITS))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, help="default: 1 for small_cnn, else 3")
    p.add_argument("--image-size", type=int, help="default: 8 for small_cnn, else 32")
    p.add_argument("--per-layer", action="store_true", help="also print each layer")
    p.add_argument("--out", type=Path, help="write cost.png and cost.svg into this folder")


def _run(args: argparse.Namespace) -> int:
    """Print the tables (and write the plots); exit status 2 on a bad recipe or path."""
    try:
        return _print(args)
    except (ValueError, OSError) as exc:
        print(f"lowprec cost: error: {exc}", file=sys.stderr)
        return 2


def _print(args: argparse.Namespace) -> int:
    rows = recipe_table(args.model, args.recipes or ["pot7"], batch=args.batch,
                        memory=args.memory, num_classes=args.num_classes,
                        in_channels=args.in_channels, image_size=args.image_size,
                        per_layer=args.per_layer)
    print(f"{args.model}: {_note(args.batch, args.memory)}\n")
    print(format_table(rows))
    for r in rows if args.per_layer else ():
        print(f"\n{r['recipe']} per layer (* = needs a multiplier; modelled):\n")
        print(format_layers(r["layers"], args.memory))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in plot(rows, args.out / "cost", f"{args.model}, batch {args.batch}: "
                         "modelled cost, ratio to fp32"):
            print(f"wrote {path}")
    return 0


def add_cost_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cost`` to a ``lowprec`` command line (``args.func(args)`` runs it)."""
    p = subparsers.add_parser("cost", help="modelled energy and memory of a recipe")
    _add_arguments(p)
    p.set_defaults(func=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``lowprec cost ...`` as a function; returns the exit status."""
    p = argparse.ArgumentParser(prog="lowprec cost", description=__doc__.splitlines()[0])
    _add_arguments(p)
    return _run(p.parse_args(argv))
