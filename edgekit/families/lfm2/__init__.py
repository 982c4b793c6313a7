"""LFM2 (Liquid AI): gated short-convolution and GQA attention blocks, tied embeddings.

Files: ``config.py`` (``Lfm2Config``, read from ``config.json``), ``reference.py`` (the transformers model, the
reference every export is checked against; imports torch).  Per-format code: ``exporters/<format>/lfm2.py``.
"""

from __future__ import annotations

from .. import Family, FamilySpec, ModelKind
from .config import Lfm2Config

SPEC = FamilySpec(
    family=Family.LFM2,
    kind=ModelKind.LANGUAGE,
    architectures=("Lfm2ForCausalLM", "LFM2ForCausalLM"),
    model_types=("lfm2",),
    # every linear layer: attention q/k/v/out, conv in/out projections, SwiGLU w1/w2/w3
    lora_targets=frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"}),
    read_config=Lfm2Config.from_hf,
    reference="edgekit.families.lfm2.reference:build",
)

__all__ = ["Lfm2Config", "SPEC"]
