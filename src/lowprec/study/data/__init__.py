"""Data sets for the training experiments: CIFAR-10, Fashion-MNIST and sklearn's 8x8 digits.

Public API::

    from lowprec.study.data import load_dataset, Dataset, DataError, DATASETS

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

import os
from collections.abc import Callable

from . import cifar10, digits, fashion_mnist
from .augment import pad_crop, random_crop_flip
from .cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    find_cifar10,
    read_cifar10_batch,
    read_cifar10_folder,
)
from .dataset import NORMALIZE_MODES, BatchLoader, Dataset
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FASHION_MNIST_MIRRORS,
    find_fashion_mnist,
    read_idx,
)
from .locate import DOWNLOAD_TIMEOUT_S, DataError, cache_dir
from .unpickle import restricted_pickle_load

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASETS",
    "Loader",
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
    "register",
    "restricted_pickle_load",
]


#: how a data set is loaded: ``(data_dir, download, normalize, timeout) -> Dataset``
Loader = Callable[[str | os.PathLike[str] | None, bool, str, float], Dataset]

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

_ALIASES = {
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "sklearn-digits": "digits",
}

_LOADERS: dict[str, Loader] = {
    "cifar10": cifar10.load,
    "fashion-mnist": fashion_mnist.load,
    "digits": lambda data_dir, download, normalize, timeout: digits.load(normalize),
}


def _text(*args: object) -> Dataset:
    raise ValueError("the 'text' corpus loads with lowprec.study.text.load_text "
                     "(token windows, not images)")


_LOADERS["text"] = _text


def register(name: str, description: str, loader: Loader, aliases: tuple[str, ...] = ()) -> None:
    """Add a data set: ``load_dataset(name)`` then calls ``loader(data_dir, download,
    normalize, timeout)``; ``description`` is its line in :data:`DATASETS`."""
    DATASETS[name] = description
    _LOADERS[name] = loader
    _ALIASES.update(dict.fromkeys(aliases, name))


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
    return _LOADERS[key](data_dir, download, normalize, timeout)
