"""Small LFM2 checkpoints and adapters made on the fly, for shapes and layer patterns other than the built-in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from edgekit.builtin import ROOT as BUILTIN


def make_lfm2(
    out: Path,
    *,
    hidden: int = 256,
    intermediate: int = 768,
    layer_types: Sequence[str] = ("conv", "full_attention", "conv"),
    heads: int = 4,
    kv_heads: int = 2,
    auto_adjust: bool = True,
    seed: int = 0,
    dtype: str = "float32",
    vocab_pad: int = 0,
    **extra: Any,
) -> Path:
    """A random-weight LFM2 with the built-in tokenizer (vocab padded by ``vocab_pad`` rows)."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(seed)
    tok_cfg = json.loads((BUILTIN / "lfm2-tiny" / "config.json").read_text())
    config = Lfm2Config(
        vocab_size=tok_cfg["vocab_size"] + vocab_pad,
        hidden_size=hidden,
        intermediate_size=intermediate,
        block_auto_adjust_ff_dim=auto_adjust,
        block_multiple_of=256,
        block_ffn_dim_multiplier=1.0,
        num_hidden_layers=len(layer_types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        layer_types=list(layer_types),
        max_position_embeddings=2048,
        tie_word_embeddings=extra.pop("tie_word_embeddings", True),
        bos_token_id=tok_cfg["bos_token_id"],
        eos_token_id=tok_cfg["eos_token_id"],
        pad_token_id=tok_cfg["pad_token_id"],
        architectures=["Lfm2ForCausalLM"],
        **extra,
    )
    model = Lfm2ForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so that logits differ visibly
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.08)
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = BUILTIN / "lfm2-tiny" / name
        if src.exists():
            shutil.copy(src, out / name)
    return out


def make_lora(base: Path, out: Path, targets: Sequence[str], r: int = 4, alpha: int = 8, rslora: bool = False) -> Path:
    """A LoRA adapter with random (non-zero) A and B so that merging visibly changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Lfm2ForCausalLM

    torch.manual_seed(1)
    model = Lfm2ForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora, init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out
