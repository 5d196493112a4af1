"""Compiled or eager: one helper runs lowprec's integer kernels either way (same bits).

``LOWPREC_BACKEND`` chooses:

* ``eager``: the plain torch functions, never compiled;
* ``compiled``: every call through the compiled graph of its variant (:mod:`.graphs`:
  inductor without dynamo, kept on disk), a new one compiled or loaded before the call
  returns (errors raise);
* ``auto`` (default): compiled where that pays off, with as little waiting as possible.

Under ``auto`` a *variant* (one graph: a rounding mode, dtypes, ...; the caller names it)
runs eagerly until the time its eager calls took reaches :data:`EAGER_SECONDS` (counting
the call that crosses it), then compiled. This is rent-or-buy: compiling costs a fresh
process 3-4 s on a 2-core CPU even when the graph is kept on disk (inductor's imports
and the first load; 2-8 s more for a compile), and saves at most the eager time, so a
variant is compiled only once running it eagerly has cost about that much. A short run
never pays for a compiler (one digits epoch spends 0.26 s in all its eager rounding, ten
epochs 2.6 s); a long one (a CIFAR-10 study run) compiles its busy variants within its
first minute and never compiles the variants that stay cheap. The time is the caller's
wall time of the eager call: on the CPU the work itself; on CUDA, where kernels run
asynchronously, the host's launch time (what eager CUDA calls mostly cost). An earlier
budget in elements (``2**18``) compiled in every digits epoch: 6-14 s more than eager,
for 0.26 s saved; a budget of 1 s, ten digits epochs 4 s more than eager
(docs/benchmarks.md).

A fresh process also pays the compiler's start-up once, before its first graph: importing
inductor and probing the C++ compiler (:func:`start_up`: 10.8 s alone on the loaded
2-core machine of docs/benchmarks.md, more than loading a cached graph). That is done
**in a background thread**, started when the first variant reaches its budget, while the
calls go on eagerly; the first call after it compiles the variant(s)
due, in the calling thread, and runs them compiled from then on. The start-up is work the
first compile would do anyway: where a core is idle it overlaps eager work instead of
stalling it, and on a busy machine it costs no more CPU than before.

Why only the imports are done in the background, and not the compile: compiling saves the
global torch and Python random states and restores them when it ends (:mod:`.graphs`, as
dynamo does), which from another thread would undo random numbers the training thread
drew meanwhile (dropout, ``quantize`` without a generator);
and a process that exited while a (daemon) thread compiled was seen to abort
("terminate called without an active exception"). Importing touches no state of the
caller's. The thread is not a daemon: at exit it finishes the step under way (one
import or the probes) and stops. Compiling in another process while this one runs
eagerly (filling torch's caches for this one to load) was tried too and dropped: it
spends a whole second process's start-up and compile, whether or not the run lives long
enough to use it, and on the loaded 2-core development machine it slowed the run itself.

The eager and compiled kernels compute the same bits and the caller draws its random
seeds either way, so when the switch happens changes no result. A failing compile or
start-up (no C++ toolchain, say) warns once, from the calling thread, and the helper
stays eager for the process.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from typing import Any

import torch

__all__ = ["EAGER_SECONDS", "Compiled", "backend", "start_up", "wait_all"]

#: seconds of eager calls a variant runs, under ``auto``, before it is compiled
EAGER_SECONDS = 3.0
#: the clock the eager calls are timed with
_clock = time.perf_counter

_VARIANTS = 256  # dynamo's recompile limit while a new variant compiles (its default is 8)
#: what compiling a first graph in a process imports (by far its slowest imports; dynamo
#: comes with ``import torch``)
_START_UP = ("torch._inductor.compile_fx", "torch._inductor.lowering",
             "torch._inductor.select_algorithm", "torch._inductor.codecache",
             "torch._inductor.cpu_vec_isa")

Compiler = Callable[[Callable[..., Any]], Callable[..., Any]]
#: ``start(alive)``: the compiler's start-up, stopping early once ``alive()`` is False
StartUp = Callable[[Callable[[], bool]], None]


def backend() -> str:
    """``"auto"``, ``"compiled"`` or ``"eager"``, from ``LOWPREC_BACKEND`` (default ``auto``)."""
    choice = os.environ.get("LOWPREC_BACKEND", "auto")
    if choice not in ("auto", "compiled", "eager"):
        raise ValueError(f"LOWPREC_BACKEND={choice!r} is unknown; allowed: auto, compiled, eager")
    return choice


def _direct(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled per signature without dynamo, kept on disk (:mod:`.graphs`)."""
    from .graphs import DirectCompiled

    return DirectCompiled(fn, lambda: torch.compile(fn, dynamic=True))


