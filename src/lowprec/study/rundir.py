"""Run folders that cannot be fooled: safe names, one writer at a time, validated files,
checkpoints with digests.

* **Names.** A run or sweep name becomes a folder name, so it must match
  :data:`NAME_PATTERN` (letters, digits and ``_ . + -``, starting with a letter or digit,
  no ``..``); :func:`inside` resolves a folder and checks it stays below its root.
* **Locks.** :func:`locked` holds ``fcntl.flock`` on ``<folder>/.lock`` while a process
  writes a run folder; a second process gets a :class:`RunError` at once. The kernel
  drops the lock when its holder dies, however it dies.
* **Files.** :func:`read_json`, :func:`read_status`, :func:`read_metrics` and
  :func:`read_config` raise :class:`RunError` naming the file and what is wrong (never a
  ``KeyError`` or a ``JSONDecodeError``).
* **Configurations.** :func:`validate_spec` checks a run's settings before anything is
  written; :func:`check_or_write_config` keeps ``config.json`` when it is this run's,
  replaces it when nothing was trained yet (a refused first attempt blocks no corrected
  command) and refuses otherwise; :func:`finished_status` checks ``status.json`` against
  the metrics; :func:`collapse_note` flags a finished run at chance level.
* **Checkpoints** (``docs/checkpoint-format.md``): one header line
  ``lowprec-run-checkpoint 1 <sha256 of the payload> <identity digest> <payload bytes>``,
  then the payload, a ``torch.save`` file read with ``weights_only=True``.
  :func:`load_checkpoint` checks the length and the SHA-256 of the payload before
  unpickling anything, and that the identity digest (:func:`identity_digest` of the run's
  ``config.json``) is the run's: a checkpoint of another configuration is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..train.files import atomic_write
from ..train.recipe import Recipe
from .data import DATASETS
from .models import MODELS
from .solvers import SolverConfig

__all__ = [
    "CHECKPOINT_MAGIC",
    "LOCK",
    "NAME_PATTERN",
    "STATUSES",
    "RunError",
    "CHECKPOINT",
    "COLLAPSE_MARGIN",
    "CONFIG",
    "IDENTITY",
    "METRICS",
    "SEEDS",
    "STATUS",
    "check_metrics",
    "check_name",
    "check_or_write_config",
    "clear",
    "collapse_note",
    "finished_status",
    "identity",
    "started",
    "validate_spec",
    "write_json",
    "write_text",
    "finite_positive",
    "identity_digest",
    "inside",
    "load_checkpoint",
    "locked",
    "read_checkpoint",
    "read_config",
    "read_json",
    "read_metrics",
    "read_status",
    "save_checkpoint",
]

CONFIG, METRICS, CHECKPOINT, STATUS = "config.json", "metrics.jsonl", "checkpoint.pt", "status.json"
#: config entries that decide the numbers: a rerun must match them to resume
#: (``world_size`` is absent for one process)
IDENTITY = ("dataset", "model", "recipe", "seed", "epochs", "batch_size", "solver", "world_size")
#: seeds are integers in ``[0, SEEDS)``: torch and numpy take 64 and 32 bits, so a wider
#: seed would silently equal another one
SEEDS = 2**32
#: a finished run whose final test accuracy is at most chance (1 / classes) plus this
#: has collapsed: it learned nothing (a saturating format does not diverge, it stalls)
COLLAPSE_MARGIN = 0.02
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
LOCK = ".lock"
CHECKPOINT_MAGIC = b"lowprec-run-checkpoint"
CHECKPOINT_VERSION = 1
#: what ``status.json`` may say
STATUSES = ("done", "diverged")
#: what every ``metrics.jsonl`` record holds (numbers)
METRIC_KEYS = ("epoch", "loss", "test_acc")
#: what every ``config.json`` holds, and its type
CONFIG_KEYS: dict[str, type] = {"name": str, "dataset": str, "model": str, "seed": int,
                                "epochs": int, "batch_size": int, "solver": dict,
                                "recipe": dict}


class RunError(RuntimeError):
    """A run folder cannot be used as asked (e.g. it holds another configuration, a damaged
    file, or another process is writing it); the message names the file and the way out."""


# -- writing, the configuration and the spec ------------------------------------------------


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2) + "\n")



def _int_in(value: Any, what: str, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value >= high):
        upper = "" if high is None else f" and below {high}"
        raise ValueError(f"{what} must be an integer >= {low}{upper}, got {value!r}")


def validate_spec(spec: Any) -> None:
    """``ValueError`` naming the first bad field of ``spec`` (a :class:`~.runs.RunSpec`,
    which calls this when built): the seed in :data:`SEEDS`,
    positive integer epochs and batch size, a finite positive learning rate, a known data
    set and model, a run name that can name a folder, a CPU or CUDA device."""
    if spec.dataset not in DATASETS:
        raise ValueError(f"unknown data set {spec.dataset!r}; known: {', '.join(DATASETS)}")
    if spec.model not in MODELS:
        raise ValueError(f"unknown model {spec.model!r}; known: {', '.join(MODELS)}")
    _int_in(spec.seed, "seed", 0, SEEDS)
    for key in ("epochs", "batch_size"):
        if getattr(spec, key) is not None:
            _int_in(getattr(spec, key), key, 1)
    if spec.lr is not None:
        finite_positive(spec.lr, "lr")
    _int_in(spec.telemetry_every, "telemetry_every", 0)
    try:
        device = torch.device(spec.device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {spec.device!r}: {exc}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {spec.device!r}: runs train on 'cpu' or 'cuda' devices")
    check_name(spec.recipe.name or "custom", "recipe name")



def identity(config: dict[str, Any], source: str = CONFIG) -> dict[str, Any]:
    """The settings that decide a run's numbers; the recipe and solver as the current schema
    reads them (so a field added later with its default does not make an old run look
    different)."""
    ident = json.loads(json.dumps({k: config.get(k) for k in IDENTITY}))
    try:
        ident["recipe"] = Recipe.from_dict(ident["recipe"], source).to_dict()
    except ValueError as exc:
        raise RunError(f"{exc}; delete the run folder or rerun with --restart") from None
    defaults = {f.name: f.default for f in dataclasses.fields(SolverConfig)
                if f.default is not dataclasses.MISSING}
    if isinstance(ident["solver"], dict) or ident["solver"] is None:
        ident["solver"] = {**json.loads(json.dumps(defaults)), **(ident["solver"] or {})}
    return ident


def started(folder: Path) -> bool:
    """Whether a run folder holds anything trained (a checkpoint, metrics or a status)."""
    metrics = folder / METRICS
    return ((folder / CHECKPOINT).exists() or (folder / STATUS).exists()
            or (metrics.exists() and metrics.stat().st_size > 0))


def check_or_write_config(folder: Path, config: dict[str, Any], write: bool) -> None:
    """Keep ``config.json`` if it is this configuration; replace it if nothing was trained
    yet (a refused or failed first attempt blocks no corrected command); else refuse."""
    path = folder / CONFIG
    if path.exists():
        old, new = identity(read_config(folder), str(path)), identity(config)
        diff = [k for k in IDENTITY if old[k] != new[k]]
        if not diff:
            return
        if started(folder):
            raise RunError(
                f"{folder} holds a run with another configuration (differs in: "
                f"{', '.join(diff)}); use another --out folder, rerun with --restart to "
                "replace it, or delete that run folder")
    if write:
        write_json(path, config)


def clear(folder: Path) -> None:
    """Remove a run's files (``--restart``): nothing stale survives."""
    for name in (STATUS, CHECKPOINT, METRICS, CONFIG):
        (folder / name).unlink(missing_ok=True)


