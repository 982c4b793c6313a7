"""TRM (Tiny Recursive Model, arXiv 2510.04871): typed config, official-checkpoint loader, PyTorch reference.

``config`` and the config half of ``checkpoint`` import no torch; ``reference`` and the weight loader do.
"""

from __future__ import annotations

from .. import Family, FamilySpec, ModelKind

ARCHITECTURES = ("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",)

SPEC = FamilySpec(
    family=Family.TRM,
    kind=ModelKind.SOLVER,
    architectures=ARCHITECTURES,
    model_types=(),
    lora_targets=frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    read_config=dict,  # official checkpoints are read whole by ``read_checkpoint`` (all_config.yaml + tensors)
    reference="edgekit.families.trm.official:build_trm",
    read_checkpoint="edgekit.families.trm.official:open_trm",
)
