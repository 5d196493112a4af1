"""The study report: ``report.md`` and its plots, rebuilt from saved run folders alone.

:func:`write_report` reads every run folder below a directory (``config.json``,
``metrics.jsonl``, ``status.json``, see :mod:`lowprec.experiment`), groups the runs by
(data set, model) — and by number of epochs where those runs differ in it — and recipe,
and writes ``report.md`` with PNG and SVG plots next to it: a table of final/best test
accuracy per recipe (mean ± sample std over seeds), the gap to fp32, accuracy and loss
curves, per-layer error underflow/overflow rates from the telemetry, the modelled cost if
:mod:`lowprec.cost` exists, the data provenance, the machine, and a verdict on each of
the study's claims computed from the numbers. A folder holding a sweep (``sweep.json``)
also gets :mod:`lowprec.sweep_report`'s section first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..cost.tables import report_section
from ..train.recipes import STUDY as STUDY_RECIPES
from . import sweep_report
from .models import build_model
from .results import Run, load_runs, mean_std, save_figure
from .runs import CONFIG, write_text
from .solvers import SolverConfig

__all__ = ["CLOSE_PTS", "INADEQUATE_PTS", "claims", "write_report"]

#: a recipe within this many accuracy points of fp32 is "close to fp32" / "loses little"
CLOSE_PTS = 2.0
#: a recipe this many points or more below fp32 (or diverged) is "not adequate"
INADEQUATE_PTS = 5.0


# -- numbers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Accuracy of one recipe over its seeds (percent; ``None`` where no seed finished)."""

    recipe: str
    runs: list[Run]

    def _values(self, get: Callable[[Run], float | None]) -> list[float]:
        return [100.0 * v for r in self.runs if (v := get(r)) is not None]

    @property
    def final(self) -> list[float]:
        return self._values(lambda r: r.final_acc)

    @property
    def best(self) -> list[float]:
        return self._values(lambda r: r.best_acc)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.final) if self.final else None

    @property
    def std(self) -> float:
        """Sample std of the final accuracy over finished seeds (0 with fewer than two)."""
        return statistics.stdev(self.final) if len(self.final) > 1 else 0.0

    @property
    def diverged(self) -> int:
        return sum(r.state == "diverged" for r in self.runs)

    def status(self) -> str:
        """How many seeds finished, diverged or are incomplete."""
        states = ("done", "diverged", "incomplete")
        counts = {s: sum(r.state == s for r in self.runs) for s in states}
        parts = [f"{n}/{len(self.runs)} {s}" for s, n in counts.items() if n]
        collapsed = sum(r.collapsed for r in self.runs)
        parts += [f"{collapsed}/{len(self.runs)} collapsed to chance"] if collapsed else []
        reasons = sorted({r.status["reason"] for r in self.runs if r.state == "diverged"})
        return ", ".join(parts) + "".join(f"<br>{_md_escape(x)}" for x in reasons)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ordered(recipes: Sequence[str]) -> list[str]:
    study = [r for r in STUDY_RECIPES if r in recipes]
    return study + sorted(set(recipes) - set(study))


#: a group of runs: ``(data set, model)``, then the number of epochs when the runs of that
#: data set and model differ in it (:func:`_lengths_differ`), then a solver label
#: (:func:`_solver_label`) when they differ in their solver
GroupKey = tuple[Any, ...]


def _lengths_differ(runs: list[Run]) -> bool:
    """Whether runs of one (data set, model) must be split by number of epochs: finished
    runs differ in it, or a (recipe, seed) was run with several (a sweep over ``epochs``,
    finished or not). An unfinished run alone splits nothing: it adds no accuracy."""
    finished = {r.config["epochs"] for r in runs if r.state != "incomplete"}
    per_seed: dict[tuple[str, int], set[int]] = {}
    for r in runs:
        per_seed.setdefault((r.recipe, r.config["seed"]), set()).add(r.config["epochs"])
    return len(finished) > 1 or any(len(n) > 1 for n in per_seed.values())


#: the defaults of :class:`.solvers.SolverConfig`: a field missing from a run's ``config.json``
#: (written before the field existed) had its default value
_SOLVER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SolverConfig)
                    if f.default is not dataclasses.MISSING}


