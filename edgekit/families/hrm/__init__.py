"""HRM (Hierarchical Reasoning Model, sapientinc/HRM): typed config, official-checkpoint loader, PyTorch reference.

HRM is TRM's predecessor: the same blocks, embeddings, heads and ACT loop, with a separate high-level network
(``H_level``) for the z_H update.  ``config`` and ``checkpoint.load_config`` import no torch.
"""

from __future__ import annotations

from .. import Family, FamilySpec, ModelKind

ARCHITECTURES = (
    "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",  # sapientinc/HRM
    "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",  # the copy in TinyRecursiveModels
)

SPEC = FamilySpec(
    family=Family.HRM,
    kind=ModelKind.SOLVER,
    architectures=ARCHITECTURES,
    model_types=(),
    lora_targets=frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    read_config=dict,  # official checkpoints are read whole by ``read_checkpoint`` (all_config.yaml + tensors)
    reference="edgekit.families.trm.official:build_hrm",
    read_checkpoint="edgekit.families.trm.official:open_hrm",
)