def finished_status(folder: Path, epochs: int) -> dict[str, Any] | None:
    """The run's validated ``status.json`` (``None`` if absent): a finished run's metrics
    must hold every epoch, a diverged one's at most the epochs it completed."""
    status = read_status(folder)
    if status is not None:
        metrics = read_metrics(folder, epochs)
        if status["status"] == "done" and len(metrics) != epochs:
            raise RunError(f"{folder / STATUS} says done but {folder / METRICS} holds "
                           f"{len(metrics)} of {epochs} epochs; rerun with --restart")
    return status


def collapse_note(history: list[dict[str, Any]], num_classes: int) -> str | None:
    """Why a finished run counts as collapsed (final accuracy at chance), else ``None``."""
    chance = 1.0 / num_classes
    final = history[-1]["test_acc"]
    if final > chance + COLLAPSE_MARGIN:
        return None
    return (f"collapsed: final test accuracy {final:.1%} is at chance level ({chance:.1%} for "
            f"{num_classes} classes, + {COLLAPSE_MARGIN:.0%}); the run learned nothing")


# -- names and containment ------------------------------------------------------------------


def check_name(name: Any, what: str) -> str:
    """``name`` if it can name a folder (:data:`NAME_PATTERN`, no ``..``), else
    :class:`RunError` saying which characters are allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise RunError(f"{what} {name!r} cannot name a folder: use letters, digits and "
                       "_ . + - (starting with a letter or digit, no '..', no '/')")
    return name


def inside(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """``root / relative``, resolved, if it lies below ``root``; else :class:`RunError`."""
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if path == base or not path.is_relative_to(base):
        raise RunError(f"{os.fspath(relative)!r} would write outside {base}")
    return path


# -- one writer per folder ------------------------------------------------------------------


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.lock`` (``folder`` must exist); raises
    :class:`RunError` at once if another process holds it."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{folder} is being written by another process (it holds "
                           f"{folder / LOCK}); wait for it to finish or stop it") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- validated files ------------------------------------------------------------------------


def read_json(path: Path, kind: type = object) -> Any:
    """Parse a JSON file whose top level is a ``kind``; :class:`RunError` naming it else."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunError(f"{path}: not readable JSON ({exc}); delete the file or the run "
                       "folder (or rerun with --restart)") from None
    if not isinstance(value, kind):
        raise RunError(f"{path}: expected a JSON {kind.__name__}, got "
                       f"{type(value).__name__}; delete it or rerun with --restart")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a run folder, checked to hold :data:`CONFIG_KEYS`."""
    path = folder / CONFIG
    config = read_json(path, dict)
    bad = [k for k, kind in CONFIG_KEYS.items()
           if not isinstance(config.get(k), kind) or isinstance(config.get(k), bool)]
    if bad or config["epochs"] < 1:
        raise RunError(f"{path}: missing or malformed {bad or ['epochs']}; not a lowprec run "
                       "configuration: delete the run folder or rerun with --restart")
    return config


def read_status(folder: Path) -> dict[str, Any] | None:
    """``status.json`` (``None`` if absent), checked: ``status`` one of :data:`STATUSES`
    and a ``reason``."""
    path = folder / STATUS
    if not path.exists():
        return None
    status = read_json(path, dict)
    if status.get("status") not in STATUSES or "reason" not in status:
        raise RunError(f"{path}: expected {{\"status\": one of {list(STATUSES)}, \"reason\": "
                       f"...}}, got {json.dumps(status)[:200]}; delete it to resume the run")
    return status


def read_metrics(folder: Path, epochs: int | None = None) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (empty if absent), checked: objects with
    the numbers :data:`METRIC_KEYS`, epochs ``1, 2, ...`` in order, at most ``epochs``."""
    path = folder / METRICS
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not readable ({exc})") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise RunError(f"{path}, line {i}: not JSON ({exc})") from None
        records.append(record)
    check_metrics(records, str(path), epochs)
    return records


