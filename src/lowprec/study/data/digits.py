"""scikit-learn's bundled 8x8 digits: no files, no network; a fixed train/test split."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .locate import DataError

__all__ = ["load"]

DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TEST = 359


def load(normalize: str) -> Dataset:
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
