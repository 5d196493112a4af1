"""Warm-up to the state a long training run reaches, shared by the step benchmarks.

Under ``LOWPREC_BACKEND=auto`` (the default) a kernel variant runs eagerly until its
eager calls have taken :data:`lowprec.numerics.backend.EAGER_SECONDS`, then compiled
(:mod:`lowprec.numerics.backend`). A long run (a CIFAR-10 study run: thousands of steps)
therefore steps with every variant that costs more than a fraction of a millisecond per
step compiled; the variants that stay eager cost it less than that. Warming up step by
step until each variant crossed its budget would take minutes per model, so the warm-up
here runs with the budget at 0 (a variant is compiled from its second call on): one
round, the compiler's start-up awaited, then ``rounds`` more rounds, so that variants first
called in a later step (telemetry is recorded on the first pass only, say) are compiled
too. The timed steps that follow run with the library's defaults untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from unittest import mock

from lowprec.numerics import backend


def warm_up(steps: Iterable[Callable[[], object]], rounds: int) -> None:
    """Step every closure of ``steps`` into the steady state of a long run (module doc)."""
    steps = list(steps)
    with mock.patch.object(backend, "EAGER_SECONDS", 0.0):
        for step in steps:
            step()
        backend.wait_all()
        for _ in range(max(rounds, 2)):
            for step in steps:
                step()
