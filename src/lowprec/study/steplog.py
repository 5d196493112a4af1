"""Per-step records of a training run: ``steps.jsonl``, and TensorBoard event files.

``<run>/steps.jsonl`` holds one JSON object per training step, appended (and flushed) as
the step ends, so ``tail -f`` follows a run:

``step``       the global step, 1-based: optimizer steps taken, over all epochs
``epoch``      the epoch, 1-based
``loss``       the batch's mean cross-entropy (over all ranks of a data-parallel run)
``lr``         the base learning rate the step used
``seconds``    the step's wall time (loading its batch included)
``telemetry``  only on steps whose training pass was recorded (every
               ``telemetry_every``-th): per ``"<layer>.<class>"`` key of
               :func:`lowprec.telemetry` rounded in the step, the ``underflow``,
               ``overflow`` and ``sqnr_db`` of the step's roundings, pooled exactly (a key
               rounded several times, such as ``<layer>.update``: the weight's and the
               bias's, is the ratio of the step's summed counts and energies: the
               difference of the summaries before and after the step)

Resuming: the lines of a run with ``n`` finished (checkpointed) epochs are those of epochs
``1..n``; lines are fsynced at each epoch's end, before its checkpoint is written, and
:class:`StepLog` cuts the file back to epoch ``n`` (dropping a cut-off last line too) when
it opens a run. A run interrupted and resumed thus ends with the same file as an
uninterrupted one, apart from ``seconds``.

With ``tensorboard=True`` the same scalars go to TensorBoard event files in
``<run>/tensorboard/`` (``tensorboard --logdir runs/``; ``pip install 'lowprec[tensorboard]'``),
at the global step: ``train/loss`` and ``train/lr`` per step,
``telemetry/<layer>.<class>/underflow|overflow|sqnr_db`` per recorded step, and per epoch,
at its last step, ``train/accuracy``, ``test/accuracy``, ``test/loss`` and the epoch's
pooled ``epoch_telemetry/<key>/underflow|overflow|sqnr_db`` of every key (non-finite values,
e.g. the ``+inf`` SQNR of an exact rounding, are left out: TensorBoard cannot plot them).
A resumed run's writer purges the events after the checkpointed step, so TensorBoard shows
no interrupted epoch twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any

from torch import nn

from ..numerics.telemetry import SUMS, QuantInfo
from ..train import prepare as training

__all__ = ["STEPS", "TENSORBOARD", "StepLog", "TensorBoardMissing", "read_steps",
           "require_tensorboard"]

STEPS, TENSORBOARD = "steps.jsonl", "tensorboard"
#: the telemetry statistics kept per step
STEP_STATS = ("underflow", "overflow", "sqnr_db")


class TensorBoardMissing(RuntimeError):
    """TensorBoard logging was asked for but the ``tensorboard`` package is not installed."""


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; :class:`TensorBoardMissing` if it cannot
    be imported (it needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TensorBoardMissing(
            f"--tensorboard needs the tensorboard package ({exc}); install it with "
            "pip install 'lowprec[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def read_steps(folder: Path) -> list[dict[str, Any]]:
    """The per-step records of a run folder (empty if none yet)."""
    path = folder / STEPS
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _cut(path: Path, epochs: int) -> None:
    """Truncate ``path`` after the last complete line of an epoch ``<= epochs``."""
    if not path.exists():
        return
    keep = 0
    with open(path, "rb") as fh:
        for line in fh:
            try:
                complete = line.endswith(b"\n") and json.loads(line)["epoch"] <= epochs
            except (ValueError, KeyError, TypeError):
                complete = False
            if not complete:
                break
            keep += len(line)
    if keep < path.stat().st_size:
        os.truncate(path, keep)


class StepLog:
    """Writes a run's ``steps.jsonl`` (and TensorBoard events) as it trains.

    ``done_epochs``: the epochs the run has already finished (its checkpoint's); the file is
    cut back to them. ``steps_per_epoch`` places the per-epoch scalars at each epoch's last
    global step. With ``write=False`` (ranks other than 0) it does nothing.
    """

    def __init__(self, folder: Path, model: nn.Module, steps_per_epoch: int, done_epochs: int,
                 *, tensorboard: bool = False, write: bool = True) -> None:
        self.model, self.steps_per_epoch, self.write = model, steps_per_epoch, write
        self._seen: dict[str, dict[str, float]] = {}
        self._file: IO[str] | None = None
        self._tb: Any = None
        if not write:
            return
        writer = require_tensorboard() if tensorboard else None
        _cut(folder / STEPS, done_epochs)
        self._file = open(folder / STEPS, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        if writer is not None:
            first = done_epochs * steps_per_epoch + 1
            self._tb = writer(str(folder / TENSORBOARD), purge_step=first if done_epochs else None)

    def _telemetry(self) -> dict[str, dict[str, float]]:
        """The figures of the tensors rounded, with telemetry, since the last call."""
        stats = training.telemetry(self.model)
        out = {}
        for key, now in stats.items():
            before = self._seen.get(key)
            if before is not None and before["calls"] == now["calls"]:
                continue
            info = QuantInfo.of_sums({k: now[k] - (before[k] if before else 0.0) for k in SUMS})
            out[key] = {s: float(getattr(info, s)) for s in STEP_STATS}
        self._seen = stats
        return out

    def step(self, epoch: int, step: int, loss: float, lr: float, seconds: float) -> None:
        """Record 0-based global ``step`` of 0-based ``epoch``, after its optimizer step."""
        if not self.write:
            return
        assert self._file is not None
        record: dict[str, Any] = {"step": step + 1, "epoch": epoch + 1, "loss": loss, "lr": lr,
                                  "seconds": seconds}
        telemetry = self._telemetry()
        if telemetry:
            record["telemetry"] = telemetry
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step + 1)
            self._tb.add_scalar("train/lr", lr, step + 1)
            self._scalars("telemetry", telemetry, step + 1)

    def _scalars(self, prefix: str, telemetry: dict[str, dict[str, float]], step: int) -> None:
        for key, stats in telemetry.items():
            for name in STEP_STATS:
                if math.isfinite(stats[name]):
                    self._tb.add_scalar(f"{prefix}/{key}/{name}", stats[name], step)

    def epoch(self, record: dict[str, Any]) -> None:
        """An epoch ended (``record``: its ``metrics.jsonl`` line): make its steps durable
        (call before writing its checkpoint) and log its test scalars. Forgets the
        telemetry seen so far, as :func:`~lowprec.study.runs.epoch_telemetry` resets it."""
        self._seen = {}
        if not self.write:
            return
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            step = record["epoch"] * self.steps_per_epoch
            self._tb.add_scalar("train/accuracy", record["train_acc"], step)
            self._tb.add_scalar("test/accuracy", record["test_acc"], step)
            self._tb.add_scalar("test/loss", record["test_loss"], step)
            self._scalars("epoch_telemetry", record["telemetry"], step)
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
