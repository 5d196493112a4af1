"""The study's six recipes train bit-identically to the recorded behaviour.

``regression_digests.json`` was written by this module (``python tests/train/
test_regression.py``) from the code *before* op-level rounding existed: a recipe without
``ops`` must keep rounding exactly as it did. Each case trains a small model on a few fixed
random batches (SGD with momentum, ``wrap_optimizer``, default telemetry) and records the
losses (as float hex) and a sha256 of the final ``state_dict`` tensors' bytes.
"""

from __future__ import annotations

import hashlib
import json
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


@pytest.mark.parametrize(("kind", "recipe"), CASES)
def test_study_recipes_bit_identical(kind: str, recipe: str) -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = train_digest(kind, recipe)
    finally:
        torch.set_num_threads(n)
    want = json.loads(FIXTURE.read_text())[f"{kind}/{recipe}"]
    assert got == want


if __name__ == "__main__":  # regenerate: only from a commit whose behaviour is the reference
    torch.set_num_threads(1)
    out = {f"{k}/{r}": train_digest(k, r) for k, r in CASES}
    FIXTURE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    sys.exit(0)
