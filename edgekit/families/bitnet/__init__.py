"""BitNet b1.58 (and the a4.8 activation mode): ternary-weight Llama-like decoders (``BitNetForCausalLM``).

Files: ``config.py`` (``BitNetConfig``, read from ``config.json`` incl. its ``quantization_config``),
``weights.py`` (packed / unpacked / master checkpoints -> ternary codes + per-tensor scales; ``pack``; writers for
both layouts), ``reference.py`` (the W1.58A8 / a4.8 PyTorch reference, plus a float-activation mode that is what
llama.cpp computes; imports torch), ``lora.py`` (merging a PEFT LoRA into ternary weights with re-ternarisation,
and the error that costs), ``synthetic.py`` (random-weight models for tests and full-size speed benchmarks).  Per-format code:
``exporters/<format>/bitnet.py``.  The registry row (``SPEC``) is added with the recipe table.
"""

from __future__ import annotations

from .. import Family, FamilySpec, ModelKind
from .config import BitNetConfig

SPEC = FamilySpec(
    family=Family.BITNET,
    kind=ModelKind.LANGUAGE,
    architectures=("BitNetForCausalLM",),
    model_types=("bitnet",),
    lora_targets=frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    read_config=BitNetConfig.from_hf,
    reference="edgekit.families.bitnet.reference:build_for_export",
    merge_adapter="edgekit.families.bitnet.lora:merge_for_export",
    unmerged_reference="edgekit.families.bitnet.lora:unmerged_reference",
    reference_weights="edgekit.families.bitnet.fidelity:reference_weights",
    file_reference="edgekit.families.bitnet.fidelity:file_reference",
)
