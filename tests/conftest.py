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
    """Fails the test if a compiled variant fell out of the compiled path: dynamo's
    recompile limit is 1 during the test, and lowprec compiles each new variant under a
    higher one, so a graph compiled outside it (a variant key missing one of dynamo's
    specialisations, past which dynamo would silently run eagerly) warns with
    ``recompile_limit`` at once. (Not ``monkeypatch.setattr``: its undo deletes the key from
    torch's config module.)"""
    import torch

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        with torch._dynamo.config.patch(recompile_limit=1):
            yield
    finally:
        logger.removeHandler(handler)
    fell_back = [r.getMessage() for r in records if "recompile_limit" in r.getMessage()]
    assert not fell_back, fell_back
