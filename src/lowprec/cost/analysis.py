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
LRN, a residual sum); for an op-level recipe (``recipe.ops``) listing the layer's kind,
``x`` is in the recipe's ``input`` format, rounded right before the product whatever
precedes it (``pot7_operands``: every product has a power-of-two operand), and a kind
not listed is fp32 throughout. For module-level recipes a probe finds out: the
forward pass rounds every prepared layer's output to a power of two (all exponents);
``x`` holds stored outputs iff every value is then ``0`` or ``±2**k``, not all ``0``.
A product is *shift-only* iff one operand's format is power-of-two valued (``man = 0``,
e.g. pot7): with pot7 activations and errors, every product of a layer fed by
ReLU/max-pool is a shift; a layer fed by the data or an average pool needs multipliers
in its forward pass.

**Energy per operation**: :mod:`.energy` (Horowitz, ISSCC 2014, 45 nm): a product costs
:func:`~.energy.product_pj` of its operand formats (a shift when one is a power of two),
plus one add per product in the accumulator's format (``recipe.accumulate``: an integer
add of its word length for fixed point, a float add of its width for floating point;
fp32 without one, as the emulation then sums in float32, like the study's); memory costs
``bits * E64 / 64`` at the chosen level (default DRAM: a batch-100 step's tensors exceed
1 MB).

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

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..numerics.formats import Format, PowerOfTwo
from ..numerics.quantize import quantize
from ..train.prepare import layer_types
from ..train.recipe import TENSOR_CLASSES, Recipe
from ..train.recipes import resolve
from .energy import MEMORY_PJ_PER_64_BITS, accumulate_pj, bits, is_pow2, product_pj

__all__ = ["PRODUCTS", "LayerCost", "analyse", "multiplications_removed", "summarize"]

PRODUCTS = ("forward", "grad_input", "grad_weight")
#: the classes traffic and storage are counted in (a layer's input counts as activation)
TRAFFIC = tuple(c for c in TENSOR_CLASSES if c != "input")
_PROBE = PowerOfTwo(8, emax=127)  # every float32 exponent: marks stored layer outputs


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
    accumulate: Format | None = None  # the accumulator's format (None: fp32)

    def operands(self) -> dict[str, tuple[Format | None, Format | None]]:
        """The two operand formats of each product type."""
        f = self.fmt
        return {"forward": (f["input"], f["weight"]), "grad_input": (f["error"], f["weight"]),
                "grad_weight": (f["error"], f["input"])}

    def products(self) -> dict[str, tuple[int, bool]]:
        """Per product type: (count, shift-only)."""
        return {k: (0 if k == "grad_input" and not self.grad_input else self.macs,
                    is_pow2(a) or is_pow2(b)) for k, (a, b) in self.operands().items()}

    def compute_pj(self) -> float:
        ops, add = self.operands(), accumulate_pj(self.accumulate)
        return sum(n * (product_pj(*ops[k]) + add)
                   for k, (n, _) in self.products().items())

    def moved_bits(self) -> dict[str, int]:
        """Bits read and written per tensor class (module doc)."""
        f, gi, p = self.fmt, int(self.grad_input), self.params
        x = self.x_elems * bits(f["input"])
        w = p * bits(f["weight"])
        return {
            "activation": 2 * x + self.y_elems * bits(f["activation"]),
            "weight": (2 + gi) * w + (2 * p * 32 + w if self.master else w),
            "error": ((1 + gi) * self.y_elems + gi * self.x_elems) * bits(f["error"]),
            "weight_grad": 2 * p * bits(f["weight_grad"]),
            "update": 2 * p * bits(f["update"]),
        }

    def stored_bits(self) -> dict[str, int]:
        """Bits held during the step (the error: this layer's ĝ; the step holds the largest)."""
        f, p = self.fmt, self.params
        return {"activation": self.x_elems * bits(f["input"]),
                "weight": p * (bits(f["weight"]) + 32 * self.master),
                "error": self.y_elems * bits(f["error"]),
                "weight_grad": p * bits(f["weight_grad"]), "update": p * bits(f["update"])}


def analyse(model: nn.Module, input_shape: Sequence[int],
            recipe: Recipe | str | Mapping[str, Any] | None) -> list[LayerCost]:
    """The prepared layers of ``model`` for inputs ``(batch, *one input)`` (module doc)."""
    rec = resolve(recipe)
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
        kernel = getattr(module, "kernel_size", ())
        covered = ("conv" if kernel else "linear") in (rec.ops or ())
        if not rec.op_level:
            fmt["input"] = last[0] if stored else None
        elif not covered:
            fmt = dict.fromkeys(fmt)  # an op-level recipe that leaves this kind fp32
        per_out = out.numel() // 2
        k = module.in_channels // module.groups if kernel else module.in_features
        for size in kernel:
            k *= size
        found.append(LayerCost(name, batch * per_out * k, x.requires_grad,
                               batch * (x.numel() // 2), batch * per_out,
                               sum(p.numel() for p in module.parameters(recurse=False)), fmt,
                               rec.master_weights and fmt["weight"] is not None,
                               rec.accumulate.format if covered and rec.accumulate else None))
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
    moved = {c: sum(la.moved_bits()[c] for la in layers) for c in TRAFFIC}
    stored = {c: sum(la.stored_bits()[c] for la in layers) for c in TRAFFIC}
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


def multiplications_removed(model: nn.Module, input_shape: tuple[int, ...],
                            recipe: Any) -> dict[str, Any]:
    """Products per training step that a recipe turns into shifts (a power-of-two operand).

    ``input_shape`` is ``(batch, *one input)``; ``recipe``: a Recipe, preset name or
    ``{class: format}`` dict (see :func:`analyse`, which finds the layers
    and which operands are powers of two). Returns ``{"layers": {name: {"forward",
    "grad_input", "grad_weight"}}, "total": removed, "products": all products}``.
    """
    layers = analyse(model, input_shape, recipe)
    per = {la.name: {k: n if shift else 0 for k, (n, shift) in la.products().items()}
           for la in layers}
    return {"layers": per, "total": sum(sum(d.values()) for d in per.values()),
            "products": sum(n for la in layers for n, _ in la.products().values())}
