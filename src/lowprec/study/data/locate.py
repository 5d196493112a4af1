"""Where data sets are found and how they are downloaded: candidate folders (an argument,
environment variables, the cache, development copies), checksummed atomic downloads and
safe tar members. Every problem raises :class:`DataError` naming the file or URL."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import IO

from ...train.files import atomic_write

__all__ = ["DOWNLOAD_TIMEOUT_S", "DataError", "cache_dir", "candidates", "dev_copy_dirs",
           "download", "md5_file", "not_found", "safe_members"]

DOWNLOAD_TIMEOUT_S = 30.0
_REPO_ROOT = Path(__file__).resolve().parents[4]  # src/lowprec/study/data/locate.py


class DataError(RuntimeError):
    """A data set could not be found, downloaded or parsed (the message says which file and why)."""


def cache_dir() -> Path:
    """Return the download cache: ``$LOWPREC_CACHE_DIR`` if set, else ``~/.cache/lowprec``."""
    env = os.environ.get("LOWPREC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lowprec"


def dev_copy_dirs() -> list[Path]:
    """Parents of the development copies: ``../shared/datasets`` from the cwd and the repo root."""
    out: list[Path] = []
    seen: set[Path] = set()
    for base in (Path.cwd(), _REPO_ROOT):
        cand = (base / ".." / "shared" / "datasets").resolve()
        if cand not in seen and cand.is_dir():
            seen.add(cand)
            out.append(cand)
    return out



def candidates(data_dir: str | os.PathLike[str] | None, folder: str, own_env: str,
                extra: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Where to look for a data set's ``folder``, in order, with how each was found:
    ``data_dir`` (the folder itself or its parent), ``$LOWPREC_DATA_DIR/<folder>``,
    ``$<own_env>`` (the folder itself), the cache, then ``extra``."""
    cands: list[tuple[Path, str]] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        cands += [(d, "data_dir argument"), (d / folder, "data_dir argument")]
    env = os.environ.get("LOWPREC_DATA_DIR")
    if env:
        cands.append((Path(env).expanduser() / folder, "$LOWPREC_DATA_DIR"))
    env = os.environ.get(own_env)
    if env:
        cands.append((Path(env).expanduser(), f"${own_env}"))
    cands.append((cache_dir() / folder, "cache"))
    return cands + extra



def not_found(what: str, looked_for: str, where: list[tuple[Path, str]], why: str,
              fixes: list[str]) -> str:
    """The message for a data set found nowhere: where it was looked for, why it was not
    downloaded, and the ways to fix it."""
    looked = "\n".join(f"  - {p} ({how})" for p, how in where)
    ways = ";\n".join(f"  * {fix}" for fix in fixes)
    return (f"{what} not found. Looked for {looked_for} in:\n{looked}\n{why}\n"
            f"To fix, do one of:\n{ways}.")


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically (:func:`~lowprec.train.files.atomic_write`)
    and check its MD5.

    Raises :class:`DataError` on any network error or checksum mismatch; on failure nothing
    is left at ``dest``.
    """

    def fetch(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise DataError(f"download of {url} failed: {exc}") from exc
        got = digest.hexdigest()
        if got != md5:
            raise DataError(
                f"download of {url} failed its checksum: MD5 {got}, expected {md5}; "
                "the file was discarded"
            )

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write the download cache {dest.parent}: {exc}") from exc
    try:
        atomic_write(dest, fetch)
    except OSError as exc:  # the temporary file could not be written or renamed
        raise DataError(f"cannot write the download cache {dest.parent}: {exc}") from exc


def safe_members(tf: tarfile.TarFile, archive: Path, top: str) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        p = PurePosixPath(m.name)
        if m.name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts:
            raise DataError(f"{archive}: refusing unsafe member path {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{archive}: refusing member {m.name!r} (only files and folders)")
        if p.parts and p.parts[0] not in (top, "."):
            raise DataError(f"{archive}: unexpected member {m.name!r} outside {top}/")
    return members

