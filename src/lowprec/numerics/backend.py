"""Compiled or eager: one helper runs lowprec's integer kernels either way (same bits).

``LOWPREC_BACKEND`` chooses:

* ``eager``: the plain torch functions, never compiled;
* ``compiled``: every call through ``torch.compile`` (errors raise);
* ``auto`` (default): compile only where it pays off. Compiling one *variant* (one graph:
  a rounding mode, dtypes, ...; the caller names it) costs seconds on a small CPU the first
  time, a fraction of that when torch's on-disk caches hold it (see :mod:`.kernel`), while
  the eager kernel costs about a microsecond per element there. So a variant runs eagerly
  until the elements it has been called on reach :data:`EAGER_BUDGET` (counting the call
  that crosses it), then compiled: small tensors and the first calls do not wait for a
  compiler, large ones do not pay the eager price. A failing ``torch.compile`` (no C++
  toolchain, say) warns once and the helper stays eager for the process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["EAGER_BUDGET", "Compiled", "backend"]

#: elements a variant is called on eagerly, under ``auto``, before it is compiled
EAGER_BUDGET = 1 << 18

_VARIANTS = 256  # dynamo's recompile limit while a new variant compiles (its default is 8)


def backend() -> str:
    """``"auto"``, ``"compiled"`` or ``"eager"``, from ``LOWPREC_BACKEND`` (default ``auto``)."""
    choice = os.environ.get("LOWPREC_BACKEND", "auto")
    if choice not in ("auto", "compiled", "eager"):
        raise ValueError(f"LOWPREC_BACKEND={choice!r} is unknown; allowed: auto, compiled, eager")
    return choice


class Compiled:
    """``fn`` run eagerly or by ``torch.compile(fn, dynamic=True)``, per the module doc.

    ``self(variant, work, *args)`` calls ``fn(*args)``; ``variant`` (hashable) names the
    compiled graph the call needs, ``work`` its element count (for ``auto``'s budget).
    """

    def __init__(self, fn: Callable[..., Any], what: str) -> None:
        self.fn, self.what = fn, what
        self.failed = False
        self._compiled: Callable[..., Any] | None = None
        self._eager_work: dict[Hashable, int] = {}
        self._ready: set[Hashable] = set()  # variants compiled in this process

    def __call__(self, variant: Hashable, work: int, *args: Any) -> Any:
        choice = backend()
        if choice == "eager" or self.failed:
            return self.fn(*args)
        if choice == "auto" and variant not in self._ready:
            done = self._eager_work.get(variant, 0) + work
            self._eager_work[variant] = done
            if done < EAGER_BUDGET:
                return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            if variant in self._ready:
                return self._compiled(*args)
            with torch._dynamo.config.patch(recompile_limit=_VARIANTS):
                result = self._compiled(*args)
            self._ready.add(variant)
            return result
        except Exception as exc:
            if choice == "compiled":
                raise
            self.failed = True
            warnings.warn(
                f"lowprec: torch.compile of the {self.what} failed ({type(exc).__name__}: "
                f"{exc}); using the eager code (same bits, slower). Set LOWPREC_BACKEND=eager "
                "to silence this.", RuntimeWarning, stacklevel=3)
            return self.fn(*args)
