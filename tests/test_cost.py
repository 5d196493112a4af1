"""The cost model: layer shapes, MAC counts, energy rules, CLI."""

from __future__ import annotations

import argparse

import pytest
import torch

import lowprec as lp
from lowprec import cost
from lowprec.models import build_model
from lowprec.recipe import Recipe

POT7 = {"activation": "pot7", "error": "pot7", "weight": "fp12", "update": "fp12"}
# cifar10_quick, one 3x32x32 image: out_elems x in_channels x 5 x 5 (ip: out x in)
QUICK_MACS = {"conv1": 32 * 32 * 32 * 3 * 25, "conv2": 32 * 16 * 16 * 32 * 25,
              "conv3": 64 * 8 * 8 * 32 * 25, "ip1": 64 * 64 * 4 * 4, "ip2": 10 * 64}


def _layers(model_name: str, recipe, batch: int = 1, shape=(3, 32, 32)):
    torch.manual_seed(0)
    model = build_model(model_name, 10, shape[0], shape[1])
    return {la.name: la for la in cost.analyse(model, (batch, *shape), recipe)}


def test_cifar10_quick_mac_counts_by_hand() -> None:
    assert QUICK_MACS["conv1"] == 2_457_600
    one = _layers("cifar10_quick", None)
    assert {n: la.macs for n, la in one.items()} == QUICK_MACS
    hundred = _layers("cifar10_quick", None, batch=100)
    assert {n: la.macs for n, la in hundred.items()} == {n: 100 * m for n, m in QUICK_MACS.items()}
    assert not one["conv1"].grad_input and all(one[n].grad_input for n in QUICK_MACS
                                               if n != "conv1")
    assert one["conv1"].params == 32 * 3 * 25 + 32 and one["ip2"].params == 650
    s = cost.summarize(list(one.values()))
    assert s["products"] == 3 * sum(QUICK_MACS.values()) - QUICK_MACS["conv1"]


def test_fp32_recipe_ratio_is_exactly_one() -> None:
    rows = cost.recipe_table("small_cnn", [Recipe(name="fp32"), POT7], batch=8)
    assert [rows[0][f"{k}_ratio"] for k in cost.RATIOS] == [1.0] * len(cost.RATIOS)
    assert rows[0]["kind"] == "modelled" and rows[0]["multiplier_products"] == rows[0]["products"]
    assert all(rows[1][f"{k}_ratio"] < 1 for k in cost.RATIOS)


def test_energy_rules_hit_the_table_and_grow_with_bits() -> None:
    assert cost.energy(cost.INT_ADD, 8) == 0.03 and cost.energy(cost.INT_ADD, 32) == 0.1
    assert cost.energy(cost.FLOAT_MUL, 24 * 24) == 3.7 and cost.energy(cost.INT_MUL, 64) == 0.2
    assert cost.energy(cost.FLOAT_ADD, 64) == pytest.approx(1.8)  # proportional beyond
    for table in (cost.INT_ADD, cost.FLOAT_ADD, cost.INT_MUL, cost.FLOAT_MUL):
        values = [cost.energy(table, d) for d in range(0, 3000, 7)]
        assert values == sorted(values) and values[0] == 0
    fp32 = lp.formats.get("fp32")
    floats = [cost.product_pj(lp.FloatingPoint(5, m), fp32) for m in range(0, 12)]
    fixed = [cost.product_pj(lp.FixedPoint(w, 0), lp.FixedPoint(w, 0)) for w in range(2, 33)]
    assert floats[1:] == sorted(floats[1:]) and fixed == sorted(fixed)
    assert floats[0] < floats[1]  # man = 0 is a power of two: a shift
    assert cost.product_pj(lp.formats.get("pot7"), fp32) == cost.energy(cost.INT_ADD, 8)
    bits = [sum(cost.LayerCost("l", 10, True, 5, 7, 3,
                               dict.fromkeys([*lp.recipe.TENSOR_CLASSES, "input"],
                                             lp.FixedPoint(w, 0))).moved_bits().values())
            for w in range(2, 33)]
    assert bits == sorted(bits)


def test_pot7_needs_multipliers_only_where_an_input_is_not_pow2() -> None:
    """pot7 activations and errors: every grad product has a pow2 error; a forward product
    has a pow2 input unless the layer is fed by the data (conv1) or an average pool."""
    quick = _layers("cifar10_quick", POT7)
    for name, la in quick.items():
        needs = {k for k, (n, shift) in la.products().items() if n and not shift}
        assert needs == ({"forward"} if name in ("conv1", "conv3", "ip1") else set()), name
        x = la.fmt["input"]
        assert (x == lp.formats.get("pot7")) == (name in ("conv2", "ip2"))
    small = _layers("small_cnn", POT7, shape=(1, 8, 8))  # 4x4 adaptive pool of 4x4: identity
    assert [n for n, la in small.items() if any(n_ and not s for n_, s in la.products().values())
            ] == ["conv1"]


def test_cli_prints_modelled_tables_and_writes_plots(tmp_path, capsys) -> None:
    recipe_file = tmp_path / "pot7.toml"
    Recipe(name="pot7mine", **POT7).to_file(recipe_file)
    rc = cost.main(["--model", "small_cnn", "--recipe", str(recipe_file), "--batch", "10",
                    "--memory", "sram1m", "--per-layer", "--out", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert rc == 0 and "modelled" in out and "pot7mine" in out and "| conv2 |" in out
    assert (tmp_path / "plots" / "cost.png").stat().st_size > 0
    assert (tmp_path / "plots" / "cost.svg").stat().st_size > 0
    assert cost.main(["--recipe", str(tmp_path / "missing.toml")]) == 2
    assert "error" in capsys.readouterr().err


def test_subcommand_and_report_section(capsys) -> None:
    parser = argparse.ArgumentParser(prog="lowprec")
    cost.add_cost_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cost", "--model", "small_cnn", "--recipe", "fp32"])
    assert args.func(args) == 0 and "| fp32 |" in capsys.readouterr().out
    recipes = {"fp32": Recipe(name="fp32").to_dict(), "pot7": Recipe(**POT7).to_dict()}
    md = cost.report_section("small_cnn", recipes, input_shape=(1, 8, 8), batch=4)
    assert "modelled" in md and "| pot7 |" in md and "| fp32 |" in md
