"""BitNetConfig: the 2B-4T config reads, bad quantization configs fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.families.bitnet.config import BitNetConfig
from edgekit.families.bitnet.synthetic import tiny_config
from shared_fixtures import SHARED

FIXTURE = SHARED / "configs" / "bitnet-b1.58-2b-4t.json"


def raw(**overrides):
    base = json.loads(json.dumps(tiny_config().to_dict()))  # sanity: to_dict is JSON-able
    assert base["hidden_size"] == 256
    cfg = {
        "architectures": ["BitNetForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
    }
    cfg.update(overrides)
    return cfg


@pytest.mark.skipif(not FIXTURE.is_file(), reason="shared fixture configs not present")
def test_2b4t_config() -> None:
    c = BitNetConfig.from_hf(json.loads(FIXTURE.read_text()))
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (2560, 6912, 30)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (20, 5, 128)
    assert c.hidden_act == "relu2" and c.tie_word_embeddings and c.rope_theta == 500000.0
    assert c.quantization.linear_class == "bitlinear" and c.quantization.scale_divides
    assert not c.quantization.master_weights
    assert len(c.linear_names()) == 30 * 7


def test_defaults_and_legacy_rope_theta() -> None:
    c = BitNetConfig.from_hf(raw(rope_theta=10000.0))
    assert c.rope_theta == 10000.0 and c.hidden_act == "relu2" and c.head_dim == 64
    assert c.linear_shape("model.layers.0.self_attn.k_proj.weight") == (128, 256)
    assert c.linear_shape("model.layers.1.mlp.down_proj.weight") == (256, 512)


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        ({"quantization_config": None}, CheckpointError, "quantization_config"),
        ({"quantization_config": {"quant_method": "gptq"}}, UnsupportedError, "quant_method"),
        ({"quantization_config": {"quant_method": "bitnet", "linear_class": "int2pack"}}, UnsupportedError, "packing"),
        ({"quantization_config": {"quant_method": "bitnet", "quantization_mode": "lazy"}}, UnsupportedError, "lazy"),
        (
            {"quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "online"}},
            UnsupportedError,
            "autobitlinear",
        ),
        ({"quantization_config": {"quant_method": "bitnet", "use_rms_norm": True}}, UnsupportedError, "use_rms_norm"),
        ({"hidden_act": "gelu"}, UnsupportedError, "hidden_act"),
        ({"num_key_value_heads": 3}, CheckpointError, "multiple"),
        ({"hidden_size": "big"}, CheckpointError, "wrong type"),
        ({"head_dim": 32}, UnsupportedError, "attn_sub_norm"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, UnsupportedError, "rope_type"),
    ],
)
def test_bad_configs(overrides, error, words) -> None:
    cfg = raw(**overrides)
    if overrides.get("quantization_config", 0) is None:
        del cfg["quantization_config"]
    with pytest.raises(error, match=words) as info:
        BitNetConfig.from_hf(cfg)
    assert "\n" not in str(info.value)


def test_missing_keys() -> None:
    cfg = raw()
    del cfg["vocab_size"]
    with pytest.raises(CheckpointError, match="vocab_size"):
        BitNetConfig.from_hf(cfg)
