"""LFM2 Hugging Face config -> ExecuTorch's LLM ``params.json`` (the schema ``export_llm`` / ``ModelArgs`` read).

edgekit's own export builds its program from these same values, so the file that ships in the bundle for
ExecuTorch's tooling and the graph edgekit lowers can never disagree.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import UnsupportedError
from ...families import lfm2


def params_from_hf(config: Mapping[str, Any]) -> dict[str, Any]:
    """ExecuTorch ``ModelArgs`` fields for an LFM2 config; ``hidden_dim`` is the SwiGLU width *after* LFM2's
    feed-forward auto-adjust (``ModelArgs`` would otherwise recompute it from ``dim`` and get it wrong)."""
    meta = lfm2.describe(config)
    if meta["conv_L_cache"] != 3:
        # ExecuTorch's ShortConvBlock hard-codes a kernel of 3; edgekit's graph does not, but the params file
        # must stay loadable by export_llm, so refuse instead of writing a file that silently means L=3.
        raise UnsupportedError(f"ExecuTorch export: conv_L_cache={meta['conv_L_cache']} is not supported (only 3)")
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
