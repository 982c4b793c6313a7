"""Parity tests are parametrised from the recipe table: a test module asks for a recipe's quantisations with
``quants(family, format)``, which also records that the pair has a parity test.  ``test_recipes.py`` fails when
a recipe row has none (so a claim without a passing test cannot exist)."""

from __future__ import annotations

from edgekit.families import Family
from edgekit.plan import Format
from edgekit.recipes import RECIPES, Recipe

COVERED: set[tuple[str, str]] = set()


def recipe(family: Family, fmt: Format) -> Recipe:
    COVERED.add((family.value, fmt.value))
    return RECIPES.get(family, fmt)


def quants(family: Family, fmt: Format) -> list[str]:
    """Every quantisation the recipe (family, format) offers: one parity case each."""
    return list(recipe(family, fmt).quants)
