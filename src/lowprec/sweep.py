"""Sweeps: a grid of training runs from one TOML file, run in a process pool or on Ray.

A sweep file is data (parsed, never executed). Every axis takes one value or a list; the
runs are the cartesian product of the axes, one :class:`~lowprec.experiment.RunSpec` each::

    name = "fp-split"                 # optional (default: the file's stem)
    datasets = "digits"               # axis, required: data set names (lowprec.data.DATASETS)
    models = "small_cnn"              # axis, required: model names (lowprec.models.MODELS)
    seeds = [0, 1, 2]                 # axis (default 0)
    epochs = 8                        # axis (default: the solver's reference length)
    batch_size = 64                   # fixed settings, as lowprec train's options (optional)
    lr = 0.05
    telemetry_every = 10
    device = "cpu"

    # the recipe axis: the union of the following (at least one value)
    recipes = ["fp32", "fxp12_sr"]    # preset names (lowprec recipes), or inline tables
    [[recipe]]                        # an inline recipe: the Recipe TOML schema, name required
    name = "fp16_nearest"
    weight = "fp16"
    [[float_split]]                   # one recipe per (exp, man): name "<name>-e<exp>m<man>"
    template = "fp12_sr"              # preset name, or an inline recipe table
    exp = [4, 5, 6]                   # exponent bits
    man = [3, 4, 5]                   # mantissa bits
    bits = [10, 12]                   # optional: keep splits whose 1 + exp + man is listed
    name = "fp_sr"                    # optional (default: the template's name)
    classes = ["weight", "error"]     # optional (default: every class the template quantizes)
    subnormals = true                 # optional (default: as the template's float format)
    specials = "none"                 # optional (default: as the template's float format)
    [[fixed_split]]                   # one recipe per (wl, fl): name "<name>-w<wl>f<fl>"
    template = "fxp12_sr_ls"
    wl = [8, 10, 12]                  # word length, sign included
    fl = [4, 6, 8]                    # fraction bits
    # optional: name, classes

A split gives each of its ``classes`` of the template ``FloatingPoint(exp, man)`` (bias
``2**(exp-1) - 1``; ``subnormals`` and ``specials`` kept from that class's float format)
or ``FixedPoint(wl, fl)``, keeping its rounding and scaling; per-layer overrides are kept
as they are. Axis values must be distinct and recipe names unique (they name the run
folders); an invalid file raises :class:`SweepError` naming the entry and the fix.

Each run is what ``lowprec train`` does with the same settings (:func:`run_one`: load
the data, then :func:`~lowprec.experiment.train_run`) in ``<out>/<run name>/``, or
``<out>/epochs<N>/<run name>/`` when ``epochs`` lists several values. Runs resume and
are skipped when finished, so a sweep stopped midway continues where it stopped when
rerun; results are bit-identical to ``lowprec train`` with the same torch thread count
(recorded in ``config.json``). :func:`run_sweep` keeps ``<out>/sweep.json`` (written
atomically after every finished run): the sweep's name, file and text, and per run its
folder, axis values, ``bits`` (a split's width, else the widest format the recipe
stores; 32 for fp32) and ``status``: ``pending``, ``done``, ``diverged``, ``paused``
(stopped by ``max_epochs``) or ``failed`` (an exception; its ``reason`` and
``traceback``). A failed or diverged run does not stop the others.

Backends: ``"local"``, a pool of ``workers`` spawned processes, each with
``cores // workers`` torch threads; ``"ray"``, one Ray task per run (:class:`RayOptions`;
``pip install 'lowprec[ray]'``). Ctrl-C cancels the pending runs and stops the running
ones (local workers are terminated, Ray tasks cancelled); files are replaced atomically,
so those resume from their last finished epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import itertools
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import formats, recipes
from .data import DATASETS, Dataset
from .experiment import (
    CHECKPOINT,
    CONFIG,
    STATUS,
    RunSpec,
    atomic_write,
    load_data,
    read_json,
    train_run,
    write_json,
)
from .formats import FixedPoint, FloatingPoint, Format
from .models import MODELS
from .recipe import QuantSpec, Recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "SUMMARY",
    "Outcome",
    "RayOptions",
    "Sweep",
    "SweepError",
    "SweepRun",
    "Task",
    "Variant",
    "default_workers",
    "run_one",
    "run_sweep",
]

#: the sweep summary in the output folder
SUMMARY = "sweep.json"
#: what ``run_sweep`` reports as a problem (exit status 1 on the command line)
PROBLEMS = ("diverged", "failed")

_AXES = ("datasets", "models", "seeds", "epochs")
_SETTINGS = ("batch_size", "lr", "telemetry_every", "device")
_KEYS = ("name", *_AXES, *_SETTINGS, "recipes", "recipe", "float_split", "fixed_split")
#: split key: (format kind, its two parameters, optional keys of that kind)
_SPLITS = {
    "float_split": ("float", ("exp", "man"), ("bits", "subnormals", "specials")),
    "fixed_split": ("fixed", ("wl", "fl"), ()),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


class SweepError(ValueError):
    """A sweep file is malformed, or a backend cannot run; the message says where and how
    to fix it."""


# -- the grid -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A value of the recipe axis: a recipe, where the file gives it (``recipes[0]``,
    ``float_split[1]``) and, for a split, its name, format kind and parameters."""

    recipe: Recipe
    source: str
    family: str = ""
    kind: str = ""
    params: Mapping[str, int] = field(default_factory=dict)

    @property
    def bits(self) -> int:
        """The widest format the recipe rounds a tensor class to (32: nothing rounded)."""
        return max((s.format.bits for s in self._specs()), default=32)

    @property
    def formats(self) -> str:
        """The recipe's formats, preset names where they are presets: ``"fp12"``."""
        labels = dict.fromkeys(_format_label(s.format) for s in self._specs())
        return "/".join(labels) or "fp32"

    def _specs(self) -> list[QuantSpec]:
        return [s for s in self.recipe.specs().values() if s is not None]


