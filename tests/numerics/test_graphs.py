"""Kernel graphs compiled without dynamo (:mod:`lowprec.numerics.graphs`): guarded per
signature, kept on disk, and recompiled when the disk holds nothing usable."""

from __future__ import annotations

import pytest
import torch

from lowprec.numerics import graphs

# the torch path's machinery: the C++ rounding kernels declined (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("torch_kernels")


def _scaled_sum(out: torch.Tensor, x: torch.Tensor, k: float) -> tuple[torch.Tensor, None]:
    out.copy_(x * k)
    return x.sum(), None


def _call(g: graphs.DirectCompiled, n: int, offset: int = 0) -> None:
    base = torch.arange(n + offset, dtype=torch.float32)
    x = base[offset:]
    out = torch.empty(n)
    total, none = g(out, x, 3.0)
    assert torch.equal(out, 3 * x) and total.item() == x.sum().item() and none is None


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path))
    return tmp_path / "kernels"


def test_one_graph_serves_every_size_and_a_new_process_loads_it(cache):
    before = len(graphs.GRAPHS)
    g = graphs.DirectCompiled(_scaled_sum, lambda: None)
    for n in (5, 17, 1000):
        _call(g, n)
    _call(g, 9, offset=3)  # an offset of 2 or more: the same graph
    assert len(graphs.GRAPHS) == before + 2  # offsets 0 and >= 2 are two signatures
    assert len(list(cache.rglob("*.bin"))) == len(list(cache.rglob("*.guards"))) == 2
    fresh = graphs.DirectCompiled(_scaled_sum, lambda: None)  # as a new process sees it
    _call(fresh, 33)
    _call(fresh, 12, offset=5)
    assert len(graphs.GRAPHS) == before + 2  # both loaded, none compiled


def test_a_corrupt_entry_is_compiled_again(cache):
    _call(graphs.DirectCompiled(_scaled_sum, lambda: None), 8)
    (binary,) = cache.rglob("*.bin")
    binary.write_bytes(b"not a graph")
    before = len(graphs.GRAPHS)
    _call(graphs.DirectCompiled(_scaled_sum, lambda: None), 8)
    assert len(graphs.GRAPHS) == before + 1


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWPREC_CACHE_DIR", "off")
    assert graphs.cache_dir() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LOWPREC_CACHE_DIR")
    assert graphs.cache_dir() == tmp_path / "lowprec" / "kernels"


def test_compiling_leaves_the_random_states_alone(cache):
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    _call(graphs.DirectCompiled(_scaled_sum, lambda: None), 6)
    assert torch.equal(torch.rand(3), expected)


def test_large_calls_get_a_graph_that_splits_its_loop_over_the_threads(cache, tmp_path,
                                                                       monkeypatch):
    """Whether a graph runs on all of torch's threads depends on the call's size class,
    not on the size its signature first met (a small first call once made every later
    large call run on one thread). Read off the C++ inductor writes."""
    import logging

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no FX hits
    code: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            code.append(record.getMessage())

    handler, threads = Keep(), torch.get_num_threads()
    logger = logging.getLogger("torch._inductor")
    torch.set_num_threads(2)
    torch._logging.set_logs(output_code=True)
    logger.addHandler(handler)
    try:
        g = graphs.DirectCompiled(_scaled_sum, lambda: None)
        parallel = []
        for n in (1000, graphs.PARALLEL_MIN, 50):  # small, large, small again
            code.clear()
            _call(g, n)
            parallel.append("#pragma omp parallel" in "\n".join(code) if code else None)
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()
        torch.set_num_threads(threads)
    assert parallel == [False, True, None]  # the third call reuses the first graph
