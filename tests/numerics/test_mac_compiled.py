"""The compiled accumulation chain of ``mac_matmul``: the eager bits, and one graph per
rounding rule and chunk length whatever the shapes (no variant falls out of the compiled
path past dynamo's recompile limit)."""

from __future__ import annotations

import pytest
import torch
from test_mac import ACC_FORMATS, check, fmt_of, lowbit, torch_path

from lowprec.numerics import mac
from lowprec.numerics.mac import RoundTo, mac_matmul

#: (M, K, N, block): row tiles and groups of several sizes (a small ``_TERMS_BUDGET``),
#: groups ending in 8-block chunks, in padded chunks of 4-7 blocks and in single blocks
CASES = ((5, 75, 3, 1), (7, 64, 2, 4), (3, 33, 9, 2), (6, 40, 5, 3))


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.equal(x.view(torch.int32), y.view(torch.int32))


@pytest.mark.usefixtures("one_graph_per_variant")
def test_compiled_chain_equals_eager_one_graph_each(monkeypatch: pytest.MonkeyPatch) -> None:
    torch_path(monkeypatch)  # the chain is the torch path's
    monkeypatch.setattr(mac, "_TERMS_BUDGET", 96)
    emin, emax, kmax = ACC_FORMATS["fp16"]
    for seed, (m, k, n, block) in enumerate(CASES):
        a = lowbit((m, k), emin, emax, kmax, seed=2 * seed)
        b = lowbit((k, n), emin, emax, kmax, seed=2 * seed + 1)
        for lhs in (a, a.T.contiguous().T):
            got = []
            for backend in ("eager", "compiled"):
                monkeypatch.setenv("LOWPREC_BACKEND", backend)
                got.append(mac_matmul(lhs, b, accumulate=RoundTo("fp16"), block=block))
            assert _same_bits(*got), (m, k, n, block)
    check(a, b, None, (fmt_of("fp16"), "nearest", None), 1)  # compiled, vs the exact sum
