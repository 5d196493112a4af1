"""Files written atomically: one writer for checkpoints, run files, reports and downloads.

:func:`atomic_write` calls ``write(fh)`` on a temporary file ``.<name>.<8 hex>.tmp`` in the
target's folder, flushes and ``fsync``s it, then ``os.replace``s it over the target, so a
reader sees the old file or the new one, never a partial one. If ``write`` raises (a failed
checksum, a full disk, Ctrl-C) the temporary file is removed and the target is untouched.
A process killed mid-write can leave its temporary file behind:
:func:`remove_temporary_files` clears those of a folder (what a resumed run does).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["TEMPORARY_GLOB", "atomic_write", "remove_temporary_files"]

#: what :func:`atomic_write`'s temporary files look like
TEMPORARY_GLOB = ".*.*.tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(fh)`` on a temporary file next to ``path``, then move it onto ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temporary_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove :func:`atomic_write`'s leftovers in ``folder`` (a writer killed mid-write);
    returns what was removed. Call it only while no other process writes there."""
    removed = []
    for tmp in Path(folder).glob(TEMPORARY_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
