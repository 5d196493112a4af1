"""The cost model counts op-level operand classes: pot7_operands is multiplier-free."""

from __future__ import annotations

import torch

from lowprec.cost.analysis import analyse, multiplications_removed, summarize
from lowprec.study.models import build_model


def test_pot7_operands_turns_every_product_into_a_shift() -> None:
    torch.manual_seed(0)
    model = build_model("cifar10_quick", 10, 3, 32)  # average pools between convs
    ops = multiplications_removed(model, (2, 3, 32, 32), "pot7_operands")
    pot7 = multiplications_removed(model, (2, 3, 32, 32), "pot7")
    assert ops["total"] == ops["products"]
    assert pot7["total"] < pot7["products"]  # the average pools break pot7's premise
    s = summarize(analyse(model, (2, 3, 32, 32), "pot7_operands"))
    assert s["multiplier_products"] == 0 and s["shift_products"] == s["products"]
