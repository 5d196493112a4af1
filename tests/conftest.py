"""Test configuration shared by the numerics tests.

``LOWPREC_BACKEND`` defaults to ``eager`` here so that the suite does not spend its time
compiling kernels on small CI machines; export ``LOWPREC_BACKEND=compiled`` to run the same
bit-exactness tests against the compiled kernel.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LOWPREC_BACKEND", "eager")

# make ``import reference`` and the floors' shared test helpers (``from test_runs import
# tiny_digits``) importable however pytest was invoked
_here = Path(__file__).resolve().parent
for _dir in (_here, *(_here / f for f in ("numerics", "train", "cost", "study"))):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))


@pytest.fixture
def one_graph_per_variant() -> Iterator[None]:
    """Fails the test if a kernel signature needed a second graph during it: a call whose
    sizes broke an assumption of the graph traced for its signature (a variant key
    missing one of the trace's specialisations: sizes or offsets of 0 and 1, equal sizes)
    compiles another one, again for every such call (:mod:`lowprec.numerics.graphs`).
    Off the CPU, where dynamo compiles, the same through its log: its recompile limit is 1
    during the test, lowprec compiles each new variant under a higher one, so a graph
    compiled outside it warns with ``recompile_limit`` at once. (Not
    ``monkeypatch.setattr``: its undo deletes the key from torch's config module.)"""
    import torch

    from lowprec.numerics import graphs

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    before = len(graphs.GRAPHS)
    try:
        with torch._dynamo.config.patch(recompile_limit=1):
            yield
    finally:
        logger.removeHandler(handler)
    fell_back = [r.getMessage() for r in records if "recompile_limit" in r.getMessage()]
    assert not fell_back, fell_back
    new = graphs.GRAPHS[before:]
    assert len(new) == len(set(new)), [g for g in new if new.count(g) > 1]


def _decline_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowprec.numerics import block_native, fmtscale_native

    for module in (block_native, fmtscale_native):
        monkeypatch.setattr(module, "_function", lambda: None)


@pytest.fixture
def torch_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Roundings on the torch path (eager or compiled kernel): the C++ rounding kernels of
    :mod:`lowprec.numerics` (``block_native``, ``fmtscale_native``) declined."""
    _decline_native(monkeypatch)


@pytest.fixture(params=["native", "torch"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test on both implementations of CPU float32 rounding: the C++ kernels (where they
    apply; skipped without a compiler) and the torch path."""
    from lowprec.numerics import block_native, fmtscale_native

    if request.param == "torch":
        _decline_native(monkeypatch)
    elif block_native._function() is None or fmtscale_native._function() is None:
        pytest.skip("the native kernels could not be built here (no C++ compiler?)")
    return request.param
