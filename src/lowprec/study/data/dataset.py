"""The in-memory :class:`Dataset` (uint8 images, per-batch normalisation) and its loader."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .augment import random_crop_flip

__all__ = ["NORMALIZE_MODES", "BatchLoader", "Dataset"]

NORMALIZE_MODES: tuple[str, ...] = ("standard", "caffe", "none")


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


def content_digest(*arrays: np.ndarray) -> str:
    """The first 16 hex digits of the SHA-256 of the arrays' bytes, in order: names a data
    set's copy by its content (reports never name a path of the machine that made them)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
