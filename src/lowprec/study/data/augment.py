"""Augmentation: random crop from a zero-padded copy and horizontal flip, batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_crop", "random_crop_flip"]


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
