"""edgekit/families/lfm2/config.py: one typed config read from config.json."""

import json
from pathlib import Path

import pytest

from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.families.lfm2 import Lfm2Config

CONFIGS = Path(__file__).resolve().parents[3] / "bench" / "configs"
BASE = {
    "hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 4096, "norm_eps": 1e-5, "conv_L_cache": 3, "intermediate_size": 768,
    "layer_types": ["full_attention", "conv", "conv"],
}


def test_lfm2_350m():
    c = Lfm2Config.from_hf(json.loads((CONFIGS / "lfm2-350m.json").read_text()))
    assert c.intermediate_size == 4608  # 6656 auto-adjusted: int(2 * 6656 / 3) = 4437 -> next multiple of 256
    assert [i for i, t in enumerate(c.layer_types) if t == "full_attention"] == [2, 5, 8, 10, 12, 14]
    assert (c.hidden_size, c.head_dim, c.num_key_value_heads, c.vocab_size, c.rope_theta) == (1024, 64, 8, 65536, 1e6)
    assert c.kv_values_per_position() == 2 * 6 * 8 * 64


@pytest.mark.parametrize(
    "overrides, ff",
    [
        ({}, 512),  # transformers' default is block_auto_adjust_ff_dim=True: a config without the key adjusts
        ({"block_auto_adjust_ff_dim": False}, 768),
        ({"block_auto_adjust_ff_dim": True, "block_multiple_of": 256}, 512),
        ({"block_ff_dim": 768, "block_auto_adjust_ff_dim": True, "block_multiple_of": 256}, 512),
        ({"block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1.5, "block_multiple_of": 256}, 768),
    ],
)
def test_feed_forward_auto_adjust(overrides, ff):
    assert Lfm2Config.from_hf({**BASE, **overrides}).intermediate_size == ff
    # the width transformers' own Lfm2MLP builds from the same config (keys it does not see take its defaults)
    import transformers
    from transformers.models.lfm2 import modeling_lfm2

    hf = transformers.Lfm2Config(**{k: v for k, v in {**BASE, **overrides}.items() if k != "block_ff_dim"})
    if "block_ff_dim" not in overrides:
        assert modeling_lfm2.Lfm2MLP(hf).w1.out_features == ff


def test_layer_types_from_full_attn_idxs():
    cfg = {k: v for k, v in BASE.items() if k != "layer_types"} | {"num_hidden_layers": 4, "full_attn_idxs": [1, 3]}
    assert Lfm2Config.from_hf(cfg).layer_types == ("conv", "full_attention", "conv", "full_attention")


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"layer_types": ["conv", "mamba", "conv"]}, CheckpointError, "layer_types"),
        ({"hidden_size": 250}, CheckpointError, "not divisible"),
        ({"num_key_value_heads": 3}, CheckpointError, "multiple of num_key_value_heads"),
        ({"hidden_size": "wide"}, CheckpointError, "wrong type"),
        ({"conv_bias": True}, UnsupportedError, "conv_bias"),
        ({"tie_word_embeddings": False}, UnsupportedError, "untied"),
        ({"vocab_size": None}, CheckpointError, "wrong type"),
    ],
)
def test_bad_config_is_one_line(overrides, error, match):
    with pytest.raises(error, match=match) as e:
        Lfm2Config.from_hf({**BASE, **overrides})
    assert "\n" not in str(e.value)


def test_missing_keys_are_named():
    with pytest.raises(CheckpointError, match="lacks conv_L_cache"):
        Lfm2Config.from_hf({k: v for k, v in BASE.items() if k != "conv_L_cache"})


def test_rope_tables_are_huggingface_default():
    c = Lfm2Config.from_hf(BASE)
    cos, sin = c.rope_tables(8)
    assert cos.shape == (8, c.head_dim // 2) and cos.dtype.name == "float32"
    assert cos[0, 0] == 1.0 and abs(sin[1, 0] - 0.8414709848) < 1e-7  # position 1, frequency 1
