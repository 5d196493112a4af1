"""CIFAR-10 (python version): find, download and extract the archive, read the pickles.

Pickles go through :func:`~.unpickle.restricted_pickle_load`; a batch must hold a uint8
``data`` array [N, 3072] and N labels in 0..9, else :class:`DataError` names the file.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import locate
from .dataset import Dataset, content_digest
from .locate import DataError
from .unpickle import restricted_pickle_load

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "find_cifar10", "load",
           "read_cifar10_batch", "read_cifar10_folder"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
#: images per batch file (the official files hold exactly this many)
CIFAR10_MAX_BATCH = 10_000
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_JPEG_NOTE = (
    "dev copy: this copy may be a JPEG-recompressed rebuild of CIFAR-10 (same images and "
    "labels, pixels differ slightly from the official archive; accuracies can be a little "
    "lower than published figures)"
)


def _is_cifar_folder(path: Path) -> bool:
    return (path / CIFAR10_TRAIN_BATCHES[0]).is_file()



def _cifar_candidates(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    dev = [(d / CIFAR10_FOLDER, "dev copy") for d in locate.dev_copy_dirs()]
    return locate.candidates(data_dir, CIFAR10_FOLDER, "CIFAR10_DIR", dev)


def _looks_like_dev_copy(folder: Path) -> bool:
    resolved = folder.resolve()
    if any(resolved == (dev / CIFAR10_FOLDER) for dev in locate.dev_copy_dirs()):
        return True
    parts = resolved.parts
    return any(parts[i : i + 2] == ("shared", "datasets") for i in range(len(parts) - 1))


def find_cifar10(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str] | None:
    """Find a ``cifar-10-batches-py`` folder; return ``(folder, how it was found)`` or ``None``.

    Search order: ``data_dir`` (the folder itself or its parent), ``$LOWPREC_DATA_DIR`` (parent),
    ``$CIFAR10_DIR`` (the folder itself), the cache ``~/.cache/lowprec/`` (see
    :func:`cache_dir`), then the development copy ``../shared/datasets/cifar-10-batches-py``
    relative to the current directory and to the repository root.
    """
    for path, how in _cifar_candidates(data_dir):
        if _is_cifar_folder(path):
            return path, how
    return None



def _extract_cifar_tarball(archive: Path, dest_parent: Path) -> Path:
    """Extract ``cifar-10-batches-py/`` from ``archive`` into ``dest_parent`` atomically."""
    final = dest_parent / CIFAR10_FOLDER
    try:
        dest_parent.mkdir(parents=True, exist_ok=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=".cifar-extract-", dir=dest_parent))
    except OSError as exc:
        raise DataError(f"cannot write the cache {dest_parent}: {exc}") from exc
    try:
        try:
            with tarfile.open(archive, "r:gz") as tf:
                for m in locate.safe_members(tf, archive, CIFAR10_FOLDER):
                    target = tmp_root / m.name
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    if src is None:  # pragma: no cover - isfile() members always have data
                        raise DataError(f"{archive}: cannot read member {m.name!r}")
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{archive}: not a readable .tar.gz archive ({exc})") from exc
        extracted = tmp_root / CIFAR10_FOLDER
        if not _is_cifar_folder(extracted):
            raise DataError(f"{archive}: archive has no {CIFAR10_FOLDER}/data_batch_1")
        try:
            os.replace(extracted, final)
        except OSError:
            if not _is_cifar_folder(final):  # a concurrent extraction that won is fine
                raise DataError(f"cannot move the extracted folder to {final}") from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def _cifar_not_found_message(data_dir: str | os.PathLike[str] | None, why: str) -> str:
    cache = locate.cache_dir()
    return locate.not_found(
        "CIFAR-10", "a 'cifar-10-batches-py' folder (data_batch_1..5, test_batch, "
        "batches.meta)", _cifar_candidates(data_dir), why, [
            f"download {CIFAR10_URL} (MD5 {CIFAR10_MD5}) and extract it so that "
            f"{cache / CIFAR10_FOLDER / 'data_batch_1'} exists, or just put the .tar.gz at "
            f"{cache / CIFAR10_TARBALL}",
            "set LOWPREC_DATA_DIR=/path/to/parent (the folder that contains "
            "cifar-10-batches-py/)",
            "set CIFAR10_DIR=/path/to/cifar-10-batches-py",
            "pass data_dir=/path/to/cifar-10-batches-py (or its parent) to load_dataset()"])


def _obtain_cifar10(
    data_dir: str | os.PathLike[str] | None, download: bool, timeout: float
) -> tuple[Path, str]:
    found = find_cifar10(data_dir)
    if found is not None:
        return found
    cache = locate.cache_dir()
    tarball = cache / CIFAR10_TARBALL
    how = "extracted from the official archive (MD5 verified)"
    if not tarball.is_file():
        if not download:
            raise DataError(
                _cifar_not_found_message(data_dir, "Download disabled (download=False).")
            )
        try:
            locate.download(CIFAR10_URL, tarball, CIFAR10_MD5, timeout=timeout)
        except DataError as exc:
            raise DataError(_cifar_not_found_message(data_dir, str(exc) + ".")) from exc
        how = f"downloaded from {CIFAR10_URL} (MD5 verified)"
    else:
        got = locate.md5_file(tarball)
        if got != CIFAR10_MD5:
            raise DataError(
                f"{tarball}: MD5 {got} does not match the official {CIFAR10_MD5}; "
                "delete it (or replace it with the official archive) and retry"
            )
    folder = _extract_cifar_tarball(tarball, cache)
    tarball.unlink(missing_ok=True)
    return folder, how



def _get(d: dict[Any, Any], key: str, source: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{source}: missing key {key!r} (found keys {sorted(map(repr, d))})")


def _read_dict(path: Path) -> dict[Any, Any]:
    """The dict a CIFAR-10 pickle holds (restricted unpickling); :class:`DataError` else."""
    try:
        with open(path, "rb") as fh:
            obj = restricted_pickle_load(fh, str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _labels(labels: Any, n: int, path: Path) -> np.ndarray:
    """``n`` labels in 0..9 as int64. A list is checked element by element *before* numpy
    sees it: nested lists that a pickle shares by reference would expand to gigabytes."""
    if isinstance(labels, list):
        if len(labels) != n:
            raise DataError(f"{path}: {len(labels)} labels for {n} images (counts must match)")
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels):
            raise DataError(f"{path}: 'labels' must be a flat list of integers")
        lab = np.asarray(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 and (
            labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        if labels.shape[0] != n:
            raise DataError(f"{path}: {labels.shape[0]} labels for {n} images "
                            "(counts must match)")
        lab = labels.astype(np.int64)
    else:
        raise DataError(f"{path}: 'labels' must be a flat list of integers")
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise DataError(f"{path}: labels outside 0..9 (min {lab.min()}, max {lab.max()})")
    return lab


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file; return ``(images uint8 [N,3,32,32], labels int64 [N])``.

    Accepts bytes or str keys; ``N`` is at most :data:`CIFAR10_MAX_BATCH`. Raises
    :class:`DataError` naming ``path`` for anything wrong.
    """
    path = Path(path)
    obj = _read_dict(path)
    data = _get(obj, "data", str(path))
    labels = _get(obj, "labels", str(path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 numpy array, got {kind}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] > CIFAR10_MAX_BATCH:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072] with "
                        f"N <= {CIFAR10_MAX_BATCH}")
    lab = _labels(labels, data.shape[0], path)
    images = np.require(data.reshape(-1, 3, 32, 32), requirements=["C", "W"])
    return images, lab


