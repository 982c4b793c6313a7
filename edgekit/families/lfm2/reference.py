"""The LFM2 reference: transformers' ``Lfm2ForCausalLM`` in float32."""

from __future__ import annotations

from typing import Any

from ...errors import CheckpointError, require


def build(checkpoint: Any, options: Any = None) -> Any:
    """The checkpoint as transformers' model, float32, eval mode; CheckpointError if transformers cannot load it."""
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    try:
        model = transformers.Lfm2ForCausalLM.from_pretrained(
            str(checkpoint.path), dtype=torch.float32, local_files_only=True
        )
    except Exception as exc:  # transformers raises many types for bad weights
        raise CheckpointError(f"{checkpoint.path}: transformers could not load the LFM2 weights: {exc}") from None
    return model.eval()
