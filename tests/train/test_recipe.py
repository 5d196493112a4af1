"""Recipes: specs, overrides, presets and their TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

import lowprec as lp
from lowprec.train.recipe import TENSOR_CLASSES, QuantSpec, Recipe, RecipeError


def test_spec_coercion_and_validation() -> None:
    r = Recipe(weight="fp12", activation=lp.formats.get("pot7"),
               error={"format": "fp8_e5m2", "rounding": "stochastic", "rand_bits": 8})
    assert r.weight == QuantSpec(lp.formats.get("fp12"))
    assert r.activation.format == lp.PowerOfTwo(6, emax=31)
    assert r.error.rand_bits == 8 and r.update is None
    with pytest.raises(RecipeError, match="error: .*rounding='sideways'"):
        Recipe(error={"format": "fp12", "rounding": "sideways"})
    with pytest.raises(RecipeError, match="weight: .*unknown format 'fp13'"):
        Recipe(weight="fp13")
    with pytest.raises(ValueError, match="rand_bits applies to rounding='stochastic' only"):
        QuantSpec("fp12", rand_bits=4)
    with pytest.raises(ValueError, match="overflow='inf' needs"):
        QuantSpec("fxp12", overflow="inf")
    with pytest.raises(TypeError, match="scaling must be"):
        QuantSpec("fp12", scaling="tensor")  # type: ignore[arg-type]


def test_overrides_apply_in_order() -> None:
    r = Recipe(weight="fp12", activation="pot7",
               overrides={"fc*": {"activation": None}, "fc2": {"activation": "bf16"}})
    assert r.for_layer("conv1")["activation"] == QuantSpec("pot7")
    assert r.for_layer("fc1")["activation"] is None
    assert r.for_layer("fc2")["activation"] == QuantSpec("bf16")
    assert r.for_layer("fc1")["weight"] == QuantSpec("fp12")
    with pytest.raises(RecipeError, match=r"overrides\['fc'\]: unknown key\(s\) \['bias'\]"):
        Recipe(overrides={"fc": {"bias": None}})


@pytest.mark.parametrize("name", lp.recipes.names())
def test_preset_toml_round_trip(name: str, tmp_path: Path) -> None:
    r = lp.recipes.get(name)
    assert r.name == name and len(lp.recipes.describe(name)) > 80
    assert Recipe.from_toml(r.to_toml()) == r
    path = tmp_path / f"{name}.toml"
    r.to_file(path)
    assert Recipe.from_file(path) == r


def test_presets_cover_the_study_and_the_field() -> None:
    assert lp.recipes.names()[:6] == list(lp.recipes.STUDY)
    assert {"bf16_mixed", "fp8_hybrid", "mxfp8"} <= set(lp.recipes.names())
    fp32 = lp.recipes.get("fp32")
    assert all(s is None for s in fp32.specs().values())
    for name in ("fxp12_sr", "fp12_sr", "fxp12_sr_ls", "fp12_sr_ls"):
        r = lp.recipes.get(name)
        stored = {c for c in TENSOR_CLASSES if r.specs()[c] is not None}
        assert stored == {"weight", "activation", "error", "update"}, name
        assert all(r.specs()[c].rounding == "stochastic" for c in stored)
        assert all((r.specs()[c].scaling is not None) == name.endswith("_ls") for c in stored)
    pot7 = lp.recipes.get("pot7")
    assert pot7.activation.format == pot7.error.format == lp.formats.get("pot7")
    assert not pot7.master_weights and lp.recipes.get("fp8_hybrid").master_weights
    with pytest.raises(ValueError, match="unknown recipe 'fp7'; known: fp32, fxp12_sr"):
        lp.recipes.get("fp7")


def test_custom_formats_and_scaling_round_trip() -> None:
    r = Recipe(
        weight=QuantSpec(lp.FixedPoint(10, 6), "stochastic", rand_bits=12),
        activation=QuantSpec(lp.FloatingPoint(5, 4, bias=10, subnormals=False, specials="fn")),
        error=QuantSpec(lp.PowerOfTwo(4, emax=3), "stochastic",
                        scaling=lp.Scaling("block", axis=1, block=16, scale_format="fp8_e4m3",
                                           method="history", history=4)),
        update=QuantSpec("bf16", overflow="saturate"),
        master_weights=True,
        overrides={"layer1.*": {"error": None, "weight_grad": "fp16"}},
        name="custom",
        description="every kind of entry",
    )
    text = r.to_toml()
    assert 'kind = "fixed"' in text and 'kind = "pow2"' in text and '"none"' in text
    assert Recipe.from_toml(text) == r


def test_grad_comm_round_trips_and_is_absent_by_default() -> None:
    base = lp.recipes.get("fp12_sr")
    assert base.grad_comm is None and "grad_comm" not in base.to_toml()  # files as before
    r = base.replace(grad_comm=QuantSpec("fp8_e5m2", "stochastic", scaling=lp.Scaling("tensor")))
    text = r.to_toml()
    assert "[grad_comm]" in text and Recipe.from_toml(text) == r
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_toml('grad_comm = "bf16"').grad_comm == QuantSpec("bf16")
    with pytest.raises(RecipeError, match="grad_comm: scaling method 'history'"):
        Recipe(grad_comm=QuantSpec("fp8_e4m3", scaling=lp.Scaling(method="history")))


BAD_FILES = [
    ("weight = [", "not valid TOML"),
    ("wieght = 'fp12'", r"unknown key\(s\) \['wieght'\]; allowed: \['weight'"),
    ("weight = 'fp13'", "weight: unknown format 'fp13'; known presets"),
    ("weight = 12", "weight: expected a QuantSpec, format, preset name, table or None"),
    ("[weight]\nrounding = 'nearest'", r"weight: missing key\(s\) \['format'\]"),
    ("[weight]\nformat = {kind = 'fixed', wl = 12}", r"weight: missing key\(s\) \['fl'\]"),
    ("[weight]\nformat = {kind = 'posit', n = 8}", "weight: format kind='posit' is unknown"),
    ("[weight]\nformat = {kind = 'fixed', wl = 99, fl = 8}", r"weight: wl=99 is out of range"),
    ("[error]\nformat = 'fp12'\nscaling = {granularity = 'row'}",
     "error: granularity='row' is unknown"),
    ("[error]\nformat = 'fp12'\nscaling = {grain = 'tensor'}",
     r"error: unknown key\(s\) \['grain'\]"),
    ("master_weights = 'yes'", "master_weights must be true or false"),
    ("[grad_comm]\nformat = 'fp13'", "grad_comm: unknown format 'fp13'"),
    ("[overrides.fc]\nactivation = 'nope'", r"overrides\['fc'\].activation: unknown format"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_invalid_recipe_files_say_what_is_wrong(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=f"recipe file '{path}': .*{message}"):
        Recipe.from_file(path)
