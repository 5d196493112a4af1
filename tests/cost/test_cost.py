"""The cost model: layer shapes, MAC counts, energy rules, CLI."""

from __future__ import annotations

import pytest
import torch

import lowprec as lp
from lowprec import cli
from lowprec.cost import analysis, energy, tables
from lowprec.study.models import build_model
from lowprec.train.recipe import TENSOR_CLASSES, Recipe

POT7 = {"activation": "pot7", "error": "pot7", "weight": "fp12", "update": "fp12"}
# cifar10_quick, one 3x32x32 image: out_elems x in_channels x 5 x 5 (ip: out x in)
QUICK_MACS = {"conv1": 32 * 32 * 32 * 3 * 25, "conv2": 32 * 16 * 16 * 32 * 25,
              "conv3": 64 * 8 * 8 * 32 * 25, "ip1": 64 * 64 * 4 * 4, "ip2": 10 * 64}


def _layers(model_name: str, recipe, batch: int = 1, shape=(3, 32, 32)):
    torch.manual_seed(0)
    model = build_model(model_name, 10, shape[0], shape[1])
    return {la.name: la for la in analysis.analyse(model, (batch, *shape), recipe)}


def test_cifar10_quick_mac_counts_by_hand() -> None:
    assert QUICK_MACS["conv1"] == 2_457_600
    one = _layers("cifar10_quick", None)
    assert {n: la.macs for n, la in one.items()} == QUICK_MACS
    hundred = _layers("cifar10_quick", None, batch=100)
    assert {n: la.macs for n, la in hundred.items()} == {n: 100 * m for n, m in QUICK_MACS.items()}
    assert not one["conv1"].grad_input and all(one[n].grad_input for n in QUICK_MACS
                                               if n != "conv1")
    assert one["conv1"].params == 32 * 3 * 25 + 32 and one["ip2"].params == 650
    s = analysis.summarize(list(one.values()))
    assert s["products"] == 3 * sum(QUICK_MACS.values()) - QUICK_MACS["conv1"]


def test_fp32_recipe_ratio_is_exactly_one() -> None:
    torch.manual_seed(0)
    rows = tables.recipe_table(build_model("small_cnn", 10, 1, 8), (8, 1, 8, 8),
                               [Recipe(name="fp32"), POT7])
    assert [rows[0][f"{k}_ratio"] for k in tables.RATIOS] == [1.0] * len(tables.RATIOS)
    assert rows[0]["kind"] == "modelled" and rows[0]["multiplier_products"] == rows[0]["products"]
    assert all(rows[1][f"{k}_ratio"] < 1 for k in tables.RATIOS)


def test_energy_rules_hit_the_table_and_grow_with_bits() -> None:
    assert energy.energy(energy.INT_ADD, 8) == 0.03 and energy.energy(energy.INT_ADD, 32) == 0.1
    assert energy.energy(energy.FLOAT_MUL, 24 * 24) == 3.7
    assert energy.energy(energy.INT_MUL, 64) == 0.2
    assert energy.energy(energy.FLOAT_ADD, 64) == pytest.approx(1.8)  # proportional beyond
    for table in (energy.INT_ADD, energy.FLOAT_ADD, energy.INT_MUL, energy.FLOAT_MUL):
        values = [energy.energy(table, d) for d in range(0, 3000, 7)]
        assert values == sorted(values) and values[0] == 0
    fp32 = lp.formats.get("fp32")
    floats = [energy.product_pj(lp.FloatingPoint(5, m), fp32) for m in range(0, 12)]
    fixed = [energy.product_pj(lp.FixedPoint(w, 0), lp.FixedPoint(w, 0)) for w in range(2, 33)]
    assert floats[1:] == sorted(floats[1:]) and fixed == sorted(fixed)
    assert floats[0] < floats[1]  # man = 0 is a power of two: a shift
    assert energy.product_pj(lp.formats.get("pot7"), fp32) == energy.energy(energy.INT_ADD, 8)
    bits = [sum(analysis.LayerCost("l", 10, True, 5, 7, 3,
                               dict.fromkeys([*TENSOR_CLASSES, "input"],
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
    rc = cli.main(["cost", "--model", "small_cnn", "--recipe", str(recipe_file), "--batch", "10",
                    "--memory", "sram1m", "--per-layer", "--out", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert rc == 0 and "modelled" in out and "pot7mine" in out and "| conv2 |" in out
    assert (tmp_path / "plots" / "cost.png").stat().st_size > 0
    assert (tmp_path / "plots" / "cost.svg").stat().st_size > 0
    assert cli.main(["cost", "--recipe", str(tmp_path / "missing.toml")]) == 2
    assert "error" in capsys.readouterr().err


def test_report_section() -> None:
    recipes = {"fp32": Recipe(name="fp32").to_dict(), "pot7": Recipe(**POT7).to_dict()}
    torch.manual_seed(0)
    md = tables.report_section(build_model("small_cnn", 10, 1, 8), (4, 1, 8, 8), recipes)
    assert "modelled" in md and "| pot7 |" in md and "| fp32 |" in md


def test_multiplications_removed_by_pot7_in_cifar10_quick() -> None:
    torch.manual_seed(0)
    model = build_model("cifar10_quick")
    pot7 = {"activation": "pot7", "error": "pot7", "weight": "fp12", "update": "fp12"}
    r = analysis.multiplications_removed(model, (1, 3, 32, 32), pot7)
    per_image = {"conv1": 2_457_600, "conv2": 6_553_600, "conv3": 3_276_800, "ip1": 65_536,
                 "ip2": 640}
    layers = r["layers"]
    for name in ("conv2", "ip2"):  # fed by ReLU/max-pool or directly: all three are shifts
        assert layers[name] == dict.fromkeys(("forward", "grad_input", "grad_weight"),
                                             per_image[name])
    assert layers["conv1"] == {"forward": 0, "grad_input": 0, "grad_weight": 2_457_600}
    for name in ("conv3", "ip1"):  # fed by an average pool: the forward needs multipliers
        assert layers[name]["forward"] == 0 and layers[name]["grad_weight"] == per_image[name]
    assert r["products"] == 3 * sum(per_image.values()) - per_image["conv1"]
    assert r["total"] == r["products"] - sum(per_image[n] for n in ("conv1", "conv3", "ip1"))
