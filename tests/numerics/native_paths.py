"""Helpers of the tests that hold a C++ kernel against the torch path it replaces."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

import lowprec as lp


def awkward(shape: tuple[int, ...], seed: int, binades: int) -> torch.Tensor:
    """float32 normals over ``binades`` binades around 1, with NaNs, infinities of both
    signs, zeros of both signs and float32 subnormals mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    e = torch.randint(-binades // 2, binades // 2, shape, generator=g)
    x = (x * torch.pow(2.0, e.double())).float()
    flat = x.view(-1)
    pick = torch.randperm(flat.numel(), generator=g)
    flat[pick[:3]] = math.nan
    flat[pick[3:5]] = math.inf
    flat[pick[5]] = -math.inf
    flat[pick[6:16]] = 0.0
    flat[pick[16:20]] = -0.0
    flat[pick[20:40]] = torch.randn(20, generator=g) * 2.0**-135
    return x


def same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a`` and ``b`` (float32) hold the same bit patterns; else where they first differ."""
    diff = (a.view(torch.int32) != b.view(torch.int32)).nonzero()
    assert diff.numel() == 0, f"{len(diff)} differ, first at {diff[0].tolist()}: " \
        f"{a[tuple(diff[0])].item()!r} vs {b[tuple(diff[0])].item()!r}"


def both_paths(module: ModuleType, x: torch.Tensor, fmt: object,
               monkeypatch: pytest.MonkeyPatch, entry: str = "run",
               **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``lp.quantize`` with ``module``'s kernel (asserting that its function ``entry``
    served, by returning ``True`` or a tensor) and with it declined (``module._function``
    gone)."""
    served: list[bool] = []
    real = getattr(module, entry)

    def spy(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        served.append(result is True or isinstance(result, torch.Tensor))
        return result

    monkeypatch.setattr(module, entry, spy)
    native_y = lp.quantize(x, fmt, generator=torch.Generator().manual_seed(3), **kw)
    assert served == [True]
    monkeypatch.setattr(module, "_function", lambda: None)
    torch_y = lp.quantize(x, fmt, generator=torch.Generator().manual_seed(3), **kw)
    monkeypatch.undo()
    return native_y, torch_y
