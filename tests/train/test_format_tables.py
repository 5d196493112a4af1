"""One format serialiser (``Format.to_dict`` / ``Format.from_dict``) for recipe files,
checkpoints and sweeps, and the ``Scaling.scale_rounding`` rename."""

from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

import pytest
import torch

from lowprec.numerics.formats import FixedPoint, FloatingPoint, Format, PowerOfTwo
from lowprec.numerics.presets import name_of
from lowprec.numerics.scaling import Scaling
from lowprec.train.recipe import QuantSpec, Recipe


def test_tables_keep_the_recipe_file_spelling() -> None:
    assert FixedPoint(12, 8).to_dict() == {"kind": "fixed", "wl": 12, "fl": 8}
    assert FloatingPoint(6, 5, specials="none").to_dict() == {
        "kind": "float", "exp": 6, "man": 5, "bias": 31, "subnormals": True, "specials": "none"}
    assert PowerOfTwo(6, emax=31).to_dict() == {"kind": "pow2", "exp_bits": 6, "emax": 31}
    text = Recipe(weight=QuantSpec(FloatingPoint(5, 4, bias=12, subnormals=False)),
                  name="x").to_toml()
    assert ('[weight.format]\nkind = "float"\nexp = 5\nman = 4\nbias = 12\nsubnormals = false\n'
            'specials = "ieee"\n') in text
    assert Recipe.from_toml(text).weight.format == FloatingPoint(5, 4, 12, False)


def test_tables_round_trip_to_the_same_values() -> None:
    """Every small float, fixed and power-of-two format: the table rebuilds a format with
    the same value set (compared through its decoded codes, not through equality)."""
    fmts: list[Format] = [FixedPoint(wl, fl) for wl, fl in itertools.product((2, 5, 8), (-1, 3))]
    fmts += [FloatingPoint(e, m, bias, sub, sp)
             for e, m, bias, sub, sp in itertools.product(
                 (2, 3, 4), (0, 2), (None, 1), (True, False), ("ieee", "fn", "none"))]
    fmts += [PowerOfTwo(b, emax) for b, emax in itertools.product((1, 3), (-2, 5))]
    for fmt in fmts:
        back = Format.from_dict(fmt.to_dict())
        assert type(back) is type(fmt) and back == fmt, fmt
        assert torch.equal(back.values(), fmt.values()), fmt


def test_a_new_field_is_serialised_without_code() -> None:
    @dataclasses.dataclass(frozen=True)
    class Tagged(FloatingPoint):
        table_kind: ClassVar[str | None] = "tagged"
        negative_zero: bool = True

    fmt = Tagged(4, 3, negative_zero=False)
    assert fmt.to_dict()["negative_zero"] is False
    assert Format.from_dict(fmt.to_dict()) == fmt
    assert Format.from_dict({"kind": "tagged", "exp": 4, "man": 3}).negative_zero is True


@pytest.mark.parametrize(("table", "message"), [
    ({"kind": "posit", "n": 8}, "format kind='posit' is unknown"),
    ({"kind": "fixed", "wl": 8}, r"missing key\(s\) \['fl'\]"),
    ({"kind": "pow2", "exp_bits": 6, "emax": 0, "man": 1}, r"unknown key\(s\) \['man'\]"),
    ([1, 2], "must be a table"),
])
def test_bad_tables_are_named(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Format.from_dict(table)  # type: ignore[arg-type]


def test_reverse_preset_lookup() -> None:
    assert name_of(FloatingPoint(5, 10)) == "fp16"
    assert name_of(FloatingPoint(5, 10, bias=15)) == "fp16"  # the default bias, given
    assert name_of(FloatingPoint(5, 9)) == FloatingPoint(5, 9).name


def test_scale_rounding_rename_keeps_the_old_spelling_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="scale_rounding"):
        old = Scaling("block", block=16, rounding="ceil")
    assert old == Scaling("block", block=16, scale_rounding="ceil")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="give only"):
        Scaling(rounding="ceil", scale_rounding="even")
    text = ('[weight]\nformat = "fp8_e4m3"\n[weight.scaling]\ngranularity = "block"\n'
            'block = 16\nrounding = "even"\n')
    with pytest.warns(DeprecationWarning, match="write scale_rounding = 'even'"):
        recipe = Recipe.from_toml(text)
    assert recipe.weight.scaling.scale_rounding == "even"
    assert 'scale_rounding = "even"' in recipe.to_toml()