def _format_label(fmt: Format) -> str:
    return next((n for n in formats.names() if formats.get(n) == fmt), fmt.name)


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: what to train, in which folder (relative to the output
    folder), and the recipe axis value it comes from."""

    spec: RunSpec
    folder: str
    variant: Variant

    def record(self) -> dict[str, Any]:
        """The run's entry in ``sweep.json`` (status ``pending``)."""
        v = self.variant
        return {"folder": self.folder, "dataset": self.spec.dataset, "model": self.spec.model,
                "recipe": self.spec.recipe.name, "seed": self.spec.seed,
                "epochs": self.spec.epochs, "family": v.family, "kind": v.kind,
                "params": dict(v.params), "bits": v.bits, "formats": v.formats,
                "status": "pending", "reason": None}


@dataclass(frozen=True)
class Sweep:
    """A named list of runs, expanded from a sweep file (see the module docstring)."""

    name: str
    runs: tuple[SweepRun, ...]
    text: str = ""
    file: str = ""

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Sweep:
        """Read and expand a sweep file."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        sweep = cls.from_toml(text, f"sweep file {os.fspath(path)!r}", default_name=path.stem)
        return dataclasses.replace(sweep, file=str(path.resolve()))

    @classmethod
    def from_toml(cls, text: str, source: str = "sweep", default_name: str = "sweep") -> Sweep:
        """Parse and expand sweep TOML text."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SweepError(f"{source}: not valid TOML: {exc}") from None
        return dataclasses.replace(cls.from_dict(data, source, default_name), text=text)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "sweep",
                  default_name: str = "sweep") -> Sweep:
        """Expand a parsed sweep file; errors name ``source`` and the entry."""
        try:
            return cls(_name(d, default_name), tuple(_expand(d)))
        except SweepError as exc:
            raise SweepError(f"{source}: {exc}") from None


def _name(d: Mapping[str, Any], default: str) -> str:
    name = d.get("name", default)
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise SweepError(f"name: {name!r} cannot name the default output folder; set "
                         "name = \"...\" with letters, digits and _ . + -")
    return name


