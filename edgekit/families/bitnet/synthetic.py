"""Random-weight BitNet models: for tests (small) and for speed benchmarks (full-size 2B-4T architecture).

Random weights say nothing about quantisation quality (DESIGN.md section 7); they exercise layouts, shapes and
engine numerics.  The codes are drawn so that about ``nonzero`` of them are +-1, as in trained BitNet layers, and
each scale is ~1/sqrt(in_features / nonzero) so that activations keep their size through the layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import BitNetConfig
from .weights import BitNetWeights, TernaryLinear


def tiny_config(**overrides: Any) -> BitNetConfig:
    """A small valid BitNet config (hidden 256, FFN 512, 2 layers, 4/2 heads, vocab 4096, SiLU, tied, packed),
    with Hugging Face config keys in ``overrides`` applied first."""
    raw: dict[str, Any] = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
    }
    raw.update(overrides)
    return BitNetConfig.from_hf(raw)


def random_weights(config: BitNetConfig, seed: int = 0, nonzero: float = 0.6, master: bool = False) -> BitNetWeights:
    """Random ternary codes and scales for ``config``; norms near 1, embedding N(0, 0.3^2).

    ``master=True`` returns master-layout weights whose float masters are Gaussian (their absmean ternarisation is
    the ternary part), as a bf16/fp32 training checkpoint would hold.
    """
    from .weights import ternarize

    rng = np.random.default_rng(seed)
    ternary: dict[str, TernaryLinear] = {}
    masters: dict[str, np.ndarray] = {}
    for name in config.linear_names():
        out_f, in_f = config.linear_shape(name)
        if master:
            w = (rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)).astype(np.float32)
            masters[name] = w
            ternary[name] = ternarize(w, name)
            continue
        u = rng.random((out_f, in_f))
        codes = np.where(u < nonzero / 2, -1, np.where(u < nonzero, 1, 0)).astype(np.int8)
        scale = float(np.float32(rng.uniform(0.7, 1.3) / np.sqrt(in_f * nonzero)))
        ternary[name] = TernaryLinear(codes=codes, scale=scale)
    floats: dict[str, np.ndarray] = {}
    h, ff = config.hidden_size, config.intermediate_size
    # std 0.3: with the tied output, logits then spread over ~+-15 as in trained models (N(0, 1) gives ~+-150)
    floats["model.embed_tokens.weight"] = (0.3 * rng.standard_normal((config.vocab_size, h))).astype(np.float32)
    floats["model.norm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        for norm, width in (
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
            ("self_attn.attn_sub_norm", h),
            ("mlp.ffn_sub_norm", ff),
        ):
            floats[f"{p}.{norm}.weight"] = (1 + 0.1 * rng.standard_normal(width)).astype(np.float32)
    if not config.tie_word_embeddings:
        floats["lm_head.weight"] = (rng.standard_normal((config.vocab_size, h)) / np.sqrt(h)).astype(np.float32)
    return BitNetWeights(
        config=config,
        layout="master" if master else "packed",
        ternary=ternary,
        floats=floats,
        master=masters if master else None,
    )