def check_metrics(records: Any, where: str, epochs: int | None = None) -> None:
    """:class:`RunError` unless ``records`` are epoch records 1..n (n <= ``epochs``)."""
    if not isinstance(records, list):
        raise RunError(f"{where}: metrics must be a list of records")
    for i, r in enumerate(records, 1):
        bad = ([k for k in METRIC_KEYS if not _number(r.get(k))] if isinstance(r, dict)
               else list(METRIC_KEYS))
        if bad:
            raise RunError(f"{where}: record {i} lacks the numbers {bad}")
        if r["epoch"] != i:
            raise RunError(f"{where}: record {i} is for epoch {r['epoch']}; the records must "
                           "be epochs 1, 2, ... in order")
    if epochs is not None and len(records) > epochs:
        raise RunError(f"{where}: {len(records)} epoch records for a run of {epochs} epochs")


# -- checkpoints ----------------------------------------------------------------------------


def identity_digest(identity: dict[str, Any]) -> str:
    """SHA-256 of the run's identity (the settings that decide its numbers) as canonical
    JSON (sorted keys, no spaces)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any], identity: str) -> None:
    """Write ``state`` (``torch.save``) behind its header line, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    head = b" ".join([CHECKPOINT_MAGIC, b"%d" % CHECKPOINT_VERSION, digest.encode(),
                      identity.encode(), b"%d" % len(payload)]) + b"\n"
    atomic_write(path, lambda fh: (fh.write(head), fh.write(payload)))


