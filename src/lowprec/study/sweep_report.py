"""The sweep part of ``report.md``: accuracy over a grid of formats, from ``sweep.json``.

When the report folder holds a sweep summary (:mod:`lowprec.sweep_runner`), :func:`section`
adds, for each (data set, model, epochs) of the sweep:

- per format split (``float_split`` / ``fixed_split``): the final test accuracy, mean over
  seeds, as a heat map over exponent × mantissa bits (word length × fraction bits for fixed
  point) when both vary, or as a line with ± sample-std error bars when one varies; and the
  same numbers as a table (mean ± std, or the runs' state where none finished);
- the best per budget: for each bit width (a split's total bits, else the widest format
  the recipe stores; fp32: 32), the recipe with the best mean final test accuracy, and a
  plot of every recipe's accuracy against its bits;
- the runs that failed, diverged or are not finished, with the reasons.

Accuracies are percent, from finished runs only (``status.json`` says ``done``).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .results import Run, mean_std, save_figure
from .rundir import RunError, read_json
from .sweep_runner import PROBLEMS, SUMMARY

__all__ = ["Point", "section"]

#: axis labels of the split parameters
_LABELS = {"exp": "exponent bits", "man": "mantissa bits", "wl": "word length (wl)",
           "fl": "fraction bits (fl)"}
#: the (row, column) parameters of each split kind
_PARAMS = {"float": ("exp", "man"), "fixed": ("wl", "fl")}


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its ``sweep.json`` entry and its folder as saved (``None``
    if the run never started)."""

    record: dict[str, Any]
    run: Run | None

    @property
    def status(self) -> str:
        """The run folder's status if it has one, else ``sweep.json``'s."""
        return self.run.state if self.run and self.run.status else self.record["status"]

    @property
    def acc(self) -> float | None:
        """Final test accuracy in percent (``None`` unless done)."""
        acc = self.run.final_acc if self.run else None
        return None if acc is None else 100.0 * acc


@dataclass(frozen=True)
class Cell:
    """The seeds of one recipe in one (data set, model, epochs) group."""

    points: list[Point]

    @property
    def record(self) -> dict[str, Any]:
        return self.points[0].record

    @property
    def accs(self) -> list[float]:
        return [a for p in self.points if (a := p.acc) is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    def text(self) -> str:
        """Mean ± std, or the states of the seeds when none finished."""
        if self.accs:
            return mean_std(self.accs)
        return "/".join(sorted({p.status for p in self.points}))


Group = dict[str, Cell]  # recipe name -> its seeds


def _groups(points: list[Point]) -> dict[tuple[str, str, Any], Group]:
    """Points by (data set, model, epochs), then by recipe, in the sweep's order."""
    groups: dict[tuple[str, str, Any], dict[str, list[Point]]] = {}
    for p in points:
        r = p.record
        key = (r["dataset"], r["model"], r["epochs"])
        groups.setdefault(key, {}).setdefault(r["recipe"], []).append(p)
    return {key: {name: Cell(ps) for name, ps in g.items()} for key, g in groups.items()}


def _splits(group: Group) -> dict[tuple[str, str], dict[tuple[int, int], Cell]]:
    """The split recipes of a group: by (split name, kind), then by parameter pair."""
    out: dict[tuple[str, str], dict[tuple[int, int], Cell]] = {}
    for cell in group.values():
        r = cell.record
        if r["kind"] in _PARAMS:
            p, q = _PARAMS[r["kind"]]
            out.setdefault((r["family"], r["kind"]), {})[r["params"][p], r["params"][q]] = cell
    return out


# -- plots ----------------------------------------------------------------------------------


def _heatmap(grid: dict[tuple[int, int], Cell], kind: str, title: str, folder: Path,
             stem: str) -> str:
    rows, cols = (sorted({k[i] for k in grid}) for i in (0, 1))
    means = np.full((len(rows), len(cols)), np.nan)
    fig = Figure(figsize=(2.5 + 1.1 * len(cols), 1.8 + 0.6 * len(rows)))
    ax = fig.add_subplot()
    for (a, b), cell in grid.items():
        means[rows.index(a), cols.index(b)] = np.nan if cell.mean is None else cell.mean
    finite = means[np.isfinite(means)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(means), cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-9),
                      origin="lower", aspect="auto")
    for (a, b), cell in grid.items():
        text = cell.text() if cell.mean is None else (
            f"{cell.mean:.1f}" + (f"\n±{cell.std:.1f}" if len(cell.accs) > 1 else ""))
        dark = cell.mean is not None and cell.mean < (lo + hi) / 2
        ax.text(cols.index(b), rows.index(a), text, ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    p, q = _PARAMS[kind]
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(_LABELS[q])
    ax.set_ylabel(_LABELS[p])
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="final test accuracy (%)")
    return save_figure(fig, folder, stem)


def _line(grid: dict[tuple[int, int], Cell], kind: str, axis: int, title: str, folder: Path,
          stem: str) -> str | None:
    """Accuracy against the one parameter that varies (``axis`` 0 or 1)."""
    done = sorted((k[axis], c) for k, c in grid.items() if c.mean is not None)
    if not done:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.errorbar([x for x, _ in done], [c.mean for _, c in done], yerr=[c.std for _, c in done],
                marker="o", capsize=3)
    ax.set_xlabel(_LABELS[_PARAMS[kind][axis]])
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, folder, stem)