def _solver_label(run: Run) -> str:
    """``"lr 0.05, batch 100, solver 1a2b3c"``: the learning rate, batch size and a digest of
    the whole solver (runs with different solvers are never compared as seeds), fields a
    run's config lacks taken at their defaults; its ``note`` (prose) is not digested."""
    solver = {**_SOLVER_DEFAULTS, **run.config["solver"]}
    solver.pop("note", None)
    digest = hashlib.sha256(json.dumps(solver, sort_keys=True).encode()).hexdigest()[:6]
    return f"lr {solver.get('lr', '?'):g}, batch {run.config['batch_size']}, solver {digest}"


def _group(runs: list[Run]) -> dict[GroupKey, dict[str, Summary]]:
    """Runs by group and recipe: runs of different lengths or solvers are never pooled."""
    by_model: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_model.setdefault((run.config["dataset"], run.config["model"]), []).append(run)
    split = {key for key, rs in by_model.items() if _lengths_differ(rs)}
    mixed = {key for key, rs in by_model.items() if len({_solver_label(r) for r in rs}) > 1}
    by_key: dict[GroupKey, dict[str, list[Run]]] = {}
    for run in runs:
        base = (run.config["dataset"], run.config["model"])
        key: GroupKey = base
        if base in split:
            key = (*key, run.config["epochs"])
        if base in mixed:
            key = (*key, _solver_label(run))
        by_key.setdefault(key, {}).setdefault(run.recipe, []).append(run)
    return {
        key: {r: Summary(r, sorted(rs[r], key=lambda x: x.config["seed"])) for r in _ordered(rs)}
        for key, rs in sorted(by_key.items())
    }


def _title(key: GroupKey) -> str:
    """``digits / small_cnn / 8 epochs / lr 0.05, ...``."""
    extra = [f"{k} epochs" if isinstance(k, int) else str(k) for k in key[2:]]
    return " / ".join([*map(str, key[:2]), *extra])


# -- the study's claims ---------------------------------------------------------------------

Verdict = tuple[str, str]  # (verdict, the numbers behind it)


def _acc(s: dict[str, Summary], name: str) -> str:
    if name not in s:
        return f"{name} not run"
    if s[name].mean is None:
        return f"{name} diverged" if s[name].diverged else f"{name} unfinished"
    return f"{name} {s[name].mean:.2f}%"


def _noise(s: dict[str, Summary], a: str, b: str) -> float:
    """Seed noise of a difference of two means: the root sum of the two sample stds."""
    return math.hypot(s[a].std, s[b].std)


def _better(s: dict[str, Summary], a: str, b: str) -> bool:
    """``a`` beats ``b`` by more than the seed noise (a finished recipe beats a diverged one)."""
    if s[a].mean is None:
        return False
    return s[b].mean is None or s[a].mean - s[b].mean > _noise(s, a, b)


def _close(s: dict[str, Summary], a: str) -> bool:
    return s[a].mean is not None and s["fp32"].mean - s[a].mean <= CLOSE_PTS + _noise(s, a, "fp32")


def claims(s: dict[str, Summary]) -> list[tuple[str, Verdict]]:
    """The study's four claims with a verdict ("shown", "partly shown", "not shown",
    "not tested") and the numbers it rests on, for one (data set, model) group."""
    texts = [
        "1. 12-bit fixed point with stochastic rounding is not adequate for training",
        "2. 12-bit floating point does better under the same conditions",
        "3. Both improve with local scaling and get close to the fp32 baseline",
        "4. The power-of-two network (7 bits) loses very little accuracy",
    ]
    needs = [("fp32", "fxp12_sr"), ("fxp12_sr", "fp12_sr"),
             ("fp32", "fxp12_sr", "fp12_sr", "fxp12_sr_ls", "fp12_sr_ls"), ("fp32", "pot7")]
    judges: list[Callable[[dict[str, Summary]], Verdict]] = [_claim1, _claim2, _claim3, _claim4]
    out = []
    for text, need, judge in zip(texts, needs, judges, strict=True):
        missing = [r for r in need if r not in s]
        unusable = "fp32" in need and "fp32" in s and s["fp32"].mean is None
        if missing or unusable:
            why = f"missing runs: {', '.join(missing)}" if missing else "fp32 did not finish"
            out.append((text, ("not tested", why)))
        else:
            out.append((text, judge(s)))
    return out


def _claim1(s: dict[str, Summary]) -> Verdict:
    nums = f"{_acc(s, 'fxp12_sr')} vs {_acc(s, 'fp32')}"
    if s["fxp12_sr"].mean is None:
        return ("shown" if s["fxp12_sr"].diverged else "not tested"), nums
    gap = s["fp32"].mean - s["fxp12_sr"].mean
    shown = gap >= INADEQUATE_PTS
    rule = f"gap {gap:.2f} points {'≥' if shown else '<'} {INADEQUATE_PTS:g}"
    return ("shown" if shown else "not shown"), f"{nums} ({rule})"


