"""Tables and plots of the cost model: one row per recipe, ratios to fp32 (all modelled)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from ..numerics.formats import Format
from ..numerics.presets import name_of
from ..train.recipes import resolve
from .analysis import LayerCost, analyse, summarize
from .energy import MEMORY_PJ_PER_64_BITS

__all__ = ["RATIOS", "format_layers", "format_table", "note", "plot", "recipe_table",
           "report_section"]

RATIOS = ("energy_pj", "compute_pj", "moved_bits", "stored_bits", "multiplier_products")
_LABELS = ("energy", "compute energy", "bits moved (memory energy)", "bits stored",
           "products needing a multiplier")


def recipe_table(model: nn.Module, input_shape: Sequence[int], recipes: Sequence[Any], *,
                 memory: str = "dram", per_layer: bool = False) -> list[dict[str, Any]]:
    """One row per recipe (all values modelled): :func:`summarize`'s totals, plus
    ``<total>_ratio`` to fp32 for each of :data:`RATIOS`, ``recipe`` and ``kind =
    "modelled"``; ``per_layer=True`` adds ``layers``: the :class:`LayerCost` list.

    ``input_shape``: ``(batch, *one input)``; ``recipes``: preset names, TOML paths,
    Recipe objects or ``{class: format}`` dicts (:func:`lowprec.train.recipes.resolve`).
    """
    torch.manual_seed(0)
    base = summarize(analyse(model, input_shape, None), memory)
    rows = []
    for r in recipes:
        recipe = resolve(r)
        layers = analyse(model, input_shape, recipe)
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
    return "fp32" if f is None else name_of(f)


def format_layers(layers: Sequence[LayerCost], memory: str = "dram") -> str:
    """Markdown table: per layer, products per type (``*``: needs a multiplier), pJ."""
    lines = ["| layer | forward | grad-input | grad-weight | x format | compute pJ | "
             "moved bits |", "|---|---|---|---|---|---|---|"]
    for la in layers:
        cells = [f"{n:,}{'' if shift or not n else '*'}" for n, shift in la.products().values()]
        lines.append(f"| {la.name} | {' | '.join(cells)} | {_name(la.fmt['input'])} | "
                     f"{_g(la.compute_pj())} | {sum(la.moved_bits().values()):,} |")
    return "\n".join(lines)


def note(batch: int, memory: str) -> str:
    return (f"All numbers are **modelled** (not measured): Horowitz 45 nm energies per "
            f"operation with the rules of `lowprec.cost`, one training step of batch {batch}, "
            f"memory at {memory} ({MEMORY_PJ_PER_64_BITS[memory]:g} pJ per 64 bits); ratios "
            "to fp32 on the same model.")


def report_section(model: nn.Module, input_shape: Sequence[int],
                   recipes: Mapping[str, Any], *, memory: str = "dram") -> str:
    """Markdown for the study report: :func:`format_table` of ``recipes`` ({name: dict})."""
    rows = recipe_table(model, input_shape, [{**d, "name": n} for n, d in recipes.items()],
                        memory=memory)
    return f"{note(int(input_shape[0]), memory)}\n\n{format_table(rows)}"


def plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
         title: str = "") -> list[str]:
    """Grouped bars of the ratios to fp32 per recipe; writes ``path``.png and .svg."""
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


