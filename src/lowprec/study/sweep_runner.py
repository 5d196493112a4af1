"""Running a sweep (:class:`~lowprec.sweep.Sweep`) in a process pool or on Ray.

Each run is what ``lowprec train`` does with the same settings (:func:`run_one`: load
the data, then :func:`~lowprec.experiment.train_run`) in ``<out>/<folder>/``, its
:attr:`~lowprec.sweep.SweepRun.folder` (``<run name>``, or ``epochs<N>/<run name>`` when
``epochs`` lists several values). Runs resume and are skipped when finished, so a sweep
stopped midway continues where it stopped when rerun; results are bit-identical to
``lowprec train`` with the same torch thread count (recorded in ``config.json``).
:func:`run_sweep` keeps ``<out>/sweep.json`` (written atomically after every finished
run): the sweep's name, file and text, and per run its folder, axis values, ``bits`` (a
split's width, else the widest format the recipe stores; 32 for fp32) and ``status``:
``pending``, ``done``, ``diverged``, ``paused`` (stopped by ``max_epochs``) or ``failed``
(an exception; its ``reason`` and ``traceback``). A failed or diverged run does not stop
the others.

Backends: ``"local"``, a pool of ``workers`` spawned processes, each with
``cores // workers`` torch threads; ``"ray"``, one Ray task per run (:class:`RayOptions`;
``pip install 'lowprec[ray]'``). Ctrl-C cancels the pending runs and stops the running
ones (local workers are terminated, Ray tasks cancelled); files are replaced atomically,
so those resume from their last finished epoch. Workers import this module to run
:func:`run_one` (spawned processes unpickle it by module path).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..train.files import atomic_write, remove_temporary_files
from .data import Dataset
from .progress import bar
from .rundir import locked, read_status
from .runs import (
    CHECKPOINT,
    CONFIG,
    STATUS,
    RunSpec,
    load_data,
    train_run,
    write_json,
)
from .steplog import require_tensorboard
from .sweep import Sweep, SweepError

__all__ = [
    "SUMMARY",
    "Outcome",
    "RayOptions",
    "Task",
    "default_workers",
    "run_one",
    "run_sweep",
]

#: the sweep summary in the output folder
SUMMARY = "sweep.json"
#: what ``run_sweep`` reports as a problem (exit status 1 on the command line)
PROBLEMS = ("diverged", "failed")


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
    restart: bool = False
    tensorboard: bool = False


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
        return f"{self.folder}: {done}{acc}" + (f" ({self.reason})" if self.reason else "")


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
        result = train_run(task.spec, out, data, quiet=True, max_epochs=task.max_epochs,
                           restart=task.restart, tensorboard=task.tensorboard)
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


_PR_SET_PDEATHSIG = 1


def _worker_init(driver: int) -> None:
    """Workers leave Ctrl-C to the driver, which terminates them, and die with the driver
    however it dies (SIGKILL included): on Linux the kernel sends them SIGTERM when it
    exits (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread polls the parent's pid."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(driver,), daemon=True).start()
    if os.getppid() != driver:  # the driver died before the line above took effect
        os._exit(1)


def _watch_parent(driver: int) -> None:
    while os.getppid() == driver:
        time.sleep(1.0)
    os._exit(1)


def _remove_temporary_files(tasks: Iterable[Task]) -> None:
    """Remove what terminated workers were writing (:func:`atomic_write`'s files)."""
    for task in tasks:
        remove_temporary_files(Path(task.root, task.folder))


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
                               initializer=_worker_init, initargs=(os.getpid(),))
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
    """A run folder's files (not temporary ones), by path relative to it (``tensorboard/``
    holds event files)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
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
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
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
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
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

    def __init__(self, out: Path, sweep: Sweep, backend: str, fresh: bool = False) -> None:
        self.path = out / SUMMARY
        self.head = {"name": sweep.name, "file": sweep.file, "backend": backend,
                     "sweep_toml": sweep.text}
        self.runs = {r.folder: r.record() for r in sweep.runs}
        for folder, record in self.runs.items():
            status = None if fresh else read_status(out / folder)
            if status is not None:
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
              say: Callable[[str], None] = tqdm.write, restart: bool = False,
              tensorboard: bool = False) -> list[Outcome]:
    """Run every run of ``sweep`` into ``out`` with ``backend`` (``"local"`` or ``"ray"``),
    keeping ``out/sweep.json``; returns the outcomes in the sweep's order.

    ``workers``: local processes (default :func:`default_workers`), or, for a local Ray
    instance without ``ray_options.num_cpus``, its CPUs (``workers * cpus_per_run``).
    ``say`` gets one line per finished run; ``quiet`` hides the progress bar (drawn only on
    a terminal: :mod:`lowprec.study.progress`); ``tensorboard``: each run also writes
    TensorBoard events (:mod:`lowprec.study.steplog`). The local
    backend spawns processes, which import the main module: call this from a script
    under ``if __name__ == "__main__":``. ``restart``: every run starts over. The output
    folder is locked while this runs (a second driver on it gets a
    :class:`~.rundir.RunError`), and so is each run folder while a worker trains it.
    """
    if backend not in ("local", "ray"):
        raise SweepError(f"unknown backend {backend!r}; use local or ray")
    if tensorboard:
        require_tensorboard()  # before any run fails for want of it
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with locked(root):
        return _run(sweep, root, backend, workers, data_dir, max_epochs, quiet,
                    ray_options, say, restart, tensorboard)


def _run(sweep: Sweep, root: Path, backend: str, workers: int | None, data_dir: str | None,
         max_epochs: int | None, quiet: bool, ray_options: RayOptions | None,
         say: Callable[[str], None], restart: bool, tensorboard: bool) -> list[Outcome]:
    """:func:`run_sweep` in its locked output folder."""
    workers = workers or default_workers(sweep)
    opts = ray_options or RayOptions()
    if backend == "ray" and opts.num_cpus is None and opts.address is None:
        opts = dataclasses.replace(opts, num_cpus=max(1, round(workers * opts.cpus_per_run)))
    threads = max(1, _cores() // workers if backend == "local" else int(opts.cpus_per_run))
    tasks = [Task(r.spec, str(root), r.folder, data_dir, max_epochs, threads, restart,
                  tensorboard) for r in sweep.runs]
    summary = _Summary(root, sweep, backend, fresh=restart)
    summary.write()
    results = _local(tasks, workers) if backend == "local" else _ray(tasks, opts)
    outcomes: dict[str, Outcome] = {}
    with contextlib.closing(results), bar(total=len(tasks), desc=sweep.name, unit="run",
                                          quiet=quiet) as runs:
        for outcome in results:
            outcomes[outcome.folder] = outcome
            summary.update(outcome)
            runs.update()
            say(f"[{len(outcomes)}/{len(tasks)}] {outcome.line()}")
    return [outcomes[r.folder] for r in sweep.runs]
