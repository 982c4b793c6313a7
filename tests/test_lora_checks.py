"""Adapters that would merge something else than what was trained are refused at plan time (issue 17, kind 1):
keys peft would not load, tensors outside target_modules / exclude_modules / layers_to_transform, wrongly typed
config values, a rank that does not match the tensors, NaN/Inf values, an adapter that changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from edgekit.builtin import ROOT as BUILTIN
from edgekit.errors import AdapterError
from edgekit.export import make_plan

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402


def adapter(
    tmp_path: Path,
    config: Callable[[dict[str, Any]], None] | None = None,
    tensors: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    name: str = "lfm2-tiny-lora",
) -> Path:
    d = tmp_path / name
    shutil.copytree(BUILTIN / name, d)
    if config is not None:
        cfg = json.loads((d / "adapter_config.json").read_text())
        config(cfg)
        (d / "adapter_config.json").write_text(json.dumps(cfg))  # allow_nan: NaN is written as the token NaN
    if tensors is not None:
        sd = load_file(d / "adapter_model.safetensors")
        sd = tensors(sd) or sd
        save_file(sd, d / "adapter_model.safetensors", metadata={"format": "pt"})
    return d


def refused(lora: Path, match: str, base: str = "builtin:lfm2-tiny") -> None:
    with pytest.raises(AdapterError, match=match) as e:
        make_plan(base, "gguf", adapter=lora)
    assert "\n" not in str(e.value)


def test_builtin_adapters_pass():
    assert make_plan("builtin:lfm2-tiny", "gguf", adapter="builtin:lfm2-tiny-lora").adapter is not None
    assert make_plan("builtin:bitnet-tiny", "gguf", adapter="builtin:bitnet-tiny-lora").adapter is not None


def test_keys_without_the_peft_prefix(tmp_path):
    d = adapter(tmp_path, tensors=lambda sd: {k.removeprefix("base_model.model."): v for k, v in sd.items()})
    refused(d, r"lacks peft's 'base_model\.model\.' key prefix.*change nothing")


def test_tensors_outside_target_modules(tmp_path):
    d = adapter(tmp_path, config=lambda c: c.update(target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "in_proj"]))
    refused(d, r"holds tensors for model\.layers\.0\.feed_forward\.w1 .*peft would drop them")


def test_tensors_in_exclude_modules(tmp_path):
    d = adapter(tmp_path, config=lambda c: c.update(exclude_modules=["w3"]))
    refused(d, r"feed_forward\.w3 .*excludes")


def test_tensors_outside_layers_to_transform(tmp_path):
    d = adapter(tmp_path, config=lambda c: c.update(layers_to_transform=[0, 1]))
    refused(d, r"holds tensors for model\.layers\.2\.")


def test_regex_target_modules_matching_everything_passes(tmp_path):
    d = adapter(tmp_path, config=lambda c: c.update(target_modules=r".*\.(in_proj|out_proj|q_proj|k_proj|v_proj|w1|w2|w3)"))
    make_plan("builtin:lfm2-tiny", "gguf", adapter=d)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"use_rslora": "false"}, r"use_rslora must be true or false .*got 'false'"),
        ({"use_dora": 0}, "use_dora must be true or false"),
        ({"r": "8"}, "r must be a positive integer"),
        ({"r": 4}, r"says rank 4, but lora_A has 8 rows"),
        ({"rank_pattern": {"w1": 16}}, r"feed_forward\.w1: adapter_config\.json says rank 16"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a finite number"),
        ({"lora_alpha": float("inf")}, "lora_alpha must be a finite number"),
        ({"lora_alpha": "16"}, "lora_alpha must be a finite number"),
        ({"lora_alpha": 0}, "merging would change nothing"),
        ({"target_modules": 7}, "target_modules must be a string or a list of strings"),
        ({"target_modules": "(unclosed"}, "not a valid regular expression"),
        ({"layers_to_transform": "0,1"}, "layers_to_transform must be a layer index"),
        ({"alpha_pattern": {"w1": "x"}}, "alpha_pattern must be"),
        ({"bias": "all"}, "bias 'all' is not supported"),
    ],
)
def test_config_values(tmp_path, change, match):
    refused(adapter(tmp_path, config=lambda c: c.update(change)), match)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_adapter_tensor(tmp_path, value):
    key = "base_model.model.model.layers.4.self_attn.v_proj.lora_B.weight"

    def poison(sd):
        sd[key][1, 1] = value

    refused(adapter(tmp_path, tensors=poison), rf"{key} holds NaN or Inf")


def test_untrained_adapter_changes_nothing(tmp_path):
    def zero(sd):
        for k in sd:
            if ".lora_B" in k:
                sd[k].zero_()

    refused(adapter(tmp_path, tensors=zero), "every lora_B is zero")


def test_bitnet_adapter_checks(tmp_path):
    d = adapter(tmp_path, config=lambda c: c.update(use_rslora="true"), name="bitnet-tiny-lora")
    refused(d, "use_rslora must be true or false", base="builtin:bitnet-tiny")
