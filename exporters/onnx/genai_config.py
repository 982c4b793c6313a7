"""``genai_config.json``: what onnxruntime-genai needs to run the bundle's ``model.onnx`` as an LFM2 decoder.

The keys follow the file onnxruntime-genai's own LFM2 builder writes (model type ``lfm2``, per-layer
``layer_types``, ``conv_cache_size``, name patterns of the state inputs and outputs).
"""

from __future__ import annotations

from typing import Any, Mapping

from ...families.lfm2 import Lfm2Shape

# decoding defaults: greedy, like edgekit's SamplingParams
SEARCH = {
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": True,
    "length_penalty": 1.0,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    # the KV buffers are allocated once at max_length and written in place by GroupQueryAttention
    "past_present_share_buffer": True,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}


def build(shape: Lfm2Shape, meta: Mapping[str, Any], artifact: str) -> dict[str, Any]:
    eos = meta.get("eos_ids") or []
    return {
        "model": {
            "bos_token_id": meta.get("bos_id"),
            "context_length": shape.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": artifact,
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                    "past_conv_names": "past.%d.conv",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                    "present_conv_names": "present.%d.conv",
                },
                "num_attention_heads": shape.heads,
                "num_hidden_layers": len(shape.layer_types),
                "num_key_value_heads": shape.kv_heads,
                "layer_types": list(shape.layer_types),
                "conv_cache_size": shape.conv_cache,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": meta.get("pad_id") if meta.get("pad_id") is not None else (eos[0] if eos else 0),
            "type": "lfm2",
            "vocab_size": shape.vocab,
        },
        "search": {**SEARCH, "max_length": shape.context},
    }
