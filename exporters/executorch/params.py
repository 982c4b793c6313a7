"""LFM2 Hugging Face config -> ExecuTorch's LLM ``params.json`` (the schema ``export_llm`` / ``ModelArgs`` read).

The file ships in the bundle for ExecuTorch's own tooling; edgekit's graph does not need it.  It is written only
when export_llm could rebuild the model from it (conv kernel 3): a file that silently meant another kernel length
would be worse than none.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...families import lfm2

# ExecuTorch's ShortConvBlock hard-codes this kernel length, so export_llm can only rebuild models that use it
EXPORT_LLM_CONV_KERNEL = 3


def params_from_hf(config: Mapping[str, Any]) -> dict[str, Any]:
    """ExecuTorch ``ModelArgs`` fields for an LFM2 config; ``hidden_dim`` is the SwiGLU width *after* LFM2's
    feed-forward auto-adjust (``ModelArgs`` would otherwise recompute it from ``dim`` and get it wrong)."""
    meta = lfm2.describe(config)
    return {
        "dim": meta["hidden_size"],
        "n_layers": meta["num_layers"],
        "n_heads": meta["num_heads"],
        "n_kv_heads": meta["num_kv_heads"],
        "vocab_size": meta["vocab_size"],
        "hidden_dim": meta["feed_forward_size"],
        "norm_eps": meta["norm_eps"],
        "rope_theta": meta["rope_theta"],
        "use_hf_rope": True,  # LFM2 rotates halves (rotate_half), not interleaved pairs
        "use_qk_norm": True,
        "qk_norm_before_rope": True,
        "layer_types": meta["layer_types"],
    }


def export_llm_can_rebuild(config: Mapping[str, Any]) -> bool:
    return lfm2.describe(config)["conv_L_cache"] == EXPORT_LLM_CONV_KERNEL
