"""LoRA: validation against the base, and merging that honours rank, alpha and rslora on every linear layer."""

import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgekit.checkpoint import open_checkpoint
from edgekit.errors import AdapterError
from edgekit.lora import open_adapter
from edgekit.reference import load_reference, state_dict
from factory import make_lfm2, make_lora

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_matches_lora_math_on_every_linear_layer(rand_lfm2, tmp_path, rslora):
    adapter_dir = make_lora(rand_lfm2, tmp_path / "lora", ALL_LINEAR, r=4, alpha=8, rslora=rslora)
    ckpt = open_checkpoint(rand_lfm2)
    adapter = open_adapter(adapter_dir, ckpt)
    leaves = {m.rsplit(".", 1)[-1] for m in adapter.modules}
    assert leaves == set(ALL_LINEAR)
    base = state_dict(load_reference(ckpt, None))
    merged = state_dict(load_reference(ckpt, adapter))
    lora = load_file(adapter_dir / "adapter_model.safetensors")
    scale = 8 / math.sqrt(4) if rslora else 8 / 4
    for module in adapter.modules:
        a = lora[f"base_model.model.{module}.lora_A.weight"]
        b = lora[f"base_model.model.{module}.lora_B.weight"]
        expected = base[f"{module}.weight"] + scale * (b @ a)
        np.testing.assert_allclose(merged[f"{module}.weight"], expected, rtol=1e-5, atol=1e-5)


def test_builtin_adapter_changes_the_model():
    ckpt = open_checkpoint("builtin:lfm2-tiny")
    adapter = open_adapter("builtin:lfm2-tiny-lora", ckpt)
    assert set(adapter.summary()["target_modules"]) == set(ALL_LINEAR)


def test_adapter_for_another_base(rand_lfm2, tmp_path):
    other = make_lfm2(tmp_path / "other", hidden=512, layer_types=("full_attention", "conv", "conv"))
    adapter_dir = make_lora(other, tmp_path / "lora", ["q_proj", "w1"])
    with pytest.raises(AdapterError, match="trained for another base model"):
        open_adapter(adapter_dir, open_checkpoint(rand_lfm2))


def test_adapter_for_missing_layers(rand_lfm2, tmp_path):
    deeper = make_lfm2(tmp_path / "deeper", layer_types=("full_attention", "conv", "conv", "conv", "conv"))
    adapter_dir = make_lora(deeper, tmp_path / "lora", ["in_proj"])
    with pytest.raises(AdapterError, match="does not have"):
        open_adapter(adapter_dir, open_checkpoint(rand_lfm2))


def test_unknown_target_modules(rand_lfm2, tmp_path):
    adapter_dir = make_lora(rand_lfm2, tmp_path / "lora", ["q_proj"])
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "gate_proj"]
    (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=r"\['gate_proj'\] are not linear layers of lfm2"):
        open_adapter(adapter_dir, open_checkpoint(rand_lfm2))


def test_adapter_without_weights(rand_lfm2, tmp_path):
    adapter_dir = make_lora(rand_lfm2, tmp_path / "lora", ["q_proj"])
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        open_adapter(adapter_dir, open_checkpoint(rand_lfm2))


def test_adapter_not_a_directory(rand_lfm2, tmp_path):
    with pytest.raises(AdapterError, match="not a directory"):
        open_adapter(tmp_path / "nope", open_checkpoint(rand_lfm2))
