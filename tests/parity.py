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


def assert_three_parts(verification: dict, thresholds: object) -> None:
    """Issue 11's gates on a language bundle's recorded verification: passed; the tensor check read the file
    back and passed, every ternary tensor exactly (``ternary/*``: 0 relative error, 0 steps); fidelity against
    the file's own weights within the recipe's (cost-widened) bars; the cost reported."""
    v = verification
    m = v["metrics"]
    assert v["passed"], v["failures"]
    tc = m["tensor_check"]
    assert tc is not None and tc["passed"] and m["fidelity_reference"] == "file weights", m
    for qtype, worst in tc["worst"].items():
        if qtype.startswith("ternary/"):
            assert worst["rel_rms"] == 0.0 and worst["block_steps"] == 0.0, (qtype, worst)
    top1_bar, kl_bar = thresholds.fidelity_bars(m)  # type: ignore[attr-defined]
    assert thresholds.fidelity_top1(m) >= top1_bar and m["mean_kl"] <= kl_bar, m  # type: ignore[attr-defined]
    assert {"top1", "mean_kl", "kl_rel", "entropy"} <= set(m["cost"]), m["cost"]