def _claim2(s: dict[str, Summary]) -> Verdict:
    nums = f"{_acc(s, 'fp12_sr')} vs {_acc(s, 'fxp12_sr')}"
    return ("shown" if _better(s, "fp12_sr", "fxp12_sr") else "not shown"), nums


def _claim3(s: dict[str, Summary]) -> Verdict:
    parts = {
        f"fxp12_sr_ls better than fxp12_sr ({_acc(s, 'fxp12_sr_ls')} vs {_acc(s, 'fxp12_sr')})":
            _better(s, "fxp12_sr_ls", "fxp12_sr"),
        f"fp12_sr_ls better than fp12_sr ({_acc(s, 'fp12_sr_ls')} vs {_acc(s, 'fp12_sr')})":
            _better(s, "fp12_sr_ls", "fp12_sr"),
        f"both within {CLOSE_PTS:g} points of fp32 ({_acc(s, 'fp32')})":
            _close(s, "fxp12_sr_ls") and _close(s, "fp12_sr_ls"),
    }
    held = sum(parts.values())
    verdict = "shown" if held == len(parts) else "not shown" if held == 0 else "partly shown"
    return verdict, "; ".join(f"{'yes' if ok else 'no'}: {p}" for p, ok in parts.items())


def _claim4(s: dict[str, Summary]) -> Verdict:
    nums = f"{_acc(s, 'pot7')} vs {_acc(s, 'fp32')}, limit {CLOSE_PTS:g} points"
    return ("shown" if _close(s, "pot7") else "not shown"), nums


# -- telemetry ------------------------------------------------------------------------------


ERROR_STATS = ("underflow", "overflow", "sqnr_db")


def layer_rates(summary: Summary, cls: str = "error", epoch: int = 1
                ) -> dict[str, dict[str, float]]:
    """Per layer (forward order), the underflow and overflow fractions and the SQNR (dB) of
    tensor class ``cls`` in ``epoch``, averaged over the seeds that recorded it."""
    acc: dict[str, dict[str, list[float]]] = {}
    seen: dict[str, int] = {}  # keys are saved by layer in forward order
    for run in summary.runs:
        telemetry = run.metrics[epoch - 1]["telemetry"] if len(run.metrics) >= epoch else {}
        for i, (key, stats) in enumerate(telemetry.items()):
            layer, _, klass = key.rpartition(".")
            seen.setdefault(layer, i)
            if klass == cls:
                for stat in ERROR_STATS:
                    acc.setdefault(layer, {}).setdefault(stat, []).append(stats[stat])
    return {layer: {k: statistics.fmean(v) for k, v in acc[layer].items()}
            for layer in sorted(acc, key=seen.__getitem__)}


