"""Saved runs as the reports read them: one :class:`Run` per run folder, shared by the
study report (:mod:`.report`) and the sweep report (:mod:`.sweep_report`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..train.files import atomic_write
from .rundir import CONFIG, finished_status, read_config, read_metrics

__all__ = ["Run", "load_runs", "mean_std", "save_figure"]


@dataclass
class Run:
    """One run folder as saved: its config, per-epoch metrics and final status."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    status: dict[str, Any] | None

    @property
    def state(self) -> str:
        """``"done"``, ``"diverged"`` or ``"incomplete"`` (no ``status.json`` yet)."""
        return self.status["status"] if self.status else "incomplete"

    @property
    def recipe(self) -> str:
        return self.config["recipe_name"]

    @property
    def final_acc(self) -> float | None:
        """Test accuracy after the last epoch of a finished run (None: diverged/incomplete)."""
        return self.metrics[-1]["test_acc"] if self.state == "done" and self.metrics else None

    @property
    def best_acc(self) -> float | None:
        """Best test accuracy over the epochs of a finished run."""
        done = self.state == "done" and self.metrics
        return max(m["test_acc"] for m in self.metrics) if done else None


    @property
    def collapsed(self) -> bool:
        """A finished run whose final accuracy is at chance level (``status.json``)."""
        return bool(self.status and self.status.get("collapsed"))


def load_runs(folder: str | Path) -> list[Run]:
    """Every run folder (one holding ``config.json``) below ``folder``, sorted by path; a
    damaged file raises :class:`~.rundir.RunError` naming it."""
    runs = []
    for cfg in sorted(Path(folder).rglob(CONFIG)):
        config = read_config(cfg.parent)
        epochs = config["epochs"]
        status = finished_status(cfg.parent, epochs)
        runs.append(Run(cfg.parent, config, read_metrics(cfg.parent, epochs), status))
    return runs


def mean_std(values: Sequence[float]) -> str:
    """``"76.00%"``, or ``"76.00 ± 1.00%"`` (mean ± sample std) for several; ``"—"`` for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}%"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}%"


def save_figure(fig: Figure, folder: Path, stem: str) -> str:
    """Write ``stem``.png and ``stem``.svg atomically; returns the PNG's name."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    for ext in ("png", "svg"):
        atomic_write(folder / f"{stem}.{ext}", lambda fh, e=ext: fig.savefig(fh, format=e, dpi=120))
    return f"{stem}.png"