def _expand(d: Mapping[str, Any]) -> list[SweepRun]:
    _check_keys(d, _KEYS, "")
    datasets = _axis(d, "datasets", str, choices=DATASETS)
    models = _axis(d, "models", str, choices=MODELS)
    seeds = _axis(d, "seeds", int, default=0)
    epochs = _axis(d, "epochs", int, default=None, low=1)
    settings = _settings(d)
    variants = _variants(d)
    runs = []
    for dataset, model, n, variant, seed in itertools.product(
            datasets, models, epochs, variants, seeds):
        spec = RunSpec(dataset, model, variant.recipe, seed, n, **settings)
        folder = f"epochs{n}/{spec.name}" if len(epochs) > 1 else spec.name
        runs.append(SweepRun(spec, folder, variant))
    return runs


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepError(f"{where}unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _check_type(value: Any, kind: type, where: str, low: int | None = None) -> None:
    """``kind`` is ``str``, ``int`` or ``float`` (which admits ints); bools are neither."""
    ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
    if isinstance(value, bool) or not ok:
        raise SweepError(f"{where}: expected {kind.__name__}, got {value!r}")
    if low is not None and value < low:
        raise SweepError(f"{where}: must be at least {low}, got {value!r}")


_REQUIRED = object()


def _axis(d: Mapping[str, Any], key: str, kind: type, *, default: Any = _REQUIRED,
          low: int | None = None, choices: Mapping[str, str] | None = None) -> list[Any]:
    """An axis: one value or a list of distinct values of ``kind`` (``[default]`` when the
    key is absent; without a default the key is required)."""
    if key not in d:
        if default is _REQUIRED:
            raise SweepError(f"{key}: missing; give one name or a list, e.g. {key} = [...]")
        return [default]
    values = d[key] if isinstance(d[key], list) else [d[key]]
    if not values:
        raise SweepError(f"{key}: empty list; give at least one value or leave the key out")
    for i, value in enumerate(values):
        _check_type(value, kind, f"{key}[{i}]", low)
        if choices is not None and value not in choices:
            raise SweepError(f"{key}[{i}]: unknown {value!r}; known: {', '.join(choices)}")
    dup = [v for v, n in Counter(values).items() if n > 1]
    if dup:
        raise SweepError(f"{key}: {dup[0]!r} is listed twice; list each value once")
    return values


def _settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed settings present in ``d``, checked, as RunSpec keyword arguments."""
    checks: dict[str, tuple[type, int | None]] = {
        "batch_size": (int, 1), "lr": (float, None), "telemetry_every": (int, 0),
        "device": (str, None)}
    out = {}
    for key, (kind, low) in checks.items():
        if key in d:
            _check_type(d[key], kind, key, low)
            out[key] = d[key]
    if "lr" in out and out["lr"] <= 0:
        raise SweepError(f"lr: must be positive, got {out['lr']!r}")
    if "device" in out:
        try:
            torch.device(out["device"])
        except RuntimeError as exc:
            raise SweepError(f"device: {exc}") from None
    return out


# -- the recipe axis ------------------------------------------------------------------------


def _tables(d: Mapping[str, Any], key: str) -> list[Any]:
    value = d.get(key, [])
    return value if isinstance(value, list) else [value]


def _variants(d: Mapping[str, Any]) -> list[Variant]:
    variants = [_plain(v, f"recipes[{i}]") for i, v in enumerate(_tables(d, "recipes"))]
    variants += [_inline(t, f"recipe[{i}]") for i, t in enumerate(_tables(d, "recipe"))]
    for key in _SPLITS:
        for i, table in enumerate(_tables(d, key)):
            variants += _split(key, table, f"{key}[{i}]")
    if not variants:
        raise SweepError("no recipes: give recipes = [...], [[recipe]], [[float_split]] "
                         "or [[fixed_split]]")
    seen: dict[str, str] = {}
    for v in variants:
        name = v.recipe.name
        if name in seen:
            raise SweepError(f"recipe name {name!r} comes from both {seen[name]} and {v.source}; "
                             "run folders are named after recipes: rename one")
        if not _SAFE_NAME.fullmatch(name):
            raise SweepError(f"{v.source}: recipe name {name!r} cannot name a folder; use "
                             "letters, digits and _ . + -")
        seen[name] = v.source
    return variants


def _plain(value: Any, where: str) -> Variant:
    """A ``recipes`` entry: a preset name or an inline table."""
    if isinstance(value, Mapping):
        return _inline(value, where)
    if not isinstance(value, str):
        raise SweepError(f"{where}: expected a preset name or a recipe table, got {value!r}")
    return Variant(_preset(value, where), where)


def _preset(name: str, where: str) -> Recipe:
    try:
        return recipes.get(name)
    except ValueError as exc:
        raise SweepError(f"{where}: {exc}") from None


def _recipe_table(table: Any, where: str) -> Recipe:
    if not isinstance(table, Mapping):
        raise SweepError(f"{where}: expected a recipe table, got {table!r}")
    try:
        return Recipe.from_dict(table, where)
    except ValueError as exc:  # RecipeError, and format parameter errors
        raise SweepError(str(exc)) from None


def _inline(table: Any, where: str) -> Variant:
    recipe = _recipe_table(table, where)
    if not recipe.name:
        raise SweepError(f"{where}: an inline recipe needs a name (it names the run folders)")
    return Variant(recipe, where)


def _template(value: Any, where: str) -> Recipe:
    return _preset(value, where) if isinstance(value, str) else _recipe_table(value, where)


def _ints(table: Mapping[str, Any], key: str, where: str) -> list[int]:
    values = table[key] if isinstance(table[key], list) else [table[key]]
    if not values:
        raise SweepError(f"{where}.{key}: empty list; give at least one value")
    for value in values:
        _check_type(value, int, f"{where}.{key}")
    if len(set(values)) < len(values):
        raise SweepError(f"{where}.{key}: a value is listed twice; list each value once")
    return values


def _split(key: str, table: Any, where: str) -> list[Variant]:
    """The recipes of one ``float_split`` / ``fixed_split`` table."""
    kind, (p, q), extra = _SPLITS[key]
    if not isinstance(table, Mapping):
        raise SweepError(f"{where}: expected a table with template, {p}, {q}")
    _check_keys(table, ("template", p, q, "name", "classes", *extra), f"{where}: ")
    missing = [k for k in ("template", p, q) if k not in table]
    if missing:
        raise SweepError(f"{where}: missing key(s) {missing}; e.g. template = \"fp12_sr\", "
                         f"{p} = [...], {q} = [...]")
    template = _template(table["template"], f"{where}.template")
    name = table.get("name", template.name)
    if not isinstance(name, str) or not name:
        raise SweepError(f"{where}: name the split (name = \"...\"): its template has no name")
    classes = _split_classes(template, table.get("classes"), where)
    pairs = list(itertools.product(_ints(table, p, where), _ints(table, q, where)))
    if "bits" in table:
        bits = _ints(table, "bits", where)
        pairs = [(e, m) for e, m in pairs if 1 + e + m in bits]
        if not pairs:
            raise SweepError(f"{where}: no (exp, man) pair has 1 + exp + man in bits = {bits}")
    options = {k: table[k] for k in extra if k in table and k != "bits"}
    out = []
    for a, b in pairs:
        params = {p: a, q: b}
        label = f"e{a}m{b}" if kind == "float" else f"w{a}f{b}"
        try:
            recipe = _with_format(template, classes, kind, params, options)
        except (TypeError, ValueError) as exc:  # the format's or the spec's checks
            raise SweepError(f"{where}: {p}={a}, {q}={b}: {exc}") from None
        recipe = recipe.replace(
            name=f"{name}-{label}",
            description=f"{template.name or name} with {', '.join(classes)} in {kind} "
                        f"{p}={a}, {q}={b} (sweep split)")
        out.append(Variant(recipe, where, name, kind, params))
    return out


def _split_classes(template: Recipe, classes: Any, where: str) -> list[str]:
    quantized = [c for c, s in template.specs().items() if s is not None]
    if classes is None:
        if not quantized:
            raise SweepError(f"{where}.template: rounds no tensor class; use a template "
                             "that quantizes the classes to sweep")
        return quantized
    if not isinstance(classes, list) or not classes:
        raise SweepError(f"{where}.classes: expected a list of tensor classes, got {classes!r}")
    for c in classes:
        if c not in quantized:
            raise SweepError(f"{where}.classes: {c!r} is not a class the template rounds; "
                             f"choose from {quantized}")
    return classes


def _with_format(template: Recipe, classes: list[str], kind: str, params: dict[str, int],
                 options: dict[str, Any]) -> Recipe:
    """``template`` with the format of ``classes`` replaced, rounding and scaling kept."""
    changes = {}
    for cls in classes:
        spec = getattr(template, cls)
        if kind == "fixed":
            fmt: Format = FixedPoint(params["wl"], params["fl"])
        else:
            old = spec.format
            keep = ({"subnormals": old.subnormals, "specials": old.specials}
                    if type(old) is FloatingPoint else {})
            fmt = FloatingPoint(params["exp"], params["man"], **{**keep, **options})
        changes[cls] = dataclasses.replace(spec, format=fmt)
    return template.replace(**changes)


# -- one run (in a worker) ------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What a worker needs for one run: ``root`` is the sweep's output folder (on the
    worker's disk), ``folder`` the run folder relative to it."""

    spec: RunSpec
    root: str
    folder: str
    data_dir: str | None = None
    max_epochs: int | None = None
    threads: int = 1


@dataclass(frozen=True)
class Outcome:
    """How one run of a sweep ended: ``status`` is ``done``, ``diverged``, ``paused`` or
    ``failed`` (an exception: ``reason`` is its message, ``traceback`` the full text)."""

    folder: str
    status: str
    reason: str | None = None
    test_acc: float | None = None
    epochs: int = 0
    skipped: bool = False
    seconds: float = 0.0
    traceback: str | None = None

    @classmethod
    def failed(cls, folder: str, exc: BaseException, seconds: float = 0.0) -> Outcome:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(folder, "failed", f"{type(exc).__name__}: {exc}", seconds=seconds,
                   traceback=text)

    def line(self) -> str:
        """One line for the terminal."""
        if self.status in PROBLEMS:
            return f"{self.folder}: {self.status}: {self.reason}"
        acc = "" if self.test_acc is None else f", test accuracy {self.test_acc:.2%}"
        if self.status == "paused":
            return f"{self.folder}: paused after epoch {self.epochs}{acc} (rerun to continue)"
        done = "already finished" if self.skipped else f"done in {self.seconds:.1f} s"
        return f"{self.folder}: {done}{acc}"


@functools.lru_cache(maxsize=2)
def _data(dataset: str, model: str, data_dir: str | None) -> Dataset:
    """Data sets stay loaded in a worker for its next runs."""
    return load_data(dataset, model, data_dir)


def run_one(task: Task) -> Outcome:
    """Load the data and :func:`~lowprec.experiment.train_run` one run, as ``lowprec train``
    does; an exception becomes a ``failed`` outcome."""
    torch.set_num_threads(task.threads)
    start = time.perf_counter()
    try:
        data = _data(task.spec.dataset, task.spec.model, task.data_dir)
        out = Path(task.root, task.folder).parent
        result = train_run(task.spec, out, data, quiet=True, max_epochs=task.max_epochs)
    except Exception as exc:
        return Outcome.failed(task.folder, exc, time.perf_counter() - start)
    acc = result.metrics[-1]["test_acc"] if result.metrics else None
    return Outcome(task.folder, result.status, result.reason, acc, len(result.metrics),
                   result.skipped, time.perf_counter() - start)


# -- backends -------------------------------------------------------------------------------


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover


def default_workers(sweep: Sweep) -> int:
    """One worker per core (at most one per run); one in all if the runs use CUDA (they
    share the device)."""
    if any(torch.device(r.spec.device).type == "cuda" for r in sweep.runs):
        return 1
    return max(1, min(len(sweep.runs), _cores()))


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the driver, which terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _remove_temporary_files(tasks: Iterable[Task]) -> None:
    """Remove what terminated workers were writing: ``atomic_write``'s ``.<name>.*.tmp``."""
    for task in tasks:
        for tmp in Path(task.root, task.folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _result(future: Future[Outcome], task: Task) -> Outcome:
    try:
        return future.result()
    except Exception as exc:  # the worker died, or the outcome did not come back
        return Outcome.failed(task.folder, exc)


def _local(tasks: list[Task], workers: int) -> Iterator[Outcome]:
    """Run ``tasks`` in a pool of spawned processes; yields outcomes as runs finish. When
    stopped (Ctrl-C, or the consumer closes it), pending runs are cancelled and the
    workers terminated (their files are replaced atomically: a run resumes from its last
    finished epoch)."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_sigint)
    procs: list[multiprocessing.process.BaseProcess] = []
    futures: dict[Future[Outcome], Task] = {}
    try:
        futures = {pool.submit(run_one, task): task for task in tasks}
        # workers start at submit; these are ours (for terminate(): there is no public way)
        procs = [p for p in multiprocessing.active_children() if p not in before]
        for future in as_completed(futures):
            yield _result(future, futures[future])
    except BaseException:
        busy = [task for future, task in futures.items() if future.running()]
        for p in procs:
            p.terminate()
        pool.shutdown(cancel_futures=True)
        _remove_temporary_files(busy)
        raise
    pool.shutdown()


@dataclass(frozen=True)
class RayOptions:
    """How the Ray backend runs: ``address`` of a cluster (``None``: start a local instance
    with ``num_cpus``, all cores when ``None``, unless Ray is already initialised); per run
    ``cpus_per_run`` CPUs (also its torch threads) and ``gpus_per_run`` GPUs (``None``: 1 for
    CUDA runs, else 0). ``shared_disk=False``: workers train in a local temporary folder
    seeded with the run folder's files, which return to the driver when the task ends."""

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None
    shared_disk: bool = True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'lowprec[ray]'") from None
    return ray


def _read_files(folder: Path) -> dict[str, bytes]:
    """A run folder's files (not temporary ones), by name."""
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def _seed_files(folder: Path) -> dict[str, bytes]:
    """What a worker without the shared disk needs to resume or skip the run."""
    files = _read_files(folder)
    if STATUS in files:
        files.pop(CHECKPOINT, None)  # a finished run is skipped: its weights are not needed
    return files


def _write_back(folder: Path, files: dict[str, bytes]) -> None:
    """Write a worker's files atomically: ``config.json`` first, ``status.json`` last."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: (n == STATUS, n != CONFIG, n)):
        atomic_write(folder / name, lambda fh, b=files[name]: fh.write(b))


def _ray_task(task: Task, files: dict[str, bytes] | None) -> tuple[Outcome, dict[str, bytes]]:
    """A Ray task: :func:`run_one` into the shared folder (``files is None``), or into a
    temporary one seeded with ``files``; returns the files that changed."""
    if files is None:
        return run_one(task), {}
    with tempfile.TemporaryDirectory(prefix="lowprec-sweep-") as tmp:
        folder = Path(tmp, task.folder)
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        outcome = run_one(dataclasses.replace(task, root=tmp))
        return outcome, {n: b for n, b in _read_files(folder).items() if files.get(n) != b}


def _ray(tasks: list[Task], opts: RayOptions) -> Iterator[Outcome]:
    """Run ``tasks`` as Ray tasks; yields outcomes as runs finish. When stopped, pending
    tasks are cancelled; a local instance this started is shut down."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=opts.address, num_cpus=None if opts.address else opts.num_cpus)
    remote = ray.remote(_ray_task)
    pending: dict[Any, Task] = {}
    try:
        for task in tasks:
            gpus = opts.gpus_per_run
            if gpus is None:
                gpus = 1 if torch.device(task.spec.device).type == "cuda" else 0
            files = None if opts.shared_disk else _seed_files(Path(task.root, task.folder))
            ref = remote.options(num_cpus=opts.cpus_per_run, num_gpus=gpus).remote(task, files)
            pending[ref] = task
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                outcome, files = ray.get(ready[0])
                _write_back(Path(task.root, task.folder), files)
            except Exception as exc:  # the task or its worker died
                outcome = Outcome.failed(task.folder, exc)
            yield outcome
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()


# -- the driver -----------------------------------------------------------------------------


class _Summary:
    """``sweep.json``: the sweep and each run's status, rewritten atomically on updates."""

    def __init__(self, out: Path, sweep: Sweep, backend: str) -> None:
        self.path = out / SUMMARY
        self.head = {"name": sweep.name, "file": sweep.file, "backend": backend,
                     "sweep_toml": sweep.text}
        self.runs = {r.folder: r.record() for r in sweep.runs}
        for folder, record in self.runs.items():
            if (out / folder / STATUS).exists():
                status = read_json(out / folder / STATUS)
                record.update(status=status["status"], reason=status["reason"])

    def update(self, outcome: Outcome) -> None:
        record = self.runs[outcome.folder]
        record.update(status=outcome.status, reason=outcome.reason, test_acc=outcome.test_acc,
                      epochs_completed=outcome.epochs, seconds=round(outcome.seconds, 3))
        if outcome.traceback:
            record["traceback"] = outcome.traceback
        else:
            record.pop("traceback", None)
        self.write()

    def write(self) -> None:
        counts = Counter(r["status"] for r in self.runs.values())
        write_json(self.path, {**self.head, "updated": datetime.now(timezone.utc).isoformat(),
                               "counts": dict(counts), "runs": list(self.runs.values())})


def run_sweep(sweep: Sweep, out: str | os.PathLike[str], *, backend: str = "local",
              workers: int | None = None, data_dir: str | None = None,
              max_epochs: int | None = None, quiet: bool = False,
              ray_options: RayOptions | None = None,
              say: Callable[[str], None] = tqdm.write) -> list[Outcome]:
    """Run every run of ``sweep`` into ``out`` with ``backend`` (``"local"`` or ``"ray"``),
    keeping ``out/sweep.json``; returns the outcomes in the sweep's order.

    ``workers``: local processes (default :func:`default_workers`), or, for a local Ray
    instance without ``ray_options.num_cpus``, its CPUs (``workers * cpus_per_run``).
    ``say`` gets one line per finished run; ``quiet`` hides the progress bar. The local
    backend spawns processes, which import the main module: call this from a script
    under ``if __name__ == "__main__":``.
    """
    if backend not in ("local", "ray"):
        raise SweepError(f"unknown backend {backend!r}; use local or ray")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers(sweep)
    opts = ray_options or RayOptions()
    if backend == "ray" and opts.num_cpus is None and opts.address is None:
        opts = dataclasses.replace(opts, num_cpus=max(1, round(workers * opts.cpus_per_run)))
    threads = max(1, _cores() // workers if backend == "local" else int(opts.cpus_per_run))
    tasks = [Task(r.spec, str(root), r.folder, data_dir, max_epochs, threads) for r in sweep.runs]
    summary = _Summary(root, sweep, backend)
    summary.write()
    results = _local(tasks, workers) if backend == "local" else _ray(tasks, opts)
    outcomes: dict[str, Outcome] = {}
    with contextlib.closing(results), tqdm(total=len(tasks), desc=sweep.name, unit="run",
                                           disable=quiet) as bar:
        for outcome in results:
            outcomes[outcome.folder] = outcome
            summary.update(outcome)
            bar.update()
            say(f"[{len(outcomes)}/{len(tasks)}] {outcome.line()}")
    return [outcomes[r.folder] for r in sweep.runs]