def _error_rates(s: dict[str, Summary]) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`layer_rates` of the errors in the first epoch, for recipes that recorded any."""
    return {r: v for r, sm in s.items() if (v := layer_rates(sm))}


def _telemetry_text(rates: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    if not rates:
        return ["No error telemetry was recorded (errors are fp32 in every recipe here)."]
    layers = list(dict.fromkeys(layer for v in rates.values() for layer in v))
    lines = [
        "An error (gradient w.r.t. a layer's output) below a format's smallest step rounds "
        "to zero; stochastic rounding keeps it only in expectation, as a rare step. Fixed "
        "point has one fixed step (fxp12: 2**-8), so small errors vanish unless a per-tensor "
        "scale moves the step with the tensor's range. SQNR says how much of the error "
        "signal survives the rounding (0 dB: as much noise as signal).",
        "",
        "Errors in the first epoch (before any collapse), per layer in forward order: "
        "underflow (flushed to zero) / overflow (saturated) / SQNR, mean over seeds:",
        "",
        "| layer | " + " | ".join(rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for layer in layers:
        cells = [f"{v[layer]['underflow']:.1%} / {v[layer]['overflow']:.1%} / "
                 f"{v[layer]['sqnr_db']:.1f} dB" if layer in v else "—" for v in rates.values()]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("")
    for plain, scaled in (("fxp12_sr", "fxp12_sr_ls"), ("fp12_sr", "fp12_sr_ls")):
        if plain in rates and scaled in rates:
            uf = {r: statistics.fmean(v["underflow"] for v in rates[r].values())
                  for r in (plain, scaled)}
            sq = {r: min(v["sqnr_db"] for v in rates[r].values()) for r in (plain, scaled)}
            lines.append(
                f"- {plain} flushes {uf[plain]:.1%} of error values to zero (mean over layers; "
                f"worst layer SQNR {sq[plain]:.1f} dB); with local scaling {scaled} flushes "
                f"{uf[scaled]:.1%} (worst SQNR {sq[scaled]:.1f} dB)."
            )
    return lines


# -- plots ----------------------------------------------------------------------------------


def _curve(ax: Axes, summary: Summary, key: str, scale: float) -> None:
    """Mean over seeds of ``key`` per epoch, with a ± std band when several seeds."""
    series = [[scale * m[key] for m in r.metrics] for r in summary.runs if r.metrics]
    if not series:
        return
    n = max(map(len, series))
    epochs = list(range(1, n + 1))
    cols = [[s[i] for s in series if i < len(s)] for i in range(n)]
    mean = [statistics.fmean(c) for c in cols]
    label = summary.recipe + (f" ({summary.diverged} diverged)" if summary.diverged else "")
    (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
    if len(series) > 1:
        std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
        ax.fill_between(epochs, [m - d for m, d in zip(mean, std, strict=True)],
                        [m + d for m, d in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2)


def _curves_plot(s: dict[str, Summary], key: str, ylabel: str, folder: Path, stem: str) -> str:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for summary in s.values():
        _curve(ax, summary, key, 100.0 if key.endswith("acc") else 1.0)
    if key == "loss":
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, folder, stem)


def _telemetry_plot(rates: dict[str, dict[str, dict[str, float]]], folder: Path,
                    stem: str) -> str | None:
    if not rates:
        return None
    layers = list(dict.fromkeys(layer for v in rates.values() for layer in v))
    fig = Figure(figsize=(14, 4.5))
    width = 0.8 / len(rates)
    labels = {"underflow": "underflow (% flushed to zero)", "overflow": "overflow (% saturated)",
              "sqnr_db": "SQNR (dB)"}
    for i, stat in enumerate(ERROR_STATS):
        ax = fig.add_subplot(1, len(ERROR_STATS), i + 1)
        scale = 1.0 if stat == "sqnr_db" else 100.0
        for j, (recipe, v) in enumerate(rates.items()):
            xs = [k + j * width for k in range(len(layers))]
            heights = [scale * v[lay][stat] if lay in v else math.nan for lay in layers]
            ax.bar(xs, [h if math.isfinite(h) else math.nan for h in heights], width,
                   label=recipe)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(layers))], layers, rotation=45,
                      ha="right", fontsize=8)
        ax.set_title(f"errors, epoch 1: {labels[stat]}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, folder, stem)


# -- cost model -----------------------------------------------------------------------------


def _cost_section(model: str, s: dict[str, Summary]) -> list[str]:
    """Modelled memory/energy of the group's recipes (:mod:`lowprec.cost`), on the model
    and input shape the runs trained (recipes as saved in ``config.json``)."""
    cfg = next(iter(s.values())).runs[0].config
    shape = cfg["data"]["input_shape"]
    if len(shape) == 1:
        return ["(not modelled for language models: the cost model feeds images)"]
    net = build_model(model, cfg["data"]["num_classes"], shape[0], shape[1])
    recipes = {r: sm.runs[0].config["recipe"] for r, sm in s.items()}
    return [report_section(net, (cfg["batch_size"], *shape), recipes)]


# -- the report -----------------------------------------------------------------------------


def _machines(runs: list[Run]) -> list[str]:
    seen = []
    for r in runs:
        e = r.config["environment"]
        line = (f"{e['cpu']} ({e['cpu_count']} cores), {e['device']}"
                + (f" ({e['gpu']})" if e.get("gpu") else "")
                + f", torch {e['torch']}, Python {e['python']}, lowprec {e['lowprec']}, "
                  f"host {e['hostname']}")
        if line not in seen:
            seen.append(line)
    return seen


def _table(s: dict[str, Summary]) -> list[str]:
    fp32 = s["fp32"].mean if "fp32" in s else None
    lines = ["| recipe | seeds | final test acc | best test acc | gap to fp32 | status |",
             "|---|---|---|---|---|---|"]
    for r, sm in s.items():
        gap = "—" if fp32 is None or sm.mean is None else f"{sm.mean - fp32:+.2f}"
        seeds = ",".join(str(run.config["seed"]) for run in sm.runs)
        lines.append(f"| {r} | {seeds} | {mean_std(sm.final)} | {mean_std(sm.best)} | {gap} | "
                     f"{sm.status()} |")
    return lines


def _without_paths(provenance: str) -> str:
    """Provenance as a report may print it: runs saved by older versions named the folder
    they read (``read from /some/path``); a report names data by provenance only."""
    return re.sub(r" read from (/|[A-Za-z]:\\)\S*", "", provenance)


def _group_section(key: GroupKey, s: dict[str, Summary], folder: Path,
                   suffix: str) -> list[str]:
    model = key[1]
    runs = [r for sm in s.values() for r in sm.runs]
    cfg = runs[0].config
    provenance = sorted({_without_paths(r.config["data"]["provenance"]) for r in runs})
    epochs = sorted({r.config["epochs"] for r in runs})
    acc = _curves_plot(s, "test_acc", "test accuracy (%)", folder, f"accuracy{suffix}")
    loss = _curves_plot(s, "loss", "training loss", folder, f"loss{suffix}")
    rates = _error_rates(s)
    telem = _telemetry_plot(rates, folder, f"telemetry{suffix}")
    out = [
        f"## {_title(key)}",
        "",
        f"{len(runs)} runs of {'/'.join(map(str, epochs))} epochs, batch {cfg['batch_size']}, "
        f"solver: {_solver_text(cfg['solver'])}.",
        "",
        "Data provenance: " + "; ".join(provenance),
        "",
        "### Test accuracy",
        "",
        "Final = after the last epoch; best = best epoch; mean ± sample std over seeds "
        "that finished; gap = final mean minus fp32's final mean, in points.",
        "",
        *_table(s),
        "",
        "### The study's claims in these runs",
        "",
        f"Rules: \"not adequate\" = diverged or at least {INADEQUATE_PTS:g} points below fp32; "
        f"\"close\"/\"loses little\" = within {CLOSE_PTS:g} points of fp32; \"better\" = a "
        "higher final mean by more than the seed noise (root sum of the two sample stds).",
        "",
        *(f"- **{text}**: {verdict} — {nums}" for text, (verdict, nums) in claims(s)),
        "",
        "### Curves",
        "",
        f"![test accuracy per epoch]({acc})",
        "",
        f"![training loss per epoch]({loss})",
        "",
        "### Why fixed point fails without scaling: error telemetry",
        "",
        *_telemetry_text(rates),
        "",
    ]
    if telem:
        out += [f"![error underflow, overflow and SQNR per layer]({telem})", ""]
    return out + ["### Modelled memory / energy", "", *_cost_section(model, s), ""]


def _solver_text(solver: dict[str, Any]) -> str:
    steps = ", ".join(f"{f:g}" for f in solver["lr_steps"]) or "none"
    name = {"sgd": "SGD", "adamw": "AdamW"}[solver.get("optimizer", "sgd")]
    return (f"{name} lr {solver['lr']:g}, momentum {solver['momentum']:g}, weight decay "
            f"{solver['weight_decay']:g}, lr × {solver['gamma']:g} at run fractions {steps}, "
            f"normalize {solver['normalize']}, augment {solver['augment']}")


def write_report(folder: str | Path) -> Path:
    """Write ``report.md`` and its plots into ``folder`` from the runs below it."""
    folder = Path(folder)
    runs = load_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folders (with {CONFIG}) below {folder}")
    groups = _group(runs)
    lines = [
        "# Low-precision training study: reproduction report",
        "",
        "Study: Ortiz et al., \"Low-Precision Floating-Point Schemes for Neural Network "
        "Training\", arXiv:1804.05267 (2018). Numbers below are measured in these runs, "
        "with emulated (rounded float32) arithmetic.",
        "",
        "Machine: " + "; ".join(_machines(runs)),
        "",
    ]
    lines += sweep_report.section(folder, runs)  # nothing unless folder holds a sweep
    for key, s in groups.items():
        suffix = "" if len(groups) == 1 else "".join(
            f"-epochs{k}" if isinstance(k, int) else "-" + re.sub(r"[^A-Za-z0-9._]+", "-", k)
            for k in key)
        lines += _group_section(key, s, folder, suffix)
    path = folder / "report.md"
    write_text(path, "\n".join(lines))
    return path