def _bits_plot(group: Group, best: dict[int, Cell], title: str, folder: Path,
               stem: str) -> str | None:
    done = [c for c in group.values() if c.mean is not None]
    if not done:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.errorbar([c.record["bits"] for c in done], [c.mean for c in done],
                yerr=[c.std for c in done], fmt="o", alpha=0.5, capsize=2, label="recipes")
    ax.plot(list(best), [c.mean for c in best.values()], "-s", color="C3",
            label="best per budget")
    ax.set_xlabel("bits (widest stored format)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, folder, stem)


# -- text -----------------------------------------------------------------------------------


def _grid_table(grid: dict[tuple[int, int], Cell], kind: str) -> list[str]:
    rows, cols = (sorted({k[i] for k in grid}) for i in (0, 1))
    p, q = _PARAMS[kind]
    lines = [f"| {p} \\ {q} | " + " | ".join(map(str, cols)) + " |",
             "|---|" + "---|" * len(cols)]
    for a in rows:
        cells = [grid[a, b].text() if (a, b) in grid else "—" for b in cols]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def _best(group: Group) -> dict[int, Cell]:
    """Per bit width (ascending), the cell with the best mean final accuracy."""
    best: dict[int, Cell] = {}
    for cell in group.values():
        bits = cell.record["bits"]
        if cell.mean is not None and (bits not in best or cell.mean > best[bits].mean):
            best[bits] = cell
    return dict(sorted(best.items()))


def _best_table(best: dict[int, Cell]) -> list[str]:
    lines = ["| bits | best recipe | formats | final test acc | seeds done |",
             "|---|---|---|---|---|"]
    for bits, cell in best.items():
        r = cell.record
        lines.append(f"| {bits} | {r['recipe']} | {r['formats']} | {cell.text()} | "
                     f"{len(cell.accs)}/{len(cell.points)} |")
    return lines


def _problems(points: Iterable[Point]) -> list[str]:
    bad = [p for p in points if p.status in PROBLEMS]
    open_ = [p for p in points if p.status not in (*PROBLEMS, "done")]
    lines = [f"- `{p.record['folder']}`: {p.status} — {_reason(p)}" for p in bad]
    if open_:
        lines.append(f"- not finished ({len(open_)}; rerun the sweep to finish them): "
                     + ", ".join(f"`{p.record['folder']}` ({p.status})" for p in open_))
    return lines or ["None: every run finished."]


def _reason(p: Point) -> str:
    saved = p.run.status if p.run and p.run.status else p.record
    return saved.get("reason") or "no reason recorded"


def _group_lines(key: tuple[str, str, Any], group: Group, folder: Path, suffix: str
                 ) -> list[str]:
    dataset, model, epochs = key
    where = f"{dataset} / {model}, " + (f"{epochs} epochs" if epochs else "reference epochs")
    lines = [f"### {where}", ""]
    for (family, kind), grid in _splits(group).items():
        title = f"{family} ({kind} split): final test accuracy (%)\n{where}"
        stem = f"sweep-{family}{suffix}"
        varies = [len({k[i] for k in grid}) > 1 for i in (0, 1)]
        if all(varies):
            plot: str | None = _heatmap(grid, kind, title, folder, stem)
        elif any(varies):
            plot = _line(grid, kind, varies.index(True), title, folder, stem)
        else:
            plot = None
        lines += [f"#### {family}: {kind} split", ""]
        lines += [f"![{family} accuracy over the split]({plot})", ""] if plot else []
        lines += [*_grid_table(grid, kind), ""]
    best = _best(group)
    plot = _bits_plot(group, best, f"accuracy vs bits, {where}", folder, f"sweep-bits{suffix}")
    lines += ["#### Best per budget", "",
              "Bits: a split's total width, else the widest format the recipe rounds to.", ""]
    lines += _best_table(best) if best else ["No run finished."]
    lines += ["", f"![accuracy vs bits]({plot})", ""] if plot else [""]
    return lines


def _read_summary(path: Path) -> dict[str, Any]:
    """``sweep.json``, checked to hold what the report reads; :class:`RunError` naming it."""
    summary = read_json(path, dict)
    runs = summary.get("runs")
    keys = ("folder", "status", "dataset", "model", "epochs", "recipe", "seed", "bits",
            "formats", "family", "kind", "params")
    ok = (isinstance(summary.get("name"), str) and "file" in summary and isinstance(runs, list)
          and all(isinstance(r, dict) and all(k in r for k in keys) for r in runs))
    if not ok:
        raise RunError(f"{path}: not a lowprec sweep summary (expected name and runs with "
                       f"{list(keys)}); rerun the sweep to rewrite it, or delete it")
    return summary


def section(folder: str | Path, runs: list[Run]) -> list[str]:
    """The sweep's report section (Markdown lines; plots written into ``folder``), or
    nothing when ``folder`` has no ``sweep.json``."""
    folder = Path(folder)
    if not (folder / SUMMARY).exists():
        return []
    summary = _read_summary(folder / SUMMARY)
    by_folder = {r.path.relative_to(folder).as_posix(): r for r in runs}
    points = [Point(rec, by_folder.get(rec["folder"])) for rec in summary["runs"]]
    counts = Counter(p.status for p in points)
    groups = _groups(points)
    lines = [f"## Sweep `{summary['name']}`", "",
             f"{len(points)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + f"; sweep file `{Path(summary['file']).name if summary['file'] else '(none)'}`"
             f" (its text is in the summary `{SUMMARY}`). "
             "Final test accuracy after the last epoch, mean ± sample std over seeds.", ""]
    for key, group in groups.items():
        suffix = "" if len(groups) == 1 else "-" + "-".join(map(str, key))
        lines += _group_lines(key, group, folder, suffix)
    return lines + ["### Failed, diverged and unfinished runs", "", *_problems(points), ""]
