"""Fashion-MNIST: find or download the four IDX files, parse them with size checks."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import locate
from .dataset import Dataset, content_digest
from .locate import DataError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "FASHION_MNIST_MIRRORS",
           "find_fashion_mnist", "load", "read_idx"]

FASHION_MNIST_FOLDER = "fashion-mnist"
#: the largest IDX payload read (Fashion-MNIST's training images: 47,040,000 bytes)
IDX_MAX_BYTES = 64 << 20
#: Official download locations (Zalando's S3 bucket, then the GitHub repository).
FASHION_MNIST_MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
#: role -> (file name without ``.gz``, MD5 of the official ``.gz`` file)
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
}
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)


def _find_idx_file(folder: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        p = folder / name
        if p.is_file():
            return p
    return None


def _fashion_candidates(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    debian = [(Path(d), "Debian package dataset-fashion-mnist") for d in FASHION_MNIST_SYSTEM_DIRS]
    return locate.candidates(data_dir, FASHION_MNIST_FOLDER, "FASHION_MNIST_DIR", debian)


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str] | None:
    """Find a folder holding the Fashion-MNIST IDX files; return ``(folder, how)`` or ``None``.

    Search order: ``data_dir`` (the folder itself or ``data_dir/fashion-mnist``),
    ``$LOWPREC_DATA_DIR/fashion-mnist``, ``$FASHION_MNIST_DIR``, the cache
    ``~/.cache/lowprec/fashion-mnist``, then Debian's ``/usr/share/datasets/fashion-mnist``.
    A folder counts when it holds ``train-images-idx3-ubyte`` (``.gz`` or uncompressed).
    """
    for path, how in _fashion_candidates(data_dir):
        if _find_idx_file(path, FASHION_MNIST_FILES["train_images"][0]) is not None:
            return path, how
    return None


def _fashion_not_found_message(data_dir: str | os.PathLike[str] | None, why: str) -> str:
    names = ", ".join(base + ".gz" for base, _ in FASHION_MNIST_FILES.values())
    dest = locate.cache_dir() / FASHION_MNIST_FOLDER
    return locate.not_found(
        "Fashion-MNIST", f"its IDX files ({names}; gzipped or not)",
        _fashion_candidates(data_dir), why, [
            f"put the four files in {dest}/ (official MD5s are listed in "
            "lowprec.study.data.FASHION_MNIST_FILES)",
            "on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them in "
            "/usr/share/datasets/fashion-mnist)",
            "set LOWPREC_DATA_DIR=/path/to/parent (containing fashion-mnist/) or "
            "FASHION_MNIST_DIR=/path/to/folder",
            "pass data_dir=/path/to/folder to load_dataset()"])


def _obtain_fashion_mnist(
    data_dir: str | os.PathLike[str] | None, download: bool, timeout: float
) -> tuple[Path, str]:
    found = find_fashion_mnist(data_dir)
    if found is not None:
        return found
    if not download:
        raise DataError(_fashion_not_found_message(data_dir, "Download disabled (download=False)."))
    dest = locate.cache_dir() / FASHION_MNIST_FOLDER
    # train-images marks a usable folder (see find_fashion_mnist), so fetch it last: an
    # interrupted download then never leaves a folder that looks complete.
    order = sorted(FASHION_MNIST_FILES, key=lambda role: role == "train_images")
    for base, md5 in (FASHION_MNIST_FILES[role] for role in order):
        target = dest / (base + ".gz")
        if target.is_file() and locate.md5_file(target) == md5:
            continue
        errors = []
        for mirror in FASHION_MNIST_MIRRORS:
            try:
                locate.download(mirror + base + ".gz", target, md5, timeout=timeout)
                break
            except DataError as exc:
                errors.append(str(exc))
        else:
            raise DataError(_fashion_not_found_message(data_dir, "; ".join(errors) + "."))
    return dest, "downloaded from " + FASHION_MNIST_MIRRORS[0] + " or mirror (MD5 verified)"


_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_exactly(fh: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream), read in bounded chunks."""
    parts, left = [], n
    while left > 0:
        chunk = fh.read(min(left, 1 << 24))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None,
             max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Parse an IDX file (optionally gzipped; detected by its magic bytes) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, the number of dimensions,
    optionally equal to ``ndim``), that the payload the header declares is at most
    ``max_bytes`` (checked before reading it: a small file cannot claim gigabytes, and a
    gzip stream is decompressed only that far) and that the payload has exactly that size.
    Raises :class:`DataError` naming the file otherwise.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw_fh:
            gz = raw_fh.read(2) == b"\x1f\x8b"
            raw_fh.seek(0)
            fh: BinaryIO = gzip.GzipFile(fileobj=raw_fh) if gz else raw_fh  # type: ignore[assignment]
            magic = _read_exactly(fh, 4)
            if len(magic) < 4:
                raise DataError(f"{path}: truncated IDX file ({len(magic)} bytes)")
            zero, code, dims_n = magic[:2], magic[2], magic[3]
            if zero != b"\x00\x00" or code not in _IDX_DTYPES or dims_n == 0:
                raise DataError(f"{path}: bad IDX magic number {magic.hex()}")
            if ndim is not None and dims_n != ndim:
                raise DataError(f"{path}: IDX file has {dims_n} dimensions, expected {ndim}")
            head = _read_exactly(fh, 4 * dims_n)
            if len(head) < 4 * dims_n:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(">" + "I" * dims_n, head)
            dtype = _IDX_DTYPES[code]
            expected = math.prod(dims) * dtype.itemsize
            if expected > max_bytes:
                raise DataError(f"{path}: IDX header says {dims} ({expected} bytes), more than "
                                f"the {max_bytes} bytes allowed: not a data set file")
            payload = _read_exactly(fh, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    got = len(payload)
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        shown = f"{got} bytes" if got <= expected else "more"
        raise DataError(
            f"{path}: IDX file {what}: header says {dims} ({expected} bytes), payload {shown}"
        )
    arr = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _read_fashion_folder(
    folder: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for role, (base, _md5) in FASHION_MNIST_FILES.items():
        p = _find_idx_file(folder, base)
        if p is None:
            raise DataError(f"{folder / (base + '.gz')}: missing (incomplete Fashion-MNIST folder)")
        paths[role] = p
        arrays[role] = read_idx(p, ndim=3 if role.endswith("images") else 1)
    for split in ("train", "test"):
        imgs, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.dtype != np.uint8 or labs.dtype != np.uint8:
            raise DataError(f"{paths[split + '_images']}: expected unsigned-byte IDX files")
        if imgs.shape[0] != labs.shape[0]:
            raise DataError(
                f"{paths[split + '_labels']}: {labs.shape[0]} labels for "
                f"{imgs.shape[0]} images in {paths[split + '_images'].name}"
            )
        if labs.size and labs.max() > 9:
            raise DataError(f"{paths[split + '_labels']}: label {labs.max()} outside 0..9")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"{folder}: train images {arrays['train_images'].shape[1:]} and test images "
            f"{arrays['test_images'].shape[1:]} differ in size"
        )
    return (
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
    )


def load(
    data_dir: str | os.PathLike[str] | None, download: bool, normalize: str, timeout: float
) -> Dataset:
    folder, how = _obtain_fashion_mnist(data_dir, download, timeout)
    train_x, train_y, test_x, test_y = _read_fashion_folder(folder)
    return Dataset(
        "fashion-mnist",
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=10,
        provenance=f"Fashion-MNIST IDX files ({how}; content sha256 "
                   f"{content_digest(train_x, train_y, test_x, test_y)})",
        class_names=FASHION_MNIST_CLASSES,
        normalize=normalize,
    )
