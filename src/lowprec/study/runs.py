"""Training runs: one (data set, model, recipe, seed) per folder, resumable and atomic.

:func:`train_run` trains into ``<out>/<dataset>-<model>-<recipe>-s<seed>/``:

===================  ===================================================================
``config.json``      the resolved configuration (written once, when the run starts):
                     data set and provenance, model, seed, epochs, batch size, solver,
                     the recipe as a dict and as TOML text, versions and the machine
``metrics.jsonl``    one JSON object per finished epoch: ``epoch``, ``loss``,
                     ``train_acc``, ``test_loss``, ``test_acc``, ``lr``, ``seconds``,
                     ``telemetry`` (per ``"<layer>.<class>"``, layers in forward order:
                     underflow, overflow, nonfinite, sqnr_db, amax pooled over the
                     epoch's recorded training passes)
``steps.jsonl``      one JSON object per training step: ``step``, ``epoch``, ``loss``,
                     ``lr``, ``seconds``, and ``telemetry`` on recorded steps
                     (:mod:`lowprec.study.steplog`); ``tensorboard/``: the same as
                     TensorBoard events, with ``tensorboard=True``
``checkpoint.pt``    the state after the last finished epoch: model, optimizer, RNG
                     states (torch, data order, stochastic rounding), epoch, metrics,
                     behind a header with its SHA-256 and the digest of the run's
                     configuration (``docs/checkpoint-format.md``)
``status.json``      written last: ``{"status": "done", ...}`` (``"collapsed": true``
                     and a ``reason`` when the final test accuracy is at chance level) or
                     ``{"status": "diverged", "reason": ...}``
===================  ===================================================================

Every file is replaced atomically (written to a temporary file in the same folder,
then ``os.replace``), so an interruption leaves either the old or the new version.
Calling :func:`train_run` again skips a run with a ``status.json`` and resumes one
with a checkpoint from the epoch after it, restoring every random state, so that it
ends with the same weights and metrics as an uninterrupted run. The configuration must
match (a different one raises :class:`RunError`; ``restart=True`` starts over). Every
file read is checked (:mod:`.rundir`): a damaged, foreign or inconsistent one raises
:class:`RunError` naming it. A process writing a run folder holds its lock
(``.lock``). Accuracies are fractions in [0, 1] and losses cross-entropies (nats), per
prediction: per image, or per character for the language models (``--dataset text``,
:mod:`lowprec.study.text`; perplexity ``exp(test_loss)``).
JSON files write non-finite floats as ``NaN``/``Infinity`` (Python's ``json``).

Inside a torch.distributed process group (``torchrun ... lowprec train --ddp``) the run is
data-parallel: each rank trains on its shard of every global batch, and only rank 0 prints
and writes the folder (:mod:`lowprec.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import socket
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..train import prepare as training
from ..train.distributed import World, current
from ..train.files import atomic_write, remove_temporary_files
from ..train.recipe import TENSOR_CLASSES, Recipe
from .data import Dataset
from .models import SolverConfig, build_for_data, check_inputs, default_solver
from .progress import bar as progress_bar
from .rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    STATUS,
    RunError,
    check_or_write_config,
    clear,
    collapse_note,
    finished_status,
    identity,
    identity_digest,
    inside,
    load_checkpoint,
    locked,
    read_json,
    read_metrics,
    save_checkpoint,
    validate_spec,
    write_json,
    write_text,
)
from .steplog import StepLog
from .text import TextDataset, load_text

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "STATUS",
    "RunError",
    "RunResult",
    "RunSpec",
    "atomic_write",
    "environment",
    "first_bad",
    "load_data",
    "read_json",
    "read_metrics",
    "solver_for",
    "train_run",
    "write_json",
    "write_text",
]

#: a data set: images (:class:`Dataset`) or token windows (:class:`TextDataset`)
Data = Dataset | TextDataset


# -- atomic files ---------------------------------------------------------------------------



# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What to train. ``None`` fields take the model's reference solver (:func:`solver_for`);
    ``epochs=None`` is the solver's reference run length, rounded to whole epochs."""

    dataset: str
    model: str
    recipe: Recipe
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "cpu"
    telemetry_every: int = 10

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def name(self) -> str:
        """The run folder's name: ``<dataset>-<model>-<recipe>-s<seed>``."""
        return f"{self.dataset}-{self.model}-{self.recipe.name or 'custom'}-s{self.seed}"



