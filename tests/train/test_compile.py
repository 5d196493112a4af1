"""``torch.compile`` of a prepared model: one graph, compiled once, the eager bits.

The rounding path has no graph break (``fullgraph=True`` would raise), a few steps
compile one frame (no per-layer or per-step recompiles) and the compiled model computes
what the eager one does, bit for bit: stochastic seeds come from the model's own
generator in the same order (``lowprec::seed_words``). ``aot_eager`` keeps the check to
seconds: it runs dynamo and AOT autograd (the graphs inductor would get, forward and
backward) without generating C++; the rounding under inductor is checked in
``tests/numerics/test_traced.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import lowprec as lp


def _steps(recipe: str, compiled: bool) -> tuple[list[torch.Tensor], int]:
    """Outputs and final parameters of 3 SGD steps of a tiny prepared CNN; frames compiled."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    lp.prepare(model, recipe, seed=3, telemetry_every=0)
    counter = CompileCounterWithBackend("aot_eager")
    run = torch.compile(model, backend=counter, fullgraph=True) if compiled else model
    opt = lp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([1, 2])
    seen = []
    for _ in range(3):
        opt.zero_grad()
        out = run(x)
        F.cross_entropy(out, y).backward()
        opt.step()
        seen += [out.detach(), *(p.detach().clone() for p in model.parameters())]
    return seen, counter.frame_count


@pytest.mark.parametrize("recipe", ["fp12_sr", "fxp12_sr_ls"])
def test_compiled_prepared_model_one_graph_same_bits(recipe: str) -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want, _ = _steps(recipe, compiled=False)
        got, frames = _steps(recipe, compiled=True)
    finally:
        torch.set_num_threads(n)
    assert frames == 1
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
