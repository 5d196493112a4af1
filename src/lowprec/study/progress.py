"""Progress bars that only a person watching sees.

A bar redraws itself with carriage returns and terminal escape codes: on a terminal that is
what one wants, in a log file or a pipe it is noise. :func:`bar` therefore draws only when
``sys.stderr`` is a terminal (or in a Jupyter notebook, where ``tqdm.auto`` draws a
widget); elsewhere the callers print one plain line per epoch or run instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import autonotebook, std
from tqdm.auto import tqdm

__all__ = ["bar", "interactive"]


def interactive() -> bool:
    """Whether progress bars are drawn: ``sys.stderr`` is a terminal, or this is a notebook."""
    return sys.stderr.isatty() or autonotebook.tqdm is not std.tqdm


def bar(iterable: Iterable[Any] | None = None, *, quiet: bool = False, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (``kwargs`` as tqdm's), disabled when ``quiet`` or
    not :func:`interactive`; a disabled bar still iterates and ignores updates."""
    return tqdm(iterable, disable=quiet or not interactive(), **kwargs)