def _restart(path: Path, why: str) -> RunError:
    return RunError(f"{path}: {why}; rerun with --restart to start the run over (its folder's "
                    "files are replaced), or delete the run folder")


def load_checkpoint(path: Path, identity: str, epochs: int) -> dict[str, Any]:
    """The state :func:`save_checkpoint` wrote, after checking its header, length and
    SHA-256, that it belongs to the run with ``identity``, and its ``epoch``/``metrics``."""
    try:
        with open(path, "rb") as fh:
            head = fh.readline(512)
            payload = fh.read()
    except OSError as exc:
        raise _restart(path, f"cannot read ({exc})") from None
    parts = head.rstrip(b"\n").split(b" ")
    if len(parts) != 5 or parts[0] != CHECKPOINT_MAGIC or not head.endswith(b"\n"):
        raise _restart(path, "not a lowprec run checkpoint (bad or damaged header)")
    if parts[1] != b"%d" % CHECKPOINT_VERSION:
        raise _restart(path, f"checkpoint version {parts[1].decode(errors='replace')!r} is "
                       f"not supported ({CHECKPOINT_VERSION} is)")
    if parts[4] != str(len(payload)).encode():
        raise _restart(path, f"truncated or extended: the header says "
                       f"{parts[4].decode(errors='replace')} payload bytes, the file has "
                       f"{len(payload)}")
    if hashlib.sha256(payload).hexdigest().encode() != parts[2]:
        raise _restart(path, "damaged: its SHA-256 does not match the one in its header")
    if parts[3] != identity.encode():
        raise _restart(path, "written by a run of another configuration than this folder's "
                       "config.json (copied from another folder, or config.json was "
                       "replaced)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # digest right but content unusable (written by other code)
        raise _restart(path, f"unreadable payload ({type(exc).__name__}: {exc})") from None
    keys = ("model", "params", "optimizer", "rng", "epoch", "metrics")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise _restart(path, f"expected a dict with {list(keys)}")
    epoch = state["epoch"]
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        raise _restart(path, f"epoch {epoch!r} is not in 1..{epochs}")
    check_metrics(state["metrics"], str(path), epochs)
    if len(state["metrics"]) != epoch:
        raise _restart(path, f"{len(state['metrics'])} metric records for epoch {epoch}")
    return state


def finite_positive(value: Any, what: str) -> float:
    """``value`` as a float if it is a finite number > 0, else ``ValueError``."""
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """The verified checkpoint of a run folder, checked against its ``config.json``."""
    config = read_config(folder)
    return load_checkpoint(folder / CHECKPOINT, identity_digest(identity(config)),
                           config["epochs"])
