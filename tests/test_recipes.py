"""edgekit/recipes.py: the one table of what is supported, and the rule that every row has a parity test."""

import importlib.util
from pathlib import Path

import pytest

from edgekit import families
from edgekit.errors import UnsupportedError
from edgekit.families import Family
from edgekit.plan import Format
from edgekit.recipes import RECIPES, Recipe

TESTS = Path(__file__).resolve().parent
LFM2_GGUF = RECIPES.get(Family.LFM2, Format.GGUF)


@pytest.mark.parametrize("name", ["Q4_K_M", "q4_k_m", " q8_0 "])
def test_quant_names_are_case_insensitive(name):
    assert LFM2_GGUF.quant(name).name == name.strip().lower()


def test_unknown_quant_lists_valid_ones():
    with pytest.raises(UnsupportedError, match="valid: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0"):
        LFM2_GGUF.quant("q3_k_s")


def test_ternary_quant_on_lfm2_names_valid_ones():
    with pytest.raises(UnsupportedError, match="unknown quantisation 'tq2_0' for lfm2 -> gguf; valid: f32"):
        LFM2_GGUF.quant("tq2_0")


def test_default_quant_is_full_precision():
    assert LFM2_GGUF.quant(None).name == "f32"


def test_a_row_without_thresholds_for_a_quant_cannot_exist():
    with pytest.raises(ValueError, match="no parity thresholds for q4_0"):
        Recipe(Family.LFM2, Format.GGUF, dict(LFM2_GGUF.quants), "f32",
               {k: v for k, v in LFM2_GGUF.thresholds.items() if k != "q4_0"}, LFM2_GGUF.options, LFM2_GGUF.module)


def test_duplicate_row_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        RECIPES.register(LFM2_GGUF)


def test_missing_pair_names_what_works():
    with pytest.raises(UnsupportedError, match=r"toy cannot be exported to gguf; formats that work for toy: none yet"):
        RECIPES.get(Family("toy"), Format.GGUF)


def test_detect_rejects_other_architectures_naming_supported():
    with pytest.raises(UnsupportedError, match="supported families: lfm2"):
        families.detect({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})


def test_unregistered_family_is_named():
    with pytest.raises(UnsupportedError, match="'qwen' is not supported yet; supported: lfm2"):
        families.get("qwen")


def test_every_recipe_has_a_parity_test():
    """Parity test modules parametrise over ``parity.quants(family, format)``; importing them all records which
    rows they cover.  A row without one fails here."""
    import parity

    for path in sorted((TESTS / "exporters").rglob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"_parity_scan_{path.stem}_{path.parent.name}", path)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except pytest.skip.Exception:  # an engine not installed here: its module skips at import
            continue
    missing = [r.key for r in RECIPES if (r.family.value, r.format.value) not in parity.COVERED]
    assert not missing, f"recipes without a parity test: {missing}"
