"""How :class:`lowprec.numerics.backend.Compiled` chooses eager or compiled. No real
compiler: a stand-in records what is compiled, where and when, so nothing compiles here;
no real clock: each eager call of ``n`` elements "takes" ``n`` seconds."""

from __future__ import annotations

import itertools
import threading
import warnings

import pytest
import torch

import lowprec as lp
from lowprec.numerics import backend, kernel

# the torch path's machinery: the C++ rounding kernels declined (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("torch_kernels")


class Recorder:
    """A compiler that returns ``fn`` itself, recording the calls of the "compiled" one,
    and a start-up held at a gate until the test opens it."""

    def __init__(self, fail: str = "") -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail = fail
        self.compiled_calls: list[tuple[object, ...]] = []
        self.threads: dict[str, set[str]] = {"start": set(), "compiled": set()}

    def start(self, alive) -> None:
        assert alive()
        self.gate.wait(10)
        self.threads["start"].add(threading.current_thread().name)
        if self.fail == "start":
            raise ImportError("no module named torch._inductor")

    def __call__(self, fn):
        def compiled(*args):
            self.threads["compiled"].add(threading.current_thread().name)
            if self.fail == "compile":
                raise RuntimeError("no C++ compiler")
            self.compiled_calls.append(args)
            return fn(*args)
        return compiled


class Clock:
    """A clock that :func:`_double` advances by the element count of each call."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


def _double(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    CLOCK.now += x.numel()
    return out.copy_(2 * x)


def _call(helper: backend.Compiled, variant: str, n: int) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float32)
    out = torch.empty_like(x)
    helper(variant, out, x)
    assert torch.equal(out, 2 * x)  # whichever path ran
    return x


def _helper(rec: Recorder) -> backend.Compiled:
    return backend.Compiled(_double, "test kernel", compiler=rec, start=rec.start)


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv("LOWPREC_BACKEND", "auto")
    monkeypatch.setattr(backend, "EAGER_SECONDS", 100)
    monkeypatch.setattr(backend, "_clock", CLOCK)


def test_auto_runs_eagerly_until_the_compiler_has_started(small_budget):
    rec = Recorder()
    rec.gate.clear()  # the background start-up cannot finish yet
    helper = _helper(rec)
    _call(helper, "a", 60)
    assert helper._thread is None  # under the budget: nothing to start
    _call(helper, "a", 40)  # crosses it: the start-up begins in the background
    assert helper._due == {"a"} and helper._thread is not None
    for _ in range(3):  # the caller does not wait
        _call(helper, "a", 1000)
    _call(helper, "b", 50)
    assert rec.compiled_calls == [] and helper._due == {"a"}
    rec.gate.set()
    helper.wait()
    helper._thread.join(10)
    assert rec.threads["start"] == {"lowprec: start the compiler (test kernel)"}
    x = _call(helper, "a", 7)  # compiled now, in the caller's thread
    assert rec.compiled_calls[-1][1] is x and helper._ready == {"a"}
    assert rec.threads["compiled"] == {threading.current_thread().name}
    _call(helper, "b", 60)  # crosses the budget after the start-up: timed, so eager
    assert helper._due == {"a", "b"} and len(rec.compiled_calls) == 1
    _call(helper, "b", 2)  # compiled from the next call on
    assert helper._ready == {"a", "b"} and len(rec.compiled_calls) == 2
    _call(helper, "a", 3)
    assert len(rec.compiled_calls) == 3


def test_compiled_compiles_before_returning_and_eager_never(monkeypatch):
    rec = Recorder()
    helper = _helper(rec)
    monkeypatch.setenv("LOWPREC_BACKEND", "eager")
    _call(helper, "a", 1 << 12)
    assert rec.compiled_calls == [] and helper._due == set() and helper._thread is None
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")
    x = _call(helper, "a", 3)
    assert rec.compiled_calls[0][1] is x and helper._ready == {"a"}
    assert helper._thread is None  # no background start-up: compiled waits for the compiler


@pytest.mark.parametrize("fail", ["start", "compile"])
def test_a_failure_warns_once_and_stays_eager(small_budget, fail):
    rec = Recorder(fail)
    rec.gate.clear()
    helper = _helper(rec)
    _call(helper, "a", 200)
    rec.gate.set()
    helper.wait()
    with pytest.warns(RuntimeWarning, match="compiling the test kernel failed"):
        _call(helper, "a", 5)
    assert helper.failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _call(helper, "b", 500)
    assert caught == [] and helper._ready == set()


def test_compiled_errors_raise(monkeypatch):
    monkeypatch.setenv("LOWPREC_BACKEND", "compiled")
    helper = _helper(Recorder("compile"))
    with pytest.raises(RuntimeError, match="no C"):
        _call(helper, "a", 3)


def test_start_up_stops_at_exit(monkeypatch):
    imported = []
    monkeypatch.setattr(backend.importlib, "import_module", imported.append)
    backend.start_up(lambda: len(imported) < 2)
    assert imported == list(backend._START_UP[:2])


def test_switching_mid_stream_keeps_the_bits(monkeypatch, small_budget):
    """Stochastic rounding of a sequence of tensors, the kernel switching from eager to
    (recorded) compiled in the middle: the same bits as eager all along."""
    rec = Recorder()
    monkeypatch.setattr(kernel, "_kernel", backend.Compiled(
        kernel.quantize_into, "kernel", compiler=rec, start=rec.start))
    monkeypatch.setattr(backend, "_clock", itertools.count().__next__)  # 1 s per call
    monkeypatch.setattr(backend, "EAGER_SECONDS", 2)
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
    assert kernel._kernel._ready and rec.compiled_calls
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
