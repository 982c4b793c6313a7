"""The model-family registry: one explicit table keyed by ``Family``.

A family entry says how to recognise a checkpoint's config, which modules a LoRA adapter may target, which
export formats apply, and how to build the PyTorch reference model.  Adding a family is adding a module and
one row to ``FAMILIES``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import CheckpointError, UnsupportedError
from ..plan import Target


class Family(str, enum.Enum):
    LFM2 = "lfm2"
    BITNET = "bitnet"
    TRM = "trm"
    HRM = "hrm"


class ModelKind(str, enum.Enum):
    LANGUAGE = "language"  # tokenizer in, token logits out: generate / stream / score
    SOLVER = "solver"  # puzzle grid in, grid out (TRM/HRM): solve


@dataclass(frozen=True)
class FamilySpec:
    family: Family
    kind: ModelKind
    architectures: tuple[str, ...]  # Hugging Face ``architectures`` entries
    model_types: tuple[str, ...]  # Hugging Face ``model_type`` values
    targets: tuple[Target, ...]  # formats with an exporter for this family
    lora_targets: frozenset[str]  # leaf module names an adapter may target
    validate_config: Callable[[Mapping[str, Any]], None]
    build_reference: Callable[..., Any]  # (checkpoint) -> torch.nn.Module, imports torch lazily
    describe: Callable[[Mapping[str, Any]], dict[str, Any]]  # config -> manifest metadata


def _registry() -> dict[Family, FamilySpec]:
    from . import lfm2

    table: dict[Family, FamilySpec] = {}
    for spec in (lfm2.SPEC,):
        if spec.family in table:
            raise RuntimeError(f"family {spec.family.value} registered twice")
        table[spec.family] = spec
    return table


FAMILIES: Mapping[Family, FamilySpec] = _registry()


def supported_names() -> str:
    return ", ".join(f.value for f in FAMILIES)


def get(family: Family | str) -> FamilySpec:
    try:
        return FAMILIES[Family(family)]
    except (ValueError, KeyError):
        name = family.value if isinstance(family, Family) else family
        raise UnsupportedError(f"model family {name!r} is not supported yet; supported: {supported_names()}") from None


def detect(config: Mapping[str, Any]) -> FamilySpec:
    """Pick the family of a Hugging Face config by its ``architectures`` or ``model_type``."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise CheckpointError(f"config.json: 'architectures' must be a list, got {type(archs).__name__}")
    model_type = config.get("model_type")
    for spec in FAMILIES.values():
        if any(a in spec.architectures for a in archs) or model_type in spec.model_types:
            return spec
    seen = ", ".join(archs) if archs else f"model_type={model_type!r}"
    raise UnsupportedError(
        f"unsupported architecture ({seen}); supported families: {supported_names()} "
        f"(architectures: {', '.join(a for s in FAMILIES.values() for a in s.architectures)})"
    )
