import json
from pathlib import Path

import pytest

from edgekit import families
from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.exporters import EXPORTERS
from edgekit.families import lfm2
from edgekit.plan import Target

CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "configs"


def test_target_parse_names_known_formats():
    assert Target.parse("GGUF") is Target.GGUF
    with pytest.raises(UnsupportedError, match="known formats: gguf, executorch, onnx"):
        Target.parse("tflite")


@pytest.mark.parametrize("name", ["Q4_K_M", "q4_k_m", " q8_0 "])
def test_quant_names_are_case_insensitive(name):
    assert EXPORTERS[Target.GGUF].quant(name).name == name.strip().lower()


def test_unknown_quant_lists_valid_ones():
    with pytest.raises(UnsupportedError, match="valid: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0"):
        EXPORTERS[Target.GGUF].quant("q3_k_s")


def test_default_quant_is_full_precision():
    assert EXPORTERS[Target.GGUF].quant(None).name == "f32"


def test_every_quant_has_thresholds():
    for exporter in EXPORTERS.values():
        assert set(exporter.quants) == set(exporter.thresholds)


def test_detect_rejects_other_architectures_naming_supported():
    with pytest.raises(UnsupportedError, match="supported families: lfm2"):
        families.detect({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})


def test_unregistered_family_is_named():
    with pytest.raises(UnsupportedError, match="'trm' is not supported yet; supported: lfm2"):
        families.get("trm")


def test_feed_forward_auto_adjust_matches_lfm2_350m():
    cfg = json.loads((CONFIGS / "lfm2-350m.json").read_text())
    assert lfm2.feed_forward_size(cfg) == 4608
    assert lfm2.feed_forward_size({"intermediate_size": 768, "block_auto_adjust_ff_dim": False}) == 768
    assert lfm2.feed_forward_size({"block_ff_dim": 768, "block_auto_adjust_ff_dim": True, "block_multiple_of": 256}) == 512


def test_layer_types_from_full_attn_idxs():
    cfg = {"num_hidden_layers": 4, "full_attn_idxs": [1, 3]}
    assert lfm2.layer_types(cfg) == ["conv", "full_attention", "conv", "full_attention"]
    with pytest.raises(CheckpointError, match="layer_types"):
        lfm2.layer_types({"num_hidden_layers": 2, "layer_types": ["conv", "mamba"]})
