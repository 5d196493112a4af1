"""Compiled or eager: one helper runs lowprec's integer kernels either way (same bits).

``LOWPREC_BACKEND`` chooses:

* ``eager``: the plain torch functions, never compiled;
* ``compiled``: every call through ``torch.compile``, compiling a new variant before the
  call returns (errors raise);
* ``auto`` (default): compiled where that pays off, and never waiting for the compiler.

Under ``auto`` a *variant* (one graph: a rounding mode, dtypes, ...; the caller names it)
runs eagerly until the elements it has been called on reach :data:`EAGER_BUDGET`
(counting the call that crosses it). Then it is compiled **in a background thread**
while the calls go on eagerly, and calls switch to the compiled graph as soon as it is
ready. The eager and compiled kernels compute the same bits, and the switch changes
nothing else (the caller draws its random seeds either way), so when it happens does not
change a result.

Why not wait: compiling a variant costs seconds on a small CPU (about 5 s the first time;
a fresh process that finds it in torch's on-disk caches, see :mod:`.kernel`, still pays
inductor's one-time start-up, 2-4 s, and dynamo's re-trace, about 1 s per graph), while
the eager kernel costs about a microsecond per element. A short run (a digits epoch: 5
million elements, 3 variants above the budget) is over before compiling pays off, and a
long one switches within seconds. Measured in docs/benchmarks.md (cold start).

The background compile works on zero-filled stand-ins for the call's tensors (same
dtypes, strides, storage offsets, aliasing; at most :data:`_EXAMPLE_ROWS` along the first
dimension: the graph is compiled for symbolic sizes, ``dynamic=True``) under the call's
grad mode, so the caller's tensors are never touched from another thread. One daemon
thread compiles the variants one after another (dynamo holds a global compile lock
anyway); a process that exits first simply leaves the rest uncompiled. A failing compile
(no C++ toolchain, say) warns once, from the calling thread, and the helper stays eager
for the process. Variants under the budget (a few hundred elements in all) never compile.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import warnings
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from typing import Any

import torch

__all__ = ["EAGER_BUDGET", "Compiled", "backend"]

#: elements a variant is called on eagerly, under ``auto``, before it is compiled
EAGER_BUDGET = 1 << 20

_VARIANTS = 256  # dynamo's recompile limit while a new variant compiles (its default is 8)
_EXAMPLE_ROWS = 1024  # the background compile's stand-ins have at most this many rows

Compiler = Callable[[Callable[..., Any]], Callable[..., Any]]


def backend() -> str:
    """``"auto"``, ``"compiled"`` or ``"eager"``, from ``LOWPREC_BACKEND`` (default ``auto``)."""
    choice = os.environ.get("LOWPREC_BACKEND", "auto")
    if choice not in ("auto", "compiled", "eager"):
        raise ValueError(f"LOWPREC_BACKEND={choice!r} is unknown; allowed: auto, compiled, eager")
    return choice


def _dynamic(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=True)


def stand_ins(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Zero tensors shaped like the tensors in ``args`` (dtype, device, strides, storage
    offset, the first dimension cut to :data:`_EXAMPLE_ROWS`; one stand-in per distinct
    tensor, so aliasing is kept), detached; other arguments as they are."""
    made: dict[int, torch.Tensor] = {}

    def stand_in(t: torch.Tensor) -> torch.Tensor:
        size = list(t.shape)
        if size and size[0] > _EXAMPLE_ROWS:
            size[0] = _EXAMPLE_ROWS
        span = sum((n - 1) * s for n, s in zip(size, t.stride(), strict=True)) + 1
        base = torch.zeros(t.storage_offset() + max(span, 0), dtype=t.dtype, device=t.device)
        return base.as_strided(size, t.stride(), t.storage_offset()).detach()

    for a in args:
        if isinstance(a, torch.Tensor) and id(a) not in made:
            made[id(a)] = stand_in(a)
    return tuple(made[id(a)] if isinstance(a, torch.Tensor) else a for a in args)


class Compiled:
    """``fn`` run eagerly or by ``compiler(fn)`` (``torch.compile(fn, dynamic=True)``), per
    the module doc.

    ``self(variant, work, *args)`` calls ``fn(*args)``; ``variant`` (hashable) names the
    compiled graph the call needs, ``work`` its element count (for ``auto``'s budget).
    """

    def __init__(self, fn: Callable[..., Any], what: str, compiler: Compiler = _dynamic) -> None:
        self.fn, self.what, self.compiler = fn, what, compiler
        self.failed = False
        self._compiled: Callable[..., Any] | None = None
        self._eager_work: dict[Hashable, int] = {}
        self._ready: set[Hashable] = set()  # variants compiled in this process
        self._queued: set[Hashable] = set()  # handed to the background thread
        self._jobs: queue.SimpleQueue[tuple[Hashable, tuple[Any, ...], bool]] | None = None
        self._error: Exception | None = None  # of a background compile
        self._lock = threading.Lock()  # one compile at a time

    def __call__(self, variant: Hashable, work: int, *args: Any) -> Any:
        choice = backend()
        if choice == "eager" or self.failed:
            return self.fn(*args)
        if variant in self._ready:
            assert self._compiled is not None
            return self._compiled(*args)
        if choice == "compiled":
            return self._compile(variant, args)
        if self._error is not None:
            self._give_up(self._error)
        elif variant not in self._queued:
            done = self._eager_work.get(variant, 0) + work
            self._eager_work[variant] = done
            if done >= EAGER_BUDGET:
                self._submit(variant, args)
        return self.fn(*args)

    def wait(self) -> None:
        """Block until the variants handed to the background thread are compiled (or one
        failed): for tests and benchmarks."""
        while self._queued - self._ready and self._error is None:
            threading.Event().wait(0.01)

    def _compile(self, variant: Hashable, args: tuple[Any, ...]) -> Any:
        """Call ``args`` compiled, compiling ``variant`` first (in whichever thread)."""
        with self._lock:
            if self._compiled is None:
                self._compiled = self.compiler(self.fn)
            # dynamo (loaded by torch.compile) compiles the new variant under a higher limit
            dynamo = sys.modules.get("torch._dynamo")
            with dynamo.config.patch(recompile_limit=_VARIANTS) if dynamo else nullcontext():
                result = self._compiled(*args)
        self._ready.add(variant)
        return result

    def _submit(self, variant: Hashable, args: tuple[Any, ...]) -> None:
        self._queued.add(variant)
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=self._work, name=f"lowprec: compile the {self.what}").start()
        self._jobs.put((variant, stand_ins(args), torch.is_grad_enabled()))

    def _work(self) -> None:
        assert self._jobs is not None
        main = threading.main_thread()
        while main.is_alive():  # at exit: finish the compile under way, start no other
            try:
                variant, example, grad = self._jobs.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                with torch.set_grad_enabled(grad):
                    self._compile(variant, example)
            except Exception as exc:  # reported by the next call (in the caller's thread)
                self._error = exc
                return

    def _give_up(self, exc: Exception) -> None:
        self.failed = True
        warnings.warn(
            f"lowprec: torch.compile of the {self.what} failed ({type(exc).__name__}: "
            f"{exc}); using the eager code (same bits, slower). Set LOWPREC_BACKEND=eager "
            "to silence this.", RuntimeWarning, stacklevel=3)