_START_LOCK = threading.Lock()  # one start-up at a time, whichever helper asks


def start_up(alive: Callable[[], bool]) -> None:
    """Import :data:`_START_UP`, one module after another while ``alive()``, then find the
    vector instructions inductor's C++ compiler accepts (it compiles probes; cached for the
    process). Once per process: the helpers of several kernels take turns, so two threads
    never import the compiler's mutually importing modules at once."""
    with _START_LOCK:
        for name in _START_UP:
            if not alive():
                return
            importlib.import_module(name)
        if alive():
            sys.modules["torch._inductor.cpu_vec_isa"].valid_vec_isa_list()


def _new_variant() -> Any:
    """Dynamo's recompile limit raised while a new variant compiles (where dynamo is loaded:
    ``torch.compile`` loads it)."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo.config.patch(recompile_limit=_VARIANTS) if dynamo else nullcontext()


class Compiled:
    """``fn`` run eagerly or by ``compiler(fn)`` (:class:`.graphs.DirectCompiled`), per the
    module doc; ``start`` is the compiler's start-up, run in a background thread.

    ``self(variant, *args)`` calls ``fn(*args)``; ``variant`` (hashable) names the
    compiled graph the call needs.
    """

    def __init__(self, fn: Callable[..., Any], what: str, compiler: Compiler = _direct,
                 start: StartUp = start_up) -> None:
        self.fn, self.what, self.compiler, self.start = fn, what, compiler, start
        self.failed = False
        self._compiled: Callable[..., Any] | None = None
        self._eager_seconds: dict[Hashable, float] = {}
        self._due: set[Hashable] = set()  # over the budget: compiled once started up
        self._ready: set[Hashable] = set()  # compiled in this process
        self._thread: threading.Thread | None = None
        self._started = threading.Event()  # the start-up is done (or failed)
        self._error: Exception | None = None  # of the start-up
        _HELPERS.add(self)

    def __call__(self, variant: Hashable, *args: Any) -> Any:
        choice = backend()
        if choice == "eager" or self.failed or torch.compiler.is_compiling():
            return self.fn(*args)
        if variant in self._ready:
            assert self._compiled is not None
            return self._compiled(*args)
        if choice == "compiled":
            return self._compile(variant, args)
        if variant in self._due:
            if self._started.is_set():
                try:
                    if self._error is not None:
                        raise self._error
                    return self._compile(variant, args)
                except Exception as exc:
                    self._give_up(exc)
            return self.fn(*args)
        start = _clock()
        result = self.fn(*args)
        spent = self._eager_seconds.get(variant, 0.0) + _clock() - start
        self._eager_seconds[variant] = spent
        if spent >= EAGER_SECONDS:
            self._due.add(variant)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._start_up, name=f"lowprec: start the compiler ({self.what})")
                self._thread.start()
        return result

    def wait(self) -> None:
        """Block until the background start-up is done: for tests and benchmarks."""
        if self._thread is not None:
            self._started.wait()

    def _compile(self, variant: Hashable, args: tuple[Any, ...]) -> Any:
        """Call ``args`` compiled, compiling ``variant`` first."""
        if self._compiled is None:
            self._compiled = self.compiler(self.fn)
        with _new_variant():
            result = self._compiled(*args)
        self._ready.add(variant)
        return result

    def _start_up(self) -> None:
        """The background thread (not a daemon: it must not be inside an import at exit)."""
        try:
            self.start(threading.main_thread().is_alive)
        except Exception as exc:  # reported by the next call (in the caller's thread)
            self._error = exc
        self._started.set()

    def _give_up(self, exc: Exception) -> None:
        self.failed = True
        warnings.warn(
            f"lowprec: compiling the {self.what} failed ({type(exc).__name__}: "
            f"{exc}); using the eager code (same bits, slower). Set LOWPREC_BACKEND=eager "
            "to silence this.", RuntimeWarning, stacklevel=3)


_HELPERS: weakref.WeakSet[Compiled] = weakref.WeakSet()


def wait_all() -> None:
    """:meth:`Compiled.wait` of every helper: for benchmarks that warm up to a steady state."""
    for helper in list(_HELPERS):
        helper.wait()
