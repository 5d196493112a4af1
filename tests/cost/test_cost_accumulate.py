"""The energy model adds each product in the recipe's accumulator format."""

from __future__ import annotations

import pytest
import torch

import lowprec as lp
from lowprec.cost.analysis import analyse, summarize
from lowprec.cost.energy import accumulate_pj
from lowprec.study.models import build_model


@pytest.mark.parametrize("fmt,pj", [
    (None, 0.9), ("fp16", 0.4), ("bf16", 0.4), (lp.FixedPoint(32, 24), 0.1),
    (lp.FixedPoint(16, 8), 0.05), (lp.FixedPoint(8, 4), 0.03),
    (lp.FloatingPoint(5, 6), 0.3),  # 12-bit float add: 12/16 of the 16-bit point
])
def test_accumulate_pj_is_one_add_of_the_accumulator_width(fmt: object, pj: float) -> None:
    f = lp.formats.get(fmt) if isinstance(fmt, str) else fmt
    assert accumulate_pj(f) == pytest.approx(pj)


def test_accumulator_changes_only_the_add_per_product() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8)
    base = summarize(analyse(model, (4, 1, 8, 8), "pot7_operands"))
    fx = summarize(analyse(model, (4, 1, 8, 8), "pot7_fxacc"))
    # the same operands: every product's fp32 add (0.9 pJ) becomes a 32-bit integer add
    assert fx["products"] == base["products"] and fx["memory_pj"] == base["memory_pj"]
    assert base["compute_pj"] - fx["compute_pj"] == pytest.approx(0.8 * base["products"])
    narrow = lp.recipes.get("pot7_operands").replace(accumulate="fp16", ops=("linear",))
    mixed = summarize(analyse(model, (4, 1, 8, 8), narrow))  # convs not covered: fp32 adds
    layers = analyse(model, (4, 1, 8, 8), narrow)
    assert [la.accumulate for la in layers] == [None, None, lp.formats.get("fp16")]
    assert mixed["compute_pj"] > fx["compute_pj"]
