"""How :class:`lowprec.numerics.backend.Compiled` chooses eager or compiled (no real compiler:
a stand-in records what is compiled and when, so these tests compile nothing)."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
import torch

import lowprec as lp
from lowprec.numerics import backend, kernel


class Recorder:
    """A compiler that returns ``fn`` itself, counting calls, optionally held at a gate."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail
        self.compiled_calls: list[tuple[Any, ...]] = []
        self.threads: set[str] = set()

    def __call__(self, fn):  # the compiler: called once, under the helper's lock
        def compiled(*args):
            self.gate.wait(10)
            self.threads.add(threading.current_thread().name)
            if self.fail:
                raise RuntimeError("no C++ compiler")
            self.compiled_calls.append(args)
            return fn(*args)
        return compiled


def _double(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out.copy_(2 * x)


def _call(helper: backend.Compiled, variant: str, n: int) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float32)
    out = torch.empty_like(x)
    helper(variant, n, out, x)
    assert torch.equal(out, 2 * x)  # whichever path ran
    return x


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv("LOWPREC_BACKEND", "auto")
    monkeypatch.setattr(backend, "EAGER_BUDGET", 100)


def test_auto_runs_eagerly_while_compiling_in_the_background(small_budget):
    rec = Recorder()
    rec.gate.clear()  # the background compile cannot finish yet
    helper = backend.Compiled(_double, "test kernel", compiler=rec)
    _call(helper, "a", 60)
    assert helper._queued == set()  # under the budget: nothing to compile
    _call(helper, "a", 60)  # crosses it: handed to the background thread
    assert helper._queued == {"a"} and helper._ready == set()
    for _ in range(3):  # the caller does not wait
        _call(helper, "a", 1000)
    _call(helper, "b", 50)
    assert helper._queued == {"a"}
    rec.gate.set()
    helper.wait()
    assert helper._ready == {"a"}
    assert rec.threads == {"lowprec: compile the test kernel"}
    (stand_in_out, stand_in_x), = rec.compiled_calls  # on stand-ins, not the caller's tensors
    assert not stand_in_x.any() and stand_in_x.shape == (60,)
    x = _call(helper, "a", 7)  # now compiled, in the caller's thread
    assert rec.compiled_calls[-1][1] is x and len(rec.compiled_calls) == 2


def test_compiled_compiles_before_returning_and_eager_never(monkeypatch):
    rec = Recorder()
    helper = backend.Compiled(_double, "test kernel", compiler=rec)
    monkeypatch.setenv("LOWPREC_BACKEND", "eager")
    _call(helper, "a", 1 << 20)
    assert rec.compiled_calls == [] and helper._queued == set()
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")
    x = _call(helper, "a", 3)
    assert rec.compiled_calls[0][1] is x and helper._ready == {"a"}
    assert rec.threads == {threading.current_thread().name}


def test_a_failed_background_compile_warns_once_and_stays_eager(small_budget):
    rec = Recorder(fail=True)
    helper = backend.Compiled(_double, "test kernel", compiler=rec)
    _call(helper, "a", 200)
    helper.wait()
    with pytest.warns(RuntimeWarning, match="torch.compile of the test kernel failed.*"
                      "RuntimeError: no C..? compiler"):
        _call(helper, "a", 5)
    assert helper.failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _call(helper, "b", 500)
    assert caught == [] and helper._queued == {"a"}


def test_compiled_errors_raise(monkeypatch):
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")
    helper = backend.Compiled(_double, "test kernel", compiler=Recorder(fail=True))
    with pytest.raises(RuntimeError, match="no C"):
        _call(helper, "a", 3)


def test_stand_ins_keep_layout_and_aliasing():
    base = torch.randn(5000 * 16 + 3)
    rows = base[3:].view(-1, 16).detach()
    tail = base[1:4].detach()
    grid = torch.arange(26, dtype=torch.int32)
    args = (rows, rows, grid, tail, "stochastic", 7)
    made = backend.stand_ins(args)
    assert made[0] is made[1] and made[4:] == args[4:]
    assert made[0].shape == (backend._EXAMPLE_ROWS, 16) and made[2].shape == grid.shape
    for got, t in zip(made[:4], args[:4], strict=True):
        assert got.dtype == t.dtype and got.stride() == t.stride()
        assert got.storage_offset() == t.storage_offset() and not got._is_view()
        assert not got.any() and got.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()


def test_switching_mid_stream_keeps_the_bits(monkeypatch, small_budget):
    """Stochastic rounding of a sequence of tensors, the kernel switching from eager to
    (stand-in) compiled in the middle: the same bits as eager all along."""
    rec = Recorder()
    monkeypatch.setattr(kernel, "_kernel", backend.Compiled(kernel.quantize_into, "kernel",
                                                            compiler=rec))
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=g) for n in (40, 90, 333, 1000, 37, 4096)]

    def stream() -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        results = []
        for x in xs:
            results.append(lp.quantize(x, "fp12", "stochastic", generator=g))
            kernel._kernel.wait()
        return results

    monkeypatch.setenv("LOWPREC_BACKEND", "eager")
    expected = stream()
    monkeypatch.setenv("LOWPREC_BACKEND", "auto")
    got = stream()
    assert kernel._kernel._ready and len(rec.compiled_calls) > len(kernel._kernel._ready)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
