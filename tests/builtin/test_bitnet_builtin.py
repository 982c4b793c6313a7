"""The built-in trained tiny BitNet (``edgekit/builtin/bitnet-tiny``, master weights) and its LoRA adapter:
what ships, that transformers and the reference agree on it in both layouts, and the LoRA merge report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import AdapterError
from edgekit.families.bitnet import lora as L
from edgekit.families.bitnet import weights as W

BUILTIN = Path(__file__).resolve().parents[2] / "edgekit" / "builtin"
BASE, ADAPTER = BUILTIN / "bitnet-tiny", BUILTIN / "bitnet-tiny-lora"
HELDOUT = BUILTIN.parent / "data" / "heldout.txt"

pytestmark = pytest.mark.skipif(not (BASE / "config.json").is_file(), reason="bitnet-tiny not trained yet")


def heldout_tokens(n: int = 256) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(BASE / "tokenizer.json"))
    return tok.encode(HELDOUT.read_text(encoding="utf-8")[:8000]).ids[:n]


def test_what_ships() -> None:
    size = sum(p.stat().st_size for p in BASE.iterdir()) + sum(p.stat().st_size for p in ADAPTER.iterdir())
    assert size < 10 * 2**20
    w = W.load(BASE)
    c = w.config
    assert w.layout == "master" and c.quantization.linear_class == "autobitlinear" and c.quantization.master_weights
    assert c.hidden_act == "silu" and c.tie_word_embeddings
    assert c.hidden_size % 256 == 0 and c.intermediate_size % 256 == 0
    for t in w.ternary.values():
        assert 0.2 < t.nonzero_fraction < 0.9  # trained ternary layers, not collapsed to zero
    report = json.loads((BUILTIN / "TRAINING_BITNET.json").read_text())
    assert report["base"]["heldout_loss"] < 7.0 and report["lora"]["email_eval_loss"] < report["base"]["email_eval_loss"]
    adapter = json.loads((ADAPTER / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "builtin:bitnet-tiny" and adapter["r"] == 8
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("layout", ["master", "packed"])
def test_reference_matches_transformers(tmp_path: Path, layout: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from edgekit.families.bitnet import reference as R

    torch._dynamo.config.disable = True  # transformers' BitNet kernels are torch.compile'd
    path = BASE
    if layout == "packed":
        path = W.write_checkpoint(W.load(BASE), tmp_path / "packed", "packed", copy_files_from=BASE)
        back = W.load(path)
        for name, t in W.load(BASE).ternary.items():
            np.testing.assert_array_equal(back.ternary[name].codes, t.codes)
    tokens = heldout_tokens(128)
    model = transformers.BitNetForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    with torch.inference_mode():
        theirs = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
    ours = R.logits(R.build(path), tokens)
    diff = float(np.abs(ours - theirs).max())
    print(f"\nbitnet-tiny {layout}: reference vs transformers max |dlogit| {diff:.2e}")
    assert diff < 1e-4


def test_lora_merge_report() -> None:
    pytest.importorskip("torch")
    base = W.load(BASE)
    merged, report = L.merge_adapter(base, ADAPTER, heldout_tokens(256))
    print(f"\nbitnet-tiny + LoRA merged on master and re-ternarised: {report.to_dict()}")
    assert merged.layout == "master" and report.reternarised_from == "master"
    assert 0 < report.codes_changed < 0.5 and report.top1 > 0.5
    q = replace(base.config.quantization, linear_class="bitlinear", quantization_mode="offline")
    packed = W.from_tensors(replace(base.config, quantization=q), _packed_tensors(base))
    assert packed.layout == "packed" and packed.master is None
    with pytest.raises(AdapterError, match="--accept-reternarisation"):
        L.merge_adapter(packed, ADAPTER)


def _packed_tensors(w: W.BitNetWeights) -> dict:
    out = dict(w.floats)
    for name, t in w.ternary.items():
        out[name] = W.pack(t.codes)
        out[name[: -len(".weight")] + ".weight_scale"] = np.array([1 / np.float32(t.scale)], dtype=np.float32)
    return out
