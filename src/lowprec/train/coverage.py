"""Coverage reports: what a prepared model rounded, op by op (:func:`lowprec.coverage`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_coverage", "unrounded_products"]

_CLASSES = ("input", "weight", "activation", "error")


def unrounded_products(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The product ops that ran with neither operand rounded."""
    return [r for r in rows if r["product"] and not ({"input", "weight"} & set(r["rounded"]))]


def format_coverage(rows: Sequence[dict[str, Any]]) -> str:
    """A text table: one line per op (module, op, kind, calls, the format per class;
    ``-`` = fp32), then the unrounded products, each flagged."""
    head = f"{'module':<24} {'op':<28} {'kind':<10} {'calls':>5}  " + "  ".join(
        f"{c:<10}" for c in _CLASSES)
    lines = [head, "-" * len(head)]
    bad = {id(r) for r in unrounded_products(rows)}
    for r in rows:
        cells = "  ".join(f"{r['rounded'].get(c, '-'):<10}" for c in _CLASSES)
        flag = "  <- product, unrounded" if id(r) in bad else ""
        lines.append(f"{r['module'] or '(model)':<24} {r['op']:<28} {r['kind']:<10} "
                     f"{r['calls']:>5}  {cells}{flag}".rstrip())
    n = len(bad)
    lines.append(f"\n{len(rows)} ops; {n} product op(s) ran unrounded" + (
        ": " + ", ".join(f"{r['module'] or '(model)'}:{r['op']}" for r in rows if id(r) in bad)
        if n else ""))
    return "\n".join(lines)