def _read_cifar_meta(folder: Path) -> tuple[str, ...]:
    path = folder / CIFAR10_META
    if not path.is_file():
        return CIFAR10_CLASSES
    obj = _read_dict(path)
    names = _get(obj, "label_names", str(path))
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{path}: 'label_names' must be a list of 10 names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", "replace")
        if not isinstance(n, str):
            raise DataError(f"{path}: 'label_names' entries must be strings")
        out.append(n)
    return tuple(out)


def read_cifar10_folder(
    folder: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a ``cifar-10-batches-py`` folder.

    Returns ``(train_images, train_labels, test_images, test_labels, class_names)`` with uint8
    NCHW images and int64 labels.  Missing or malformed files raise :class:`DataError`.
    """
    folder = Path(folder)
    for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing (incomplete CIFAR-10 folder)")
    parts = [read_cifar10_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read_cifar10_batch(folder / CIFAR10_TEST_BATCH)
    return train_x, train_y, test_x, test_y, _read_cifar_meta(folder)


def load(
    data_dir: str | os.PathLike[str] | None, download: bool, normalize: str, timeout: float
) -> Dataset:
    folder, how = _obtain_cifar10(data_dir, download, timeout)
    train_x, train_y, test_x, test_y, names = read_cifar10_folder(folder)
    digest = content_digest(train_x, train_y, test_x, test_y)
    provenance = f"CIFAR-10 python version ({how}; content sha256 {digest})"
    if how == "dev copy" or _looks_like_dev_copy(folder):
        provenance += "; " + _JPEG_NOTE
    return Dataset(
        "cifar10",
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=10,
        provenance=provenance,
        class_names=names,
        normalize=normalize,
        augmentation="crop_flip",
    )
