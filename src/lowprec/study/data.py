"""Data sets for the training experiments: CIFAR-10, Fashion-MNIST and sklearn's 8x8 digits.

Public API::

    from lowprec.data import load_dataset, Dataset, DataError, DATASETS

    ds = load_dataset("cifar10")                 # CIFAR-10 python-version pickles
    ds = load_dataset("fashion-mnist")           # the four IDX files
    ds = load_dataset("digits")                  # bundled with scikit-learn: no files, no network
    ds.train_x, ds.train_y, ds.test_x, ds.test_y # float32 NCHW (normalised), int64 labels
    for x, y in ds.loader("train", batch_size=100, shuffle=True, augment=True, generator=g):
        ...

Design notes
------------
* Images are kept in memory as ``uint8`` (CIFAR-10 train: 150 MB instead of 600 MB as float32)
  and normalised per batch inside :meth:`Dataset.loader`; measured on a 2-core machine this costs
  about 0.3 s per CIFAR-10 epoch at batch 100, while converting the whole training set at once
  takes about 3 s.  :attr:`Dataset.train_x` / :attr:`Dataset.test_x` convert the whole split on
  first access and cache the result; batches from the loader are bit-identical to indexing them.
* Normalisation (``normalize=``), with statistics always taken from the *training* split:

  - ``"standard"`` (default): per-channel ``(x - mean_c) / std_c`` on the 0-255 (0-16 for digits)
    pixel scale, with the population mean/std of every channel over all training pixels
    (computed exactly from a 256-bin histogram).  Inputs come out with mean 0 and std 1.
  - ``"caffe"``: Caffe-style mean subtraction: subtract the per-pixel mean *image* of the
    training set and keep the 0-255 scale (what Caffe's ``cifar10_quick`` / ``cifar10_full``
    examples use via ``mean.binaryproto``).  Inputs come out roughly in [-130, 130].
  - ``"none"``: raw pixel values as float32.

* Augmentation (CIFAR-10 only, train split only, ``augment=True``): random 32x32 crop from the
  image zero-padded by 4 pixels on every side, then a random horizontal flip with probability
  1/2, both drawn from the ``torch.Generator`` passed to the loader and applied to the whole
  batch with tensor ops (two ``gather`` calls for the crop, one ``torch.where`` for the flip).
  The padding is applied to the *normalised* batch, so "zero" is the training mean (per
  channel for ``"standard"``, per pixel for ``"caffe"``), not a black pixel.  For the other data
  sets ``augment=True`` is accepted and does nothing (:attr:`Dataset.augmentation` is ``None``).
* Batching: the train split drops its last partial batch (every step sees ``batch_size``
  images, like Caffe's and most CIFAR training loops); the test split keeps it so evaluation
  covers every image.  ``drop_last=`` overrides this.
* Files are untrusted.  CIFAR-10 pickles are read with a restricted unpickler that only admits
  the handful of numpy callables needed to rebuild arrays; every problem with a file (truncated,
  wrong shape, missing key, wrong label count, forbidden class) raises :class:`DataError`
  naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "NORMALIZE_MODES",
    "BatchLoader",
    "DataError",
    "Dataset",
    "cache_dir",
    "find_cifar10",
    "find_fashion_mnist",
    "load_dataset",
    "pad_crop",
    "random_crop_flip",
    "read_cifar10_batch",
    "read_cifar10_folder",
    "read_idx",
    "restricted_pickle_load",
]


class DataError(RuntimeError):
    """A data set could not be found, downloaded or parsed (the message says which file and why)."""


DATASETS: dict[str, str] = {
    "cifar10": "CIFAR-10: 50,000 train / 10,000 test RGB 32x32 images, 10 classes "
    "(python-version pickles; download or local copy)",
    "fashion-mnist": "Fashion-MNIST: 60,000 train / 10,000 test grey 28x28 images, 10 classes "
    "(IDX files; download, local copy or Debian's dataset-fashion-mnist)",
    "digits": "scikit-learn's bundled 8x8 digits: 1,797 grey images, 10 classes, "
    "1,438 train / 359 test; no files, no network",
    "text": "character-level text for language models (gpt_tiny): Debian's fortunes or your own "
    "file (--data-dir / $LOWPREC_TEXT); lowprec.study.text",
}

NORMALIZE_MODES: tuple[str, ...] = ("standard", "caffe", "none")

_ALIASES = {
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "sklearn-digits": "digits",
}

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
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

FASHION_MNIST_FOLDER = "fashion-mnist"
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

DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TEST = 359

DOWNLOAD_TIMEOUT_S = 30.0
_JPEG_NOTE = (
    "dev copy: this copy may be a JPEG-recompressed rebuild of CIFAR-10 (same images and "
    "labels, pixels differ slightly from the official archive; accuracies can be a little "
    "lower than published figures)"
)
_REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the download cache: ``$LOWPREC_CACHE_DIR`` if set, else ``~/.cache/lowprec``."""
    env = os.environ.get("LOWPREC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lowprec"


def _dev_copy_dirs() -> list[Path]:
    """Parents of the development copies: ``../shared/datasets`` from the cwd and the repo root."""
    out: list[Path] = []
    seen: set[Path] = set()
    for base in (Path.cwd(), _REPO_ROOT):
        cand = (base / ".." / "shared" / "datasets").resolve()
        if cand not in seen and cand.is_dir():
            seen.add(cand)
            out.append(cand)
    return out


def _is_cifar_folder(path: Path) -> bool:
    return (path / CIFAR10_TRAIN_BATCHES[0]).is_file()


def _candidates(data_dir: str | os.PathLike[str] | None, folder: str, own_env: str,
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


def _cifar_candidates(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    dev = [(d / CIFAR10_FOLDER, "dev copy") for d in _dev_copy_dirs()]
    return _candidates(data_dir, CIFAR10_FOLDER, "CIFAR10_DIR", dev)


def _looks_like_dev_copy(folder: Path) -> bool:
    resolved = folder.resolve()
    if any(resolved == (dev / CIFAR10_FOLDER) for dev in _dev_copy_dirs()):
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


def _find_idx_file(folder: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        p = folder / name
        if p.is_file():
            return p
    return None


def _fashion_candidates(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    debian = [(Path(d), "Debian package dataset-fashion-mnist") for d in FASHION_MNIST_SYSTEM_DIRS]
    return _candidates(data_dir, FASHION_MNIST_FOLDER, "FASHION_MNIST_DIR", debian)


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


# ---------------------------------------------------------------------------------------------
# Downloading (atomic, checksummed) and safe extraction
# ---------------------------------------------------------------------------------------------


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically (temp file + rename) and check its MD5.

    Raises :class:`DataError` on any network error or checksum mismatch; on failure nothing
    is left at ``dest``.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix="." + dest.name + ".", suffix=".part", dir=dest.parent
        )
    except OSError as exc:
        raise DataError(f"cannot write the download cache {dest.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
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
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _safe_members(tf: tarfile.TarFile, archive: Path, top: str) -> list[tarfile.TarInfo]:
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
                for m in _safe_members(tf, archive, CIFAR10_FOLDER):
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
    cache = cache_dir()
    looked = "\n".join(f"  - {p} ({how})" for p, how in _cifar_candidates(data_dir))
    return (
        "CIFAR-10 not found. Looked for a 'cifar-10-batches-py' folder (data_batch_1..5, "
        f"test_batch, batches.meta) in:\n{looked}\n{why}\n"
        "To fix, do one of:\n"
        f"  * download {CIFAR10_URL} (MD5 {CIFAR10_MD5}) and extract it so that "
        f"{cache / CIFAR10_FOLDER / 'data_batch_1'} exists, or just put the .tar.gz at "
        f"{cache / CIFAR10_TARBALL};\n"
        "  * set LOWPREC_DATA_DIR=/path/to/parent (the folder that contains "
        "cifar-10-batches-py/);\n"
        "  * set CIFAR10_DIR=/path/to/cifar-10-batches-py;\n"
        "  * pass data_dir=/path/to/cifar-10-batches-py (or its parent) to load_dataset()."
    )


def _obtain_cifar10(
    data_dir: str | os.PathLike[str] | None, download: bool, timeout: float
) -> tuple[Path, str]:
    found = find_cifar10(data_dir)
    if found is not None:
        return found
    cache = cache_dir()
    tarball = cache / CIFAR10_TARBALL
    how = f"extracted from {tarball}"
    if not tarball.is_file():
        if not download:
            raise DataError(
                _cifar_not_found_message(data_dir, "Download disabled (download=False).")
            )
        try:
            _download(CIFAR10_URL, tarball, CIFAR10_MD5, timeout=timeout)
        except DataError as exc:
            raise DataError(_cifar_not_found_message(data_dir, str(exc) + ".")) from exc
        how = f"downloaded from {CIFAR10_URL} (MD5 verified)"
    else:
        got = _md5_file(tarball)
        if got != CIFAR10_MD5:
            raise DataError(
                f"{tarball}: MD5 {got} does not match the official {CIFAR10_MD5}; "
                "delete it (or replace it with the official archive) and retry"
            )
    folder = _extract_cifar_tarball(tarball, cache)
    tarball.unlink(missing_ok=True)
    return folder, how


def _fashion_not_found_message(data_dir: str | os.PathLike[str] | None, why: str) -> str:
    looked = "\n".join(f"  - {p} ({how})" for p, how in _fashion_candidates(data_dir))
    names = ", ".join(base + ".gz" for base, _ in FASHION_MNIST_FILES.values())
    dest = cache_dir() / FASHION_MNIST_FOLDER
    return (
        f"Fashion-MNIST not found. Looked for its IDX files ({names}; gzipped or not) in:\n"
        f"{looked}\n{why}\n"
        "To fix, do one of:\n"
        f"  * put the four files in {dest}/ (official MD5s are listed in "
        "lowprec.data.FASHION_MNIST_FILES);\n"
        "  * on Debian/Ubuntu: apt-get install dataset-fashion-mnist "
        "(installs them in /usr/share/datasets/fashion-mnist);\n"
        "  * set LOWPREC_DATA_DIR=/path/to/parent (containing fashion-mnist/) or "
        "FASHION_MNIST_DIR=/path/to/folder;\n"
        "  * pass data_dir=/path/to/folder to load_dataset()."
    )


def _obtain_fashion_mnist(
    data_dir: str | os.PathLike[str] | None, download: bool, timeout: float
) -> tuple[Path, str]:
    found = find_fashion_mnist(data_dir)
    if found is not None:
        return found
    if not download:
        raise DataError(_fashion_not_found_message(data_dir, "Download disabled (download=False)."))
    dest = cache_dir() / FASHION_MNIST_FOLDER
    # train-images marks a usable folder (see find_fashion_mnist), so fetch it last: an
    # interrupted download then never leaves a folder that looks complete.
    order = sorted(FASHION_MNIST_FILES, key=lambda role: role == "train_images")
    for base, md5 in (FASHION_MNIST_FILES[role] for role in order):
        target = dest / (base + ".gz")
        if target.is_file() and _md5_file(target) == md5:
            continue
        errors = []
        for mirror in FASHION_MNIST_MIRRORS:
            try:
                _download(mirror + base + ".gz", target, md5, timeout=timeout)
                break
            except DataError as exc:
                errors.append(str(exc))
        else:
            raise DataError(_fashion_not_found_message(data_dir, "; ".join(errors) + "."))
    return dest, "downloaded from " + FASHION_MNIST_MIRRORS[0] + " or mirror (MD5 verified)"


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pickles: restricted unpickling and validation
# ---------------------------------------------------------------------------------------------


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as numpy's protocol-2 pickles use it (latin-1 only)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} not allowed")
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode argument must be str")
    return obj.encode("latin1", errors)


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside restricted pickles (see :func:`_allowed_globals`)."""

    def __init__(self) -> None:
        """Refuse direct construction."""
        raise pickle.UnpicklingError("numpy.ndarray(...) calls are not allowed")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 pickle may reference: what rebuilds plain numpy arrays."""
    np_reconstruct = np.ndarray.__reduce__(np.zeros(1, dtype=np.uint8))[0]

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # numpy pickles always call _reconstruct(ndarray, (0,), b"b") and then set the real
        # shape and data via __setstate__; insist on that so no large array is preallocated.
        if subtype is not _NdarrayToken:
            raise pickle.UnpicklingError("only plain numpy.ndarray can be unpickled")
        return np_reconstruct(np.ndarray, (0,), b"b")

    allowed: dict[tuple[str, str], Any] = {
        # A token, not the class itself: the pickle can name ndarray as _reconstruct's
        # argument but cannot call the constructor with an arbitrary shape.
        ("numpy", "ndarray"): _NdarrayToken,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    frombuffer = np.frombuffer

    def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
        # Same as numpy's own ``_frombuffer`` used by protocol-5 pickles.
        if order not in ("C", "F"):
            raise pickle.UnpicklingError(f"bad array order {order!r}")
        return frombuffer(buf, dtype=dtype).reshape(shape, order=order)

    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = _numpy_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _frombuffer
    return allowed


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Rebuild a numpy scalar (``numpy.core.multiarray.scalar``) for non-object dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy scalar with object dtype not allowed")
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("numpy scalar data must be bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except the few needed to rebuild numpy arrays."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if it is on the allow-list; raise :class:`DataError`."""
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise DataError(f"refused to unpickle {module}.{name} (not allowed)") from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (they could reference arbitrary external objects)."""
        raise DataError("refused to unpickle a persistent id (not allowed)")


def restricted_pickle_load(fh: BinaryIO, source: str = "<stream>") -> Any:
    """Unpickle ``fh`` with ``encoding="bytes"`` allowing only numpy-array globals.

    Any failure (forbidden class, truncated or malformed stream) raises :class:`DataError`
    whose message names ``source``.
    """
    try:
        return _RestrictedUnpickler(fh, encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    except MemoryError as exc:
        raise DataError(f"{source}: pickle too large or malformed ({exc})") from exc
    except Exception as exc:  # pickle/numpy raise many types on malformed input
        kind = "truncated" if isinstance(exc, EOFError) else "corrupt"
        raise DataError(f"{source}: {kind} pickle ({type(exc).__name__}: {exc})") from exc


def _get(d: dict[Any, Any], key: str, source: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{source}: missing key {key!r} (found keys {sorted(map(repr, d))})")


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file; return ``(images uint8 [N,3,32,32], labels int64 [N])``.

    Accepts bytes or str keys. Raises :class:`DataError` naming ``path`` for anything wrong.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = restricted_pickle_load(fh, str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    data = _get(obj, "data", str(path))
    labels = _get(obj, "labels", str(path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 numpy array, got {kind}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072]")
    try:
        lab = np.asarray(labels)
    except Exception as exc:  # ragged or exotic content
        raise DataError(f"{path}: 'labels' is not a list of integers ({exc})") from exc
    if lab.ndim != 1 or not (lab.size == 0 or np.issubdtype(lab.dtype, np.integer)):
        raise DataError(f"{path}: 'labels' must be a flat list of integers")
    if lab.shape[0] != data.shape[0]:
        raise DataError(
            f"{path}: {lab.shape[0]} labels for {data.shape[0]} images (counts must match)"
        )
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise DataError(f"{path}: labels outside 0..9 (min {lab.min()}, max {lab.max()})")
    images = np.require(data.reshape(-1, 3, 32, 32), requirements=["C", "W"])
    return images, lab.astype(np.int64)


def _read_cifar_meta(folder: Path) -> tuple[str, ...]:
    path = folder / CIFAR10_META
    if not path.is_file():
        return CIFAR10_CLASSES
    try:
        with open(path, "rb") as fh:
            obj = restricted_pickle_load(fh, str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
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


# ---------------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (optionally gzipped; detected by its magic bytes) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, the number of dimensions,
    optionally equal to ``ndim``) and that the payload has exactly the size the header
    declares.  Raises :class:`DataError` naming the file otherwise.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    zero, code, dims_n = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or dims_n == 0:
        raise DataError(f"{path}: bad IDX magic number {raw[:4].hex()}")
    if ndim is not None and dims_n != ndim:
        raise DataError(f"{path}: IDX file has {dims_n} dimensions, expected {ndim}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * dims_n, raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {what}: header says {dims} ({expected} bytes), payload {got} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
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


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


def pad_crop(
    x: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    padding: int,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each image of ``x`` [B,C,H,W] at (``dy[b]``, ``dx[b]``) in its zero-padded copy.

    Offsets are in ``0..2*padding``; offset ``padding`` returns the image unchanged.  If
    ``flip`` (bool [B]) is given, the images where it is True are also mirrored left-right
    (the crop is taken first, then flipped).  Vectorised with two ``gather`` calls (no Python
    loop over images).
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    dy = dy.to(device=dev, dtype=torch.long)
    dx = dx.to(device=dev, dtype=torch.long)
    rows = (dy[:, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
    tmp = padded.gather(2, rows.expand(b, c, h, w + 2 * padding))
    col = torch.arange(w, device=dev).expand(b, w)
    if flip is not None:
        col = torch.where(flip.to(dev).view(b, 1), w - 1 - col, col)
    cols = (dx[:, None] + col).view(b, 1, 1, w)
    return tmp.gather(3, cols.expand(b, c, h, w))


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop (same size, from a ``padding``-pixel zero-padded copy) then random h-flip.

    Random numbers are drawn on the CPU from ``generator`` in a fixed order (row offsets,
    column offsets, flip coins), so results are reproducible for a given generator state.
    The whole batch is transformed by :func:`pad_crop` (two gathers, flip folded in).
    """
    b = x.shape[0]
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    coin = torch.rand(b, generator=generator) < 0.5 if flip else None
    return pad_crop(x, dy, dx, padding, coin)


# ---------------------------------------------------------------------------------------------
# Dataset and loader
# ---------------------------------------------------------------------------------------------


def _as_uint8_tensor(a: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(a)
    if t.dtype != torch.uint8 or t.ndim != 4:
        raise ValueError(f"{what} must be a uint8 array [N,C,H,W], got {t.dtype} {tuple(t.shape)}")
    return t.contiguous()


class BatchLoader:
    """Re-iterable sequence of ``(x, y)`` batches over one split of a :class:`Dataset`.

    Each iteration draws a fresh permutation (if ``shuffle``) and fresh augmentation from the
    generator, so iterating twice gives two different epochs while the same generator seed
    reproduces the same sequence of epochs.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        batch_size: int,
        shuffle: bool,
        augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None,
        generator: torch.Generator | None,
        drop_last: bool,
        device: torch.device | str | None,
    ) -> None:
        """Store the settings; see :meth:`Dataset.loader`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.split = split
        self.images, self.labels = dataset._raw(split)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.labels.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x float32 [B,C,H,W], y int64 [B])`` batches for one epoch."""
        n = self.labels.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, n)
            if order is None:
                xb, yb = self.images[start:end], self.labels[start:end]
            else:
                idx = order[start:end]
                xb, yb = self.images[idx], self.labels[idx]
            if self.device is not None:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
            xb = self.dataset.transform(xb)
            if self.augment is not None:
                xb = self.augment(xb, self.generator)
            yield xb, yb


class Dataset:
    """An in-memory image classification data set with a train and a test split.

    Images are stored as uint8 NCHW; :attr:`train_x` / :attr:`test_x` give them normalised as
    float32 (converted on first access and cached), :attr:`train_y` / :attr:`test_y` are int64.
    Normalisation statistics always come from the training split (see the module docstring):
    ``x = (pixel - mean) / std`` with :attr:`mean` of shape [C,1,1] (``"standard"``) or the
    [C,H,W] mean image (``"caffe"``, where :attr:`std` is 1).

    Attributes: ``name``, ``num_classes``, ``input_shape`` (C,H,W), ``class_names``,
    ``provenance`` (where the data came from), ``normalize``, ``augmentation`` (``"crop_flip"``
    or ``None``), ``mean``, ``std``, ``train_y``, ``test_y``; raw pixels as
    :attr:`train_images` / :attr:`test_images`.
    """

    def __init__(
        self,
        name: str,
        train_images: np.ndarray | torch.Tensor,
        train_labels: np.ndarray | torch.Tensor,
        test_images: np.ndarray | torch.Tensor,
        test_labels: np.ndarray | torch.Tensor,
        *,
        num_classes: int,
        provenance: str,
        class_names: Sequence[str] | None = None,
        normalize: str = "standard",
        augmentation: str | None = None,
    ) -> None:
        """Build a data set from uint8 NCHW image arrays and integer label arrays."""
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if augmentation not in (None, "crop_flip"):
            raise ValueError(f"unknown augmentation {augmentation!r}")
        self.name = name
        self.num_classes = int(num_classes)
        self.provenance = provenance
        self.normalize = normalize
        self.augmentation = augmentation
        self.class_names: tuple[str, ...] = (
            tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        )
        self._train_images = _as_uint8_tensor(train_images, "train_images")
        self._test_images = _as_uint8_tensor(test_images, "test_images")
        self.train_y = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64).contiguous()
        self.test_y = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64).contiguous()
        for what, imgs, labs in (
            ("train", self._train_images, self.train_y),
            ("test", self._test_images, self.test_y),
        ):
            if labs.ndim != 1 or labs.shape[0] != imgs.shape[0]:
                raise ValueError(f"{what}: {tuple(labs.shape)} labels for {imgs.shape[0]} images")
            if labs.numel() and (int(labs.min()) < 0 or int(labs.max()) >= self.num_classes):
                raise ValueError(f"{what}: labels outside 0..{self.num_classes - 1}")
        if self._train_images.shape[1:] != self._test_images.shape[1:]:
            raise ValueError("train and test images differ in shape")
        if self._train_images.shape[0] == 0:
            raise ValueError("empty training split")
        c, h, w = self._train_images.shape[1:]
        self.input_shape: tuple[int, int, int] = (int(c), int(h), int(w))
        self.mean, self.std = self._fit_normalizer()
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache: dict[str, torch.Tensor] = {}

    # -- normalisation -----------------------------------------------------------------------

    def _fit_normalizer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, std)`` broadcastable to [C,H,W] for the chosen normalisation."""
        c = self.input_shape[0]
        imgs = self._train_images.numpy()
        if self.normalize == "none":
            return torch.zeros(c, 1, 1), torch.ones(c, 1, 1)
        if self.normalize == "caffe":
            mean_img = imgs.mean(axis=0, dtype=np.float64)
            return torch.from_numpy(mean_img.astype(np.float32)), torch.ones(c, 1, 1)
        values = np.arange(256, dtype=np.float64)
        means, stds = [], []
        for ch in range(c):
            # torch.bincount is several times faster than numpy's on uint8 input
            channel = self._train_images[:, ch].reshape(-1)
            hist = torch.bincount(channel, minlength=256).numpy().astype(np.float64)
            n = hist.sum()
            m = float((hist * values).sum() / n)
            var = float((hist * (values - m) ** 2).sum() / n)
            means.append(m)
            stds.append(max(var, 1e-12) ** 0.5)
        mean = torch.tensor(means, dtype=torch.float32).view(c, 1, 1)
        std = torch.tensor(stds, dtype=torch.float32).view(c, 1, 1)
        return mean, std

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 batch [B,C,H,W] to float32 with the training statistics."""
        x = images.to(torch.float32)
        if x.device not in self._stats:
            self._stats[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._stats[x.device]
        if self.normalize == "standard":
            return (x - mean) / std
        if self.normalize == "caffe":
            return x - mean
        return x

    # -- splits ------------------------------------------------------------------------------

    def _raw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self._train_images, self.train_y
        if split == "test":
            return self._test_images, self.test_y
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def _normalised(self, split: str) -> torch.Tensor:
        if split not in self._cache:
            self._cache[split] = self.transform(self._raw(split)[0])
        return self._cache[split]

    @property
    def train_x(self) -> torch.Tensor:
        """Normalised float32 training images [N,C,H,W] (computed once, then cached)."""
        return self._normalised("train")

    @property
    def test_x(self) -> torch.Tensor:
        """Normalised float32 test images [N,C,H,W] (computed once, then cached)."""
        return self._normalised("test")

    @property
    def train_images(self) -> torch.Tensor:
        """The raw uint8 training images [N,C,H,W]."""
        return self._train_images

    @property
    def test_images(self) -> torch.Tensor:
        """The raw uint8 test images [N,C,H,W]."""
        return self._test_images

    def __len__(self) -> int:
        """Number of training images."""
        return int(self.train_y.shape[0])

    def __repr__(self) -> str:
        """Short summary."""
        return (
            f"Dataset({self.name!r}, train={len(self)}, test={self.test_y.shape[0]}, "
            f"input_shape={self.input_shape}, classes={self.num_classes}, "
            f"normalize={self.normalize!r})"
        )

    def loader(
        self,
        split: str = "train",
        batch_size: int = 100,
        shuffle: bool | None = None,
        augment: bool = False,
        generator: torch.Generator | None = None,
        *,
        drop_last: bool | None = None,
        device: torch.device | str | None = None,
    ) -> BatchLoader:
        """Return a re-iterable loader of ``(x, y)`` batches for ``split`` ("train"/"test").

        Args:
            split: ``"train"`` or ``"test"``.
            batch_size: images per batch.
            shuffle: draw a new permutation each epoch; default True for train, False for test.
            augment: apply the data set's augmentation (CIFAR-10: random crop with 4-pixel
                zero padding + horizontal flip). Only ever applied to the train split; a no-op
                for data sets without augmentation.
            generator: drives shuffling and augmentation (``None``: torch's global RNG).
            drop_last: drop the last partial batch; default True for train, False for test.
            device: move each uint8 batch there before normalising (cheaper transfers).
        """
        self._raw(split)
        if shuffle is None:
            shuffle = split == "train"
        if drop_last is None:
            drop_last = split == "train"
        aug = None
        if augment and split == "train" and self.augmentation == "crop_flip":
            aug = random_crop_flip
        return BatchLoader(self, split, batch_size, shuffle, aug, generator, drop_last, device)


# ---------------------------------------------------------------------------------------------
# Loaders for the named data sets
# ---------------------------------------------------------------------------------------------


def _load_cifar10(
    data_dir: str | os.PathLike[str] | None, download: bool, normalize: str, timeout: float
) -> Dataset:
    folder, how = _obtain_cifar10(data_dir, download, timeout)
    train_x, train_y, test_x, test_y, names = read_cifar10_folder(folder)
    provenance = f"CIFAR-10 python version read from {folder} ({how})"
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


def _load_fashion_mnist(
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
        provenance=f"Fashion-MNIST IDX files read from {folder} ({how})",
        class_names=FASHION_MNIST_CLASSES,
        normalize=normalize,
    )


def _load_digits(normalize: str) -> Dataset:
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            "the 'digits' data set needs scikit-learn: pip install 'lowprec[digits]'"
        ) from exc
    bunch = load_digits()
    images = np.asarray(bunch.images)
    if images.shape != (1797, 8, 8) or images.min() < 0 or images.max() > 16:
        raise DataError(f"sklearn load_digits returned unexpected data {images.shape}")
    pixels = np.rint(images).astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(labels))
    test_idx, train_idx = perm[:DIGITS_NUM_TEST], perm[DIGITS_NUM_TEST:]
    return Dataset(
        "digits",
        pixels[train_idx],
        labels[train_idx],
        pixels[test_idx],
        labels[test_idx],
        num_classes=10,
        provenance=(
            f"scikit-learn {sklearn.__version__} load_digits() (UCI optdigits, 8x8, 0-16); "
            f"split: numpy RandomState({DIGITS_SPLIT_SEED}) permutation, "
            f"{len(train_idx)} train / {len(test_idx)} test"
        ),
        class_names=tuple(str(i) for i in range(10)),
        normalize=normalize,
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    normalize: str = "standard",
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Dataset:
    """Load one of :data:`DATASETS` into memory.

    Args:
        name: ``"cifar10"``, ``"fashion-mnist"`` or ``"digits"`` (a few aliases accepted).
        data_dir: where to look first (the data folder itself or its parent); ignored for digits.
        download: if the files are not found anywhere, try the official URL into the cache
            (``~/.cache/lowprec``, or ``$LOWPREC_CACHE_DIR``), checking the MD5.
        normalize: ``"standard"`` (per-channel mean/std), ``"caffe"`` (subtract the training
            mean image, keep the 0-255 scale) or ``"none"``.
        timeout: network timeout in seconds for each download.

    Raises:
        DataError: the data cannot be found, downloaded or parsed (the message says what to do).
        ValueError: unknown name or normalisation mode.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if key == "cifar10":
        return _load_cifar10(data_dir, download, normalize, timeout)
    if key == "fashion-mnist":
        return _load_fashion_mnist(data_dir, download, normalize, timeout)
    if key == "text":
        raise ValueError("the 'text' corpus loads with lowprec.study.text.load_text")
    return _load_digits(normalize)
