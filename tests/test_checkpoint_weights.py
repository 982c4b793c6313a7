"""Weights that are not what the user trained are refused at plan time, by name, in one line (issue 17, kinds 1-2).

Each case is a mutated copy of a built-in model in tmp_path: a tensor dropped, added, NaN'd, re-typed; a config
that says more layers than the weights hold or swaps a conv layer for attention; a sharded checkpoint with a shard
that lost a tensor; an added token that reuses a vocabulary id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from edgekit.builtin import ROOT as BUILTIN
from edgekit.errors import CheckpointError, EdgekitError, UnsupportedError
from edgekit.export import make_plan

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402


def mutate(
    tmp_path: Path,
    name: str = "lfm2-tiny",
    tensors: Callable[[dict[str, Any]], None] | None = None,
    config: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    d = tmp_path / name
    shutil.copytree(BUILTIN / name, d)
    if tensors is not None:
        sd = load_file(d / "model.safetensors")
        tensors(sd)
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((d / "config.json").read_text())
        config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


def refused(path: Path, error: type[EdgekitError], match: str, fmt: str = "gguf", **kw: Any) -> str:
    with pytest.raises(error, match=match) as e:
        make_plan(path, fmt, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_builtins_pass_the_weight_checks():
    for name, fmt in (("builtin:lfm2-tiny", "gguf"), ("builtin:bitnet-tiny", "gguf"), ("builtin:trm-sudoku", "onnx")):
        make_plan(name, fmt)


# --- LFM2 --------------------------------------------------------------------------------------------------


def test_missing_tensor_named(tmp_path):
    d = mutate(tmp_path, tensors=lambda sd: sd.pop("model.layers.3.feed_forward.w2.weight"))
    refused(d, CheckpointError, r"model\.layers\.3\.feed_forward\.w2\.weight is missing")


def test_missing_tensor_in_one_shard(tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(BUILTIN / "lfm2-tiny", d)
    sd = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(sd)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {n: f for f, ns in shards.items() for n in ns}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    lost = names[-1]
    for f, ns in shards.items():
        save_file({n: sd[n] for n in ns if n != lost}, d / f, metadata={"format": "pt"})
    refused(d, CheckpointError, rf"lists tensor {lost} in shard model-00002-of-00002.safetensors, but no shard holds it")
    # the same shard layout with the tensor present and listed passes
    save_file({n: sd[n] for n in shards["model-00002-of-00002.safetensors"]}, d / "model-00002-of-00002.safetensors",
              metadata={"format": "pt"})
    make_plan(d, "gguf")
    # and a tensor the index does not list is refused
    del weight_map[lost]
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    refused(d, CheckpointError, "which the index does not list")


def test_config_with_more_layers_than_the_weights(tmp_path):
    def more(cfg):
        cfg["num_hidden_layers"] = 8
        cfg["layer_types"] = cfg["layer_types"] + ["conv", "conv"]

    d = mutate(tmp_path, config=more)
    refused(d, CheckpointError, "num_hidden_layers 8 but the weights hold no tensors for layers 6, 7")


def test_config_with_fewer_layers_than_the_weights(tmp_path):
    def fewer(cfg):
        cfg["num_hidden_layers"] = 5
        cfg["layer_types"] = cfg["layer_types"][:5]

    d = mutate(tmp_path, config=fewer)
    refused(d, CheckpointError, "hold decoder layer 5 .* num_hidden_layers 5")


def test_layer_types_swap_conv_for_attention(tmp_path):
    def swap(cfg):
        cfg["layer_types"][2], cfg["layer_types"][3] = "conv", "full_attention"

    d = mutate(tmp_path, config=swap)
    refused(d, CheckpointError, r"layer 2 holds model\.layers\.2\.self_attn\..* layer types")


def test_unexpected_tensor_refused_and_allow_extra(tmp_path):
    d = mutate(tmp_path, tensors=lambda sd: sd.update({"value_head.summary.weight": torch.zeros(1, 256)}))
    refused(d, CheckpointError, r"unexpected tensor value_head\.summary\.weight .*--allow-extra-tensors")
    prep = make_plan(d, "gguf", allow_extra_tensors=True)
    assert prep.plan.to_dict()["allow_extra_tensors"] is True


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.conv.in_proj.weight_scale",  # a quantisation scale: the weight means something else without it
        "model.layers.0.conv.out_proj.bias",  # a bias of a used module: dropping it changes the output
        "model.embedding_norm.bias",
    ],
)
def test_extra_tensor_that_changes_the_model_cannot_be_allowed(tmp_path, name):
    d = mutate(tmp_path, tensors=lambda sd: sd.update({name: torch.ones(1)}))
    refused(d, CheckpointError, rf"unexpected tensor {name}.*cannot be dropped", allow_extra_tensors=True)


def test_non_float_dtype(tmp_path):
    key = "model.layers.1.conv.out_proj.weight"
    d = mutate(tmp_path, tensors=lambda sd: sd.update({key: sd[key].to(torch.int8)}))
    refused(d, CheckpointError, rf"{key} has dtype I8; expected BF16/F16/F32/F64")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensor_named(tmp_path, value):
    key = "model.layers.4.self_attn.k_proj.weight"

    def poison(sd):
        sd[key][3, 5] = value

    d = mutate(tmp_path, tensors=poison)
    refused(d, CheckpointError, rf"{key} holds 1 NaN/Inf value")


def test_wrong_shape(tmp_path):
    key = "model.layers.2.self_attn.q_layernorm.weight"
    d = mutate(tmp_path, tensors=lambda sd: sd.update({key: torch.ones(32, dtype=torch.bfloat16)}))
    refused(d, CheckpointError, rf"{key} has shape \[32\]")


def test_tied_head_copy_must_equal_the_embedding(tmp_path):
    d = mutate(tmp_path, tensors=lambda sd: sd.update({"lm_head.weight": sd["model.embed_tokens.weight"].clone()}))
    make_plan(d, "gguf")  # the same tensor saved twice: harmless
    d2 = mutate(tmp_path / "b", tensors=lambda sd: sd.update({"lm_head.weight": sd["model.embed_tokens.weight"] * 2}))
    refused(d2, CheckpointError, "lm_head.weight differs from model.embed_tokens.weight")


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"tie_embedding": False}, UnsupportedError, "untied LM head"),
        ({"tie_embedding": "no"}, CheckpointError, "true or false"),
        ({"rope_parameters": {"rope_theta": 0.0, "rope_type": "default"}}, CheckpointError, "rope_theta must be positive"),
        ({"rope_parameters": {"rope_theta": -1e6, "rope_type": "default"}}, CheckpointError, "rope_theta must be positive"),
        ({"rope_parameters": {"rope_theta": "1e6", "rope_type": "default"}}, CheckpointError, "rope_theta .*wrong type"),
        ({"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn"}}, UnsupportedError, "rope_type 'yarn'"),
        ({"num_hidden_layers": "6"}, CheckpointError, "num_hidden_layers has the wrong type"),
        ({"num_attention_heads": 4.5}, CheckpointError, "num_attention_heads has the wrong type"),
        ({"conv_L_cache": True}, CheckpointError, "conv_L_cache has the wrong type"),
        ({"layer_types": [["conv"]] * 6}, CheckpointError, "layer_types"),
        ({"layer_types": None, "full_attn_idxs": []}, UnsupportedError, "no attention layer"),
        ({"layer_types": ["conv"] * 6}, UnsupportedError, "no attention layer"),
        ({"layer_types": None, "full_attn_idxs": [2, 9]}, CheckpointError, r"full_attn_idxs' \[9\] out of range"),
        ({"layer_types": None, "full_attn_idxs": "2,4"}, CheckpointError, "full_attn_idxs' must be a list"),
    ],
)
def test_config_values_that_change_the_computation(tmp_path, change, error, match):
    d = mutate(tmp_path, config=lambda cfg: cfg.update(change))
    refused(d, error, match)


def test_full_attn_idxs_in_range_is_honoured(tmp_path):
    d = mutate(tmp_path, config=lambda cfg: cfg.update({"layer_types": None, "full_attn_idxs": [2, 4]}))
    assert make_plan(d, "gguf").checkpoint.model_config.layer_types[2] == "full_attention"


def test_added_token_reusing_a_vocabulary_id(tmp_path):
    d = mutate(tmp_path)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"].append(
        {"id": 300, "content": "<|tool|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
    )
    (d / "tokenizer.json").write_text(json.dumps(tok))
    refused(d, CheckpointError, "reuses id 300 .*one-to-one")


# --- BitNet --------------------------------------------------------------------------------------------------


def test_bitnet_missing_and_nan_and_extra(tmp_path):
    key = "model.layers.1.mlp.up_proj.weight"
    d = mutate(tmp_path / "a", "bitnet-tiny", tensors=lambda sd: sd.pop(key))
    refused(d, CheckpointError, rf"{key} is missing")

    def nan(sd):
        sd[key][0, 0] = float("nan")

    d = mutate(tmp_path / "b", "bitnet-tiny", tensors=nan)
    refused(d, CheckpointError, rf"{key} holds 1 NaN/Inf")
    # a weight_scale beside master weights: a pre-quantised scale that cannot be dropped
    scale = "model.layers.0.self_attn.q_proj.weight_scale"
    d = mutate(tmp_path / "c", "bitnet-tiny", tensors=lambda sd: sd.update({scale: torch.ones(1)}))
    refused(d, CheckpointError, rf"unexpected tensor {scale} .*cannot be dropped", allow_extra_tensors=True)


def test_bitnet_packed_layout_is_legitimate(tmp_path):
    from edgekit.families.bitnet import weights

    w = weights.load(BUILTIN / "bitnet-tiny")
    d = weights.write_checkpoint(w, tmp_path / "packed", "packed", copy_files_from=BUILTIN / "bitnet-tiny",
                                 base_config=json.loads((BUILTIN / "bitnet-tiny" / "config.json").read_text()))
    make_plan(d, "gguf")  # uint8 codes + weight_scale pass the dtype checks
    sd = load_file(d / "model.safetensors")
    sd.pop("model.layers.2.mlp.down_proj.weight_scale")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    # the plan accepts it (weight_scale is optional per tensor); reading the weights names the missing scale
    with pytest.raises(CheckpointError, match=r"down_proj.weight_scale is missing"):
        weights.load(d)


def test_bitnet_config_types(tmp_path):
    d = mutate(tmp_path / "a", "bitnet-tiny", config=lambda c: c.update(tie_word_embeddings="false"))
    refused(d, CheckpointError, "tie_word_embeddings must be true or false")
    d = mutate(tmp_path / "b", "bitnet-tiny", config=lambda c: c.update(rope_parameters={"rope_theta": 0.0}))
    refused(d, CheckpointError, "rope_theta must be a finite positive number")
    d = mutate(tmp_path / "c", "bitnet-tiny", config=lambda c: c.update(num_hidden_layers=6))
    refused(d, CheckpointError, "num_hidden_layers 6 but the weights hold no tensors for layers 4, 5")


# --- TRM -----------------------------------------------------------------------------------------------------


def _trm_copy(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    d = tmp_path / "trm"
    shutil.copytree(BUILTIN / "trm-sudoku", d)
    step = next(d.glob("step_*"))
    sd = torch.load(step, map_location="cpu", weights_only=True)
    change(sd)
    torch.save(sd, step)
    return d


def test_trm_nan_and_dtype(tmp_path):
    def nan(sd):
        key = next(k for k in sd if k.endswith("lm_head.weight"))
        sd[key][0, 0] = float("nan")

    refused(_trm_copy(tmp_path / "a", nan), CheckpointError, r"lm_head\.weight holds NaN", fmt="onnx")

    def ints(sd):
        key = next(k for k in sd if k.endswith("q_head.weight"))
        sd[key] = sd[key].to(torch.int32)

    refused(_trm_copy(tmp_path / "b", ints), CheckpointError, r"q_head\.weight has dtype Int", fmt="onnx")

    def drop(sd):
        sd.pop(next(k for k in sd if k.endswith("L_level.layers.1.mlp.down_proj.weight")))

    refused(_trm_copy(tmp_path / "c", drop), CheckpointError, r"L_level\.layers\.1\.mlp\.down_proj\.weight is missing",
            fmt="onnx")
