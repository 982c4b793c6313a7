"""LoRA on BitNet: merge on master weights + absmean re-ternarisation, the explicit flag for packed-only bases,
PEFT's scaling, and the merge-error report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import AdapterError
from edgekit.families.bitnet import lora as L
from edgekit.families.bitnet import weights as W
from edgekit.families.bitnet.synthetic import random_weights, tiny_config

TOKENS = [1, 40, 900, 3, 77, 1200, 8, 8, 512, 2]
TARGETS = ("q_proj", "v_proj", "down_proj")


def write_adapter(root: Path, w, r=4, alpha=8, rslora=False, scale=0.05, seed=0, **cfg_extra) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in w.ternary:
        module = name[: -len(".weight")]
        if module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        out_f, in_f = w.ternary[name].shape
        tensors[f"base_model.model.{module}.lora_A.weight"] = (rng.standard_normal((r, in_f)).astype(np.float32) * scale, "F32")
        tensors[f"base_model.model.{module}.lora_B.weight"] = (rng.standard_normal((out_f, r)).astype(np.float32) * scale, "F32")
    root.mkdir(parents=True, exist_ok=True)
    W.write_safetensors(root / "adapter_model.safetensors", tensors)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "target_modules": list(TARGETS),
           "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}
    cfg.update(cfg_extra)
    (root / "adapter_config.json").write_text(json.dumps(cfg))
    return root


def test_merge_on_master(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=20, master=True)
    updates = L.read_adapter(write_adapter(tmp_path / "a", w), w)
    assert len(updates) == 2 * len(TARGETS)
    merged = L.merge(w, updates)
    name = "model.layers.0.self_attn.q_proj.weight"
    u = updates[name]
    assert u.scaling == 8 / 4
    expect = W.ternarize(w.master[name] + u.scaling * (u.b @ u.a))
    np.testing.assert_array_equal(merged.ternary[name].codes, expect.codes)
    assert merged.ternary[name].scale == pytest.approx(expect.scale, rel=1e-6)
    untouched = "model.layers.0.self_attn.k_proj.weight"
    assert merged.ternary[untouched] is w.ternary[untouched]
    report = L.merge_error(w, updates, merged, TOKENS)
    assert report.tokens == len(TOKENS) and 0 <= report.top1 <= 1 and report.mean_kl >= 0
    assert 0 < report.codes_changed < 1 and report.reternarised_from == "master"


def test_rslora_and_patterns(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=21, master=True)
    updates = L.read_adapter(
        write_adapter(tmp_path / "a", w, r=4, alpha=8, rslora=True, alpha_pattern={"down_proj": 2}), w
    )
    assert updates["model.layers.1.self_attn.q_proj.weight"].scaling == pytest.approx(8 / math.sqrt(4))
    assert updates["model.layers.1.mlp.down_proj.weight"].scaling == pytest.approx(2 / math.sqrt(4))


def test_packed_needs_explicit_flag(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=22)
    updates = L.read_adapter(write_adapter(tmp_path / "a", w), w)
    with pytest.raises(AdapterError, match="--accept-reternarisation"):
        L.merge(w, updates)
    merged = L.merge(w, updates, accept_reternarisation=True)
    assert merged.layout == "master"
    # a zero adapter merged into a packed model leaves codes and scales as they were (faithful master)
    zero = {k: L.LoraUpdate(a=u.a * 0, b=u.b, scaling=u.scaling) for k, u in updates.items()}
    same = L.merge(w, zero, accept_reternarisation=True)
    for name, t in w.ternary.items():
        np.testing.assert_array_equal(same.ternary[name].codes, t.codes)
        assert same.ternary[name].scale == pytest.approx(t.scale, rel=1e-6)
    report = L.merge_error(w, zero, same, TOKENS)
    assert report.top1 == 1.0 and report.mean_kl < 1e-9 and report.reternarised_from == "packed"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"r": 8}, "rank 8"),
    ],
)
def test_bad_adapters(tmp_path: Path, change, words) -> None:
    w = random_weights(tiny_config(), seed=23, master=True)
    root = write_adapter(tmp_path / "a", w)
    cfg = json.loads((root / "adapter_config.json").read_text())
    cfg.update(change)
    (root / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=words):
        L.read_adapter(root, w)


def test_adapter_for_other_model(tmp_path: Path) -> None:
    w = random_weights(tiny_config(), seed=24, master=True)
    other = random_weights(tiny_config(intermediate_size=768), seed=24, master=True)
    root = write_adapter(tmp_path / "a", other)
    with pytest.raises(AdapterError, match="another base model"):
        L.read_adapter(root, w)


def test_unmerged_reference_matches_peft(tmp_path: Path) -> None:
    """The unmerged base + adapter reference is what peft computes on transformers' BitNet (AutoBitLinear online)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from edgekit.families.bitnet.lora import _reference

    torch._dynamo.config.disable = True
    w = random_weights(tiny_config(), seed=25, master=True)
    W.write_checkpoint(w, tmp_path / "base", "master")
    root = write_adapter(tmp_path / "a", w, r=4, alpha=8, rslora=True)
    updates = L.read_adapter(root, w)
    model = transformers.BitNetForCausalLM.from_pretrained(
        str(tmp_path / "base"), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    model = peft.PeftModel.from_pretrained(model, str(root)).eval()
    ids = torch.tensor([TOKENS])
    with torch.inference_mode():
        theirs = model(input_ids=ids).logits[0]
        ours = _reference(w, updates)(ids).logits[0]
    assert float((theirs - ours).abs().max()) < 1e-4
