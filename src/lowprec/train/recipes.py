"""Named recipes: the study's and the field's, one TOML file each in ``recipe_presets/``.

Each file's ``description`` says what the recipe is and where it comes from
(:func:`describe`). Study: ``fp32``, ``fxp12_sr``, ``fp12_sr``, ``fxp12_sr_ls``,
``fp12_sr_ls``, ``pot7``. Field, for comparison (op-level: they round the
operands of every product): ``bf16_mixed``, ``fp8_hybrid``, ``mxfp8``, ``mxfp4``,
``nvfp4``; and ``pot7_operands`` (every product multiplier-free). Files are parsed
anew on every :func:`get`, so a recipe's scaling templates are never shared between runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .recipe import Recipe

__all__ = ["describe", "get", "names", "resolve", "STUDY"]

STUDY = ("fp32", "fxp12_sr", "fp12_sr", "fxp12_sr_ls", "fp12_sr_ls", "pot7")
_DIR = "recipe_presets"


def _files() -> dict[str, resources.abc.Traversable]:
    root = resources.files(__package__).joinpath(_DIR)
    return {f.name.removesuffix(".toml"): f for f in root.iterdir() if f.name.endswith(".toml")}


def names() -> list[str]:
    """Names of all preset recipes: the study's first, then the field's (sorted)."""
    rest = sorted(set(_files()) - set(STUDY))
    return [*STUDY, *rest]


def get(name: str) -> Recipe:
    """The preset recipe called ``name`` (see :func:`names`)."""
    files = _files()
    if name not in files:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(names())}")
    recipe = Recipe.from_toml(files[name].read_text(encoding="utf-8"), f"preset {name!r}")
    if recipe.name != name:
        raise ValueError(f"preset file {name}.toml names itself {recipe.name!r}")
    return recipe


def resolve(recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any] | None) -> Recipe:
    """The one recipe resolver: a Recipe as is; ``None`` is fp32; a mapping is a recipe
    table (``Recipe.from_dict``); a path to an existing file is a TOML recipe (named after
    the file when it names itself nothing); any other string is a preset name."""
    if recipe is None:
        return Recipe(name="fp32")
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    if not isinstance(recipe, str | os.PathLike):
        raise TypeError(f"recipe must be a lowprec.Recipe, a preset name, a TOML path or a "
                        f"table, got {recipe!r}")
    path = Path(recipe)
    if isinstance(recipe, os.PathLike) or path.suffix == ".toml" or path.is_file():
        loaded = Recipe.from_file(path)
        return loaded if loaded.name else loaded.replace(name=path.stem)
    return get(recipe)


def describe(name: str) -> str:
    """What the preset is and where it comes from."""
    return get(name).description