def solver_for(spec: RunSpec) -> SolverConfig:
    """The model's reference solver with the spec's batch size and learning rate."""
    solver = default_solver(spec.model)
    changes = {"batch_size": spec.batch_size, "lr": spec.lr}
    return solver.replace(**{k: v for k, v in changes.items() if v is not None})


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """Versions and machine: lowprec, torch, Python, host, CPU, device."""
    dev = torch.device(device)
    return {
        "lowprec": version("lowprec"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }


def _epochs(spec: RunSpec, solver: SolverConfig, dataset: Data) -> int:
    if spec.epochs is not None:
        return spec.epochs
    return max(1, round(solver.epochs(len(dataset))))


def resolve_config(spec: RunSpec, dataset: Data, world_size: int | None = None
                   ) -> dict[str, Any]:
    """The run's full configuration as written to ``config.json``; ``world_size``: the ranks
    of a data-parallel run (``None``: one process, not recorded)."""
    solver = solver_for(spec)
    parallel = {} if world_size is None else {"world_size": world_size}
    return {
        "name": spec.name,
        "dataset": spec.dataset,
        "model": spec.model,
        "recipe_name": spec.recipe.name,
        "seed": spec.seed,
        "epochs": _epochs(spec, solver, dataset),
        "batch_size": solver.batch_size,
        "telemetry_every": spec.telemetry_every,
        "solver": dataclasses.asdict(solver),
        "recipe": spec.recipe.to_dict(),
        "recipe_toml": spec.recipe.to_toml(),
        **parallel,
        "data": {
            "name": dataset.name,
            "provenance": dataset.provenance,
            "num_classes": dataset.num_classes,
            "input_shape": list(dataset.input_shape),
            "train_size": len(dataset),
            "test_size": int(dataset.test_y.shape[0]),
            "normalize": dataset.normalize,
        },
        "environment": environment(spec.device),
    }


# -- telemetry and divergence ---------------------------------------------------------------


#: when each tensor class is rounded in a training step: 0 forward, 1 backward, 2 step
_PHASE = {"weight": 0, "activation": 0, "error": 1, "weight_grad": 2, "update": 2}


def _parse(key: str) -> tuple[str, str, str]:
    """``"<layer>.<class>"`` or ``"<layer>.update.<state>"`` -> (layer, class, state)."""
    layer, _, cls = key.rpartition(".")
    if cls in _PHASE:
        return layer, cls, ""
    layer, _, owner = layer.rpartition(".")
    return layer, owner, cls


def _execution_key(order: dict[str, int], key: str) -> tuple[int, int, int, str]:
    """Sort key in the order a training step rounds tensors: weights and activations layer
    by layer, then errors from the last layer back, then weight gradients and updates."""
    layer, cls, state = _parse(key)
    if cls not in _PHASE or layer not in order:
        return 3, 0, 0, key
    pos = -order[layer] if cls == "error" else order[layer]
    return _PHASE[cls], pos, TENSOR_CLASSES.index(cls), state


def epoch_telemetry(model: nn.Module) -> dict[str, dict[str, float]]:
    """The pooled telemetry of the passes recorded since the last call (which it forgets),
    by layer in forward (module) order, then by tensor class."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    def module_key(key: str) -> tuple[int, int, str]:
        layer, cls, state = _parse(key)
        known = layer in order and cls in _PHASE
        return (order[layer], TENSOR_CLASSES.index(cls), state) if known else (len(order), 0, key)

    stats = training.telemetry(model, reset=True)
    keep = ("underflow", "overflow", "nonfinite", "sqnr_db", "amax")
    return {k: {s: stats[k][s] for s in keep} for k in sorted(stats, key=module_key)}


def first_bad(telemetry: dict[str, dict[str, float]]) -> str | None:
    """The first tensor, in execution order (layers ordered as in ``telemetry``), with
    non-finite values or a NaN SQNR, else the first that overflowed; ``None`` if all clean."""
    layers = dict.fromkeys(_parse(k)[0] for k in telemetry)
    order = {layer: i for i, layer in enumerate(layers)}
    keys = sorted(telemetry, key=lambda k: _execution_key(order, k))
    for key in keys:
        s = telemetry[key]
        if s["nonfinite"] > 0 or math.isnan(s["sqnr_db"]):
            return f"{key} (non-finite: {s['nonfinite']:.1%} of values, SQNR {s['sqnr_db']} dB)"
    for key in keys:
        s = telemetry[key]
        if s["overflow"] > 0:
            return f"{key} (overflow: {s['overflow']:.1%} of values, amax {s['amax']:.3g})"
    return None


def _loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over every prediction: ``out`` [..., classes], ``y`` [...] (an image's
    class, or each position's next token); for [B, C] scores it is the plain call."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)


def _diagnose(spec: RunSpec, dataset: Data, state: dict[str, torch.Tensor],
              x: torch.Tensor, y: torch.Tensor) -> str:
    """Name the first tensor that went bad: a non-finite parameter, else replay the diverging
    batch on a copy of the model with telemetry on every pass (:func:`first_bad`)."""
    model = _build(spec, dataset)
    model.load_state_dict(state)
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"first non-finite parameter: {name}"
    training.prepare(model, spec.recipe, seed=spec.seed, telemetry_every=1)
    _loss(model(x), y).backward()
    culprit = first_bad(epoch_telemetry(model))
    if culprit:
        return f"first bad telemetry: {culprit}"
    name, p = max(model.named_parameters(), key=lambda np_: float(np_[1].detach().abs().max()))
    return (f"no quantized tensor flagged; parameters are finite (largest |w| "
            f"{float(p.detach().abs().max()):.3g} in {name}): the learning rate is likely too high")


class _Diverged(Exception):
    """The loss became NaN/inf; the message says where and which tensor went bad first."""


# -- the training loop ----------------------------------------------------------------------


@dataclass
class RunResult:
    """How a call of :func:`train_run` ended: ``status`` is ``"done"``, ``"diverged"`` or
    ``"paused"`` (stopped early by ``max_epochs``); ``skipped`` if it had already ended."""

    folder: Path
    status: str
    reason: str | None
    metrics: list[dict[str, Any]]
    skipped: bool = False


def _build(spec: RunSpec, dataset: Data) -> nn.Module:
    torch.manual_seed(spec.seed)
    return build_for_data(spec.model, dataset.num_classes, dataset.input_shape).to(spec.device)


@dataclass
class _Session:
    """The live objects of one run: model (and ``net``, what trains it: the model or its
    DDP wrapper), optimizer, data generator, solver, sizes and the ranks."""

    spec: RunSpec
    dataset: Data
    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    data_gen: torch.Generator
    solver: SolverConfig
    base_lrs: list[float]
    steps: int
    total: int
    world: World

    @classmethod
    def start(cls, spec: RunSpec, dataset: Data, epochs: int, world: World) -> _Session:
        solver = solver_for(spec)
        model = training.prepare(_build(spec, dataset), spec.recipe, seed=spec.seed,
                                 telemetry_every=spec.telemetry_every,
                                 rank=world.rank if world.parallel else None)
        net = world.wrap(model, spec.recipe.grad_comm, spec.seed)
        opt = training.wrap_optimizer(solver.make_optimizer(model), spec.recipe)
        steps = len(dataset.loader("train", solver.batch_size))
        return cls(spec, dataset, model, net, opt, torch.Generator().manual_seed(spec.seed),
                   solver, [g["lr"] for g in opt.param_groups], steps, steps * epochs, world)

    def state_dict(self) -> dict[str, Any]:
        rounding = training.rounding_state(self.model)
        rng = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state(),
               "sr": rounding["generator"], "passes": rounding["passes"]}
        if torch.device(self.spec.device).type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.spec.device)
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        return {"model": self.model.state_dict(), "params": params,
                "optimizer": self.opt.state_dict(), "rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` so that training continues bit for bit.

        Loading bumps the parameters' version counters, so the prepared layers would
        re-round them (drawing stochastic-rounding seeds) at the next forward. That is done
        now, in a throw-away eval pass; then the exact saved values (with master weights:
        the rounded working copies) are put back through ``.data``, which the version
        counter does not see, and only then are the random states restored.
        """
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.model.eval()
        with torch.no_grad():
            self.model(next(iter(self.dataset.loader("test", 1, device=self.spec.device)))[0])
            for name, p in self.model.named_parameters():
                p.data.copy_(state["params"][name])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.data_gen.set_state(rng["data"])
        training.load_rounding_state(self.model, {"generator": rng["sr"], "passes": rng["passes"]})
        if "cuda" in rng and torch.device(self.spec.device).type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.spec.device)

    def train_epoch(self, epoch: int, quiet: bool, log: StepLog) -> dict[str, Any]:
        """One epoch of SGD, each step recorded in ``log``; raises :class:`_Diverged` at the
        first non-finite loss.

        Each rank trains on its shard of a global batch, its mean loss scaled by
        ``W n_r / B`` (:mod:`lowprec.distributed`; 1 for one process)."""
        self.model.train()
        loader = self.dataset.loader("train", self.solver.batch_size, augment=self.solver.augment,
                                     generator=self.data_gen, device=self.spec.device)
        loss_sum, correct, seen, it = 0.0, 0, 0, epoch * self.steps
        batches = progress_bar(loader, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                               quiet=quiet)
        tick = time.perf_counter()
        for step, (x, y) in enumerate(batches):
            it = epoch * self.steps + step
            factor = self.solver.lr_factor(it, self.total)
            for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
                g["lr"] = base * factor
            xs, ys = self.world.shard(x), self.world.shard(y)
            out = self.net(xs)
            loss = _loss(out, ys)
            total, hits, n = self.world.sum([loss.item() * ys.numel(),
                                             int((out.argmax(-1) == ys).sum()), ys.numel()])
            value = total / n
            if not math.isfinite(value):  # the weights are still those of this forward
                why = _diagnose(self.spec, self.dataset, self.model.state_dict(), x, y)
                raise _Diverged(f"loss became {value} at epoch {epoch + 1}, step {step + 1}; {why}")
            self.opt.zero_grad(set_to_none=True)
            (loss * (self.world.size * ys.numel() / n)).backward()
            self.opt.step()
            loss_sum += total
            correct += int(hits)
            seen += int(n)
            log.step(epoch, it, value, self.solver.lr_at(it, self.total),
                     time.perf_counter() - tick)
            tick = time.perf_counter()
            batches.set_postfix(loss=f"{value:.4f}", refresh=False)
        return {"loss": loss_sum / seen, "train_acc": correct / seen,
                "lr": self.solver.lr_at(it, self.total)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test loss and accuracy per prediction (eval mode: quantized, no telemetry
        recorded), each rank on its shard of every batch, summed over the ranks."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        for x, y in self.dataset.loader("test", self.solver.batch_size, device=self.spec.device):
            x, y = self.world.shard(x), self.world.shard(y)
            out = self.model(x)
            loss_sum += float(_loss(out, y, reduction="sum"))
            correct += int((out.argmax(-1) == y).sum())
        loss_sum, correct = self.world.sum([loss_sum, correct])
        n = int(self.dataset.test_y.numel())
        return {"test_loss": loss_sum / n, "test_acc": correct / n}


# -- one run --------------------------------------------------------------------------------


def _write_metrics(folder: Path, history: list[dict[str, Any]]) -> None:
    write_text(folder / METRICS, "".join(json.dumps(r) + "\n" for r in history))


def worst_error_underflow(telemetry: dict[str, dict[str, float]]) -> tuple[str, float] | None:
    """The layer whose errors underflowed most, and that fraction (None: no error telemetry)."""
    errors = {k.removesuffix(".error"): s["underflow"] for k, s in telemetry.items()
              if k.endswith(".error")}
    if not errors:
        return None
    layer = max(errors, key=errors.__getitem__)
    return layer, errors[layer]


def summary_line(name: str, record: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss, accuracies, time and the worst error underflow."""
    worst = worst_error_underflow(record["telemetry"])
    uf = "n/a" if worst is None else f"{worst[1]:.1%} ({worst[0]})"
    return (f"{name} epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, "
            f"train {record['train_acc']:.2%}, test {record['test_acc']:.2%}, "
            f"{record['seconds']:.1f} s, worst error underflow {uf}")


def _resume(session: _Session, folder: Path, identity: str, epochs: int
            ) -> list[dict[str, Any]]:
    """Load the checkpoint (verified, :func:`~.rundir.load_checkpoint`) into ``session``;
    returns its metrics."""
    path = folder / CHECKPOINT
    state = load_checkpoint(path, identity, epochs)
    try:
        session.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise RunError(f"{path}: does not fit this run's model or optimizer "
                       f"({type(exc).__name__}: {str(exc)[:300]}); rerun with --restart") from None
    return state["metrics"]


def train_run(spec: RunSpec, out: str | os.PathLike[str], dataset: Data, *,
              quiet: bool = False, max_epochs: int | None = None,
              restart: bool = False, tensorboard: bool = False) -> RunResult:
    """Train ``spec`` into ``out/<spec.name>/``, resuming or skipping as the folder says.

    ``dataset`` must be normalised as the model's solver asks (:func:`load_data`).
    ``max_epochs`` stops this call after that many new epochs (status ``"paused"``).
    ``restart`` removes the run's files first and trains from the first epoch.
    Everything that can be checked is checked before anything is written; the folder is
    locked (:func:`~.rundir.locked`) while this writes it, and stale temporary files of a
    killed writer are removed. In a process group every rank calls it; only rank 0 writes
    files and prints. ``tensorboard`` also writes the per-step and per-epoch scalars as
    TensorBoard events (:mod:`lowprec.study.steplog`).
    """
    world = current()
    quiet = quiet or not world.main
    check_inputs(spec.model, dataset.input_shape)
    solver = solver_for(spec)
    if dataset.normalize != solver.normalize:
        raise ValueError(f"{spec.model} expects data normalised {solver.normalize!r}, "
                         f"got {dataset.normalize!r}")
    if not world.size <= solver.batch_size <= len(dataset):
        raise ValueError(f"batch size {solver.batch_size} must be between the world size "
                         f"{world.size} and the {len(dataset)} training images of "
                         f"{dataset.name}; choose another --batch-size")
    folder = inside(out, spec.name)
    config = resolve_config(spec, dataset, world.size if world.parallel else None)
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder) if world.main else contextlib.nullcontext():
        if world.main:
            remove_temporary_files(folder)
            if restart:
                clear(folder)
        return _train(spec, folder, dataset, config, world, quiet, max_epochs, restart,
                      tensorboard)


def _train(spec: RunSpec, folder: Path, dataset: Data, config: dict[str, Any], world: World,
           quiet: bool, max_epochs: int | None, fresh: bool, tensorboard: bool) -> RunResult:
    """:func:`train_run` in its checked, locked folder (``fresh``: ignore its files)."""
    check_or_write_config(folder, config, write=world.main)
    epochs = config["epochs"]
    status = None if fresh else finished_status(folder, epochs)
    if status is not None:
        return RunResult(folder, status["status"], status["reason"],
                         read_metrics(folder, epochs), True)
    digest = identity_digest(identity(config))
    session = _Session.start(spec, dataset, epochs, world)
    history: list[dict[str, Any]] = []
    if not fresh and (folder / CHECKPOINT).exists():
        history = _resume(session, folder, digest, epochs)
    if world.main:
        _write_metrics(folder, history)  # drops any line written after the checkpoint
    stop = epochs if max_epochs is None else min(epochs, len(history) + max_epochs)
    bar = progress_bar(total=epochs, initial=len(history), desc=spec.name, unit="epoch",
                       leave=False, quiet=quiet)
    log = StepLog(folder, session.model, session.steps, len(history), tensorboard=tensorboard,
                  write=world.main)
    with bar, log:
        for epoch in range(len(history), stop):
            start = time.perf_counter()
            try:
                record = {"epoch": epoch + 1, **session.train_epoch(epoch, quiet, log)}
            except _Diverged as exc:
                if world.main:
                    write_json(folder / STATUS, {"status": "diverged", "reason": str(exc),
                                                 "epochs_completed": len(history)})
                return RunResult(folder, "diverged", str(exc), history)
            record.update(session.evaluate())
            record["seconds"] = time.perf_counter() - start
            record["telemetry"] = epoch_telemetry(session.model)
            history.append(record)
            log.epoch(record)  # its steps are durable before its checkpoint
            if world.main:
                save_checkpoint(folder / CHECKPOINT, {**session.state_dict(), "epoch": epoch + 1,
                                                      "metrics": history}, digest)
                _write_metrics(folder, history)
            bar.update()
            if not quiet:
                tqdm.write(summary_line(spec.name, record, epochs))
    if len(history) < epochs:
        return RunResult(folder, "paused", f"stopped after epoch {len(history)}/{epochs}", history)
    collapsed = collapse_note(history, dataset.num_classes)
    if world.main:
        write_json(folder / STATUS, {
            "status": "done", "reason": collapsed, "collapsed": collapsed is not None,
            "epochs_completed": epochs, "final_test_acc": history[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in history),
        })
    return RunResult(folder, "done", collapsed, history)


def load_data(dataset: str, model: str, data_dir: str | os.PathLike[str] | None = None
              ) -> Data:
    """Load ``dataset`` normalised as ``model``'s reference solver expects (``"text"``:
    :func:`lowprec.study.text.load_text`, token windows, not normalised)."""
    from .data import load_dataset

    if dataset.strip().lower() == "text":
        return load_text(data_dir)

    return load_dataset(dataset, data_dir, normalize=default_solver(model).normalize)
