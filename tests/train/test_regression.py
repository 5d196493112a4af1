"""The study's six recipes train bit-identically to the recorded behaviour.

``regression_digests.json`` was written by this module (``python tests/train/
test_regression.py``, with ``PYTHONPATH`` pointing at the ``src`` of commit ead9cc9) from
the code *before* op-level rounding existed: a recipe without ``ops`` must keep rounding
exactly as it did. Each case trains a small model on a few fixed random batches (SGD with
momentum, ``wrap_optimizer``, default telemetry) and records the losses (as float hex) and
a sha256 of the final ``state_dict`` tensors' bytes.

fp32 arithmetic around the roundings (GEMMs, convolutions, softmax) gives different last
bits on different CPUs (AVX2 and AVX-512 kernels sum in different orders), so the runs
happen in a child process pinned to a reproducible configuration (:data:`PINNED_ENV`:
ATen's unvectorised kernels, MKL's conditional numerical reproducibility, convolutions
through MKL's GEMM instead of oneDNN, one thread); the roundings themselves are integer
arithmetic, the same on every CPU.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowprec as lp
from lowprec.study.models import build_model
from lowprec.train.recipes import STUDY

FIXTURE = Path(__file__).with_name("regression_digests.json")
STEPS = 3
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "small_cnn":
        return build_model("small_cnn", 10, 1, 8)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _batches(kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    shape = (8, 1, 8, 8) if kind == "small_cnn" else (8, 64)
    return [(torch.randn(shape, generator=g), torch.randint(10, (8,), generator=g))
            for _ in range(STEPS)]


def train_digest(kind: str, recipe: str) -> dict[str, object]:
    """Losses and the sha256 of the final state_dict of one short run."""
    model = lp.prepare(_model(kind), recipe, seed=3)
    opt = lp.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    losses = []
    for x, y in _batches(kind):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()).hex())
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return {"losses": losses, "state": h.hexdigest()}


CASES = [(k, r) for k in ("small_cnn", "mlp") for r in STUDY]


def _digests_here() -> dict[str, dict[str, object]]:
    """Every case's digest in this process (run by :func:`pinned_digests`' child)."""
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # convolutions by im2col and MKL's GEMM
    return {f"{k}/{r}": train_digest(k, r) for k, r in CASES}


@functools.cache
def pinned_digests() -> dict[str, dict[str, object]]:
    """Every case's digest, computed in a child process under :data:`PINNED_ENV`."""
    done = subprocess.run([sys.executable, __file__, "--print"], capture_output=True,
                          text=True, env={**os.environ, **PINNED_ENV}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(("kind", "recipe"), CASES)
def test_study_recipes_bit_identical(kind: str, recipe: str) -> None:
    want = json.loads(FIXTURE.read_text())[f"{kind}/{recipe}"]
    assert pinned_digests()[f"{kind}/{recipe}"] == want


if __name__ == "__main__":  # regenerate: only from a commit whose behaviour is the reference
    if sys.argv[1:] == ["--print"]:
        print(json.dumps(_digests_here(), sort_keys=True))
    else:
        FIXTURE.write_text(json.dumps(pinned_digests(), indent=1, sort_keys=True) + "\n")
    sys.exit(0)
