"""The model-family registry: one explicit table of ``FamilySpec`` rows keyed by ``Family``.

A family is a folder here (``lfm2/``, later ``bitnet/``, ``trm/``, ``hrm/``): its typed config read from the
checkpoint's own config file, the checkpoint readers it accepts, and its PyTorch reference — never anything
about a file format (that is ``exporters/<format>/<family>.py``).  The folder's ``__init__`` holds its
``SPEC`` and imports only the standard library; the torch reference is named by a dotted path and imported when
an export first needs it, so that ``edgekit.load`` on a device never imports torch through this registry.

``Family`` is an open value, not a closed enum: the built-in families are constants on it, and a project may
register a family of its own (``register``) without editing edgekit — see README, "Adding a family".
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping

from ..errors import CheckpointError, UnsupportedError


@dataclass(frozen=True, order=True)
class Family:
    """A model family's name (``lfm2``, ``bitnet``, ``trm``, ``hrm``, or a registered one)."""

    value: str

    LFM2: ClassVar["Family"]
    BITNET: ClassVar["Family"]
    TRM: ClassVar["Family"]
    HRM: ClassVar["Family"]

    def __str__(self) -> str:
        return self.value


Family.LFM2, Family.BITNET, Family.TRM, Family.HRM = (Family(n) for n in ("lfm2", "bitnet", "trm", "hrm"))


class ModelKind(str, enum.Enum):
    """What a model does, which decides its session, verification and manifest ``io`` (``edgekit.kinds``)."""

    LANGUAGE = "language"  # tokenizer in, token logits out: generate / stream / logits
    SOLVER = "solver"  # puzzle grid in, grid out (TRM/HRM): solve


@dataclass(frozen=True)
class FamilySpec:
    """One family row.

    ``read_config(raw)`` turns the checkpoint's config mapping into the family's frozen config value (raising
    ``CheckpointError``/``UnsupportedError`` with one line when it is malformed or unsupported);
    ``reference`` is ``"module:function"`` of ``function(checkpoint) -> torch.nn.Module`` (float32, eval), imported
    only when called.
    """

    family: Family
    kind: ModelKind
    architectures: tuple[str, ...]  # Hugging Face ``architectures`` entries this family recognises
    model_types: tuple[str, ...]  # Hugging Face ``model_type`` values
    lora_targets: frozenset[str]  # leaf module names an adapter may target
    read_config: Callable[[Mapping[str, Any]], Any]
    reference: str
    # "module:function" reading a checkpoint directory in the family's own layout (not a Hugging Face directory):
    # function(root) -> None when the directory is not this family's, else a mapping with config (raw),
    # model_config, files (weights), config_files, shapes
    read_checkpoint: str | None = None
    # "module:function" merging a LoRA adapter the family's own way (default: peft's merge_and_unload):
    # function(model, checkpoint, adapter, options) -> (merged model, report mapping for the manifest or None)
    merge_adapter: str | None = None
    # "module:function" building base + adapter *unmerged*, where merging changes the model (BitNet's ternary
    # weights): function(checkpoint, adapter, options) -> torch model; None: the merged reference is exact
    unmerged_reference: str | None = None
    # verification hooks (``edgekit.tensorcheck``) for a reference that is not plain torch parameters under the
    # checkpoint's names (BitNet: ternary codes x scale): "module:function(model) -> {name: float32 array}" (the
    # weights the file must hold) and "module:function(model, read) -> torch model" (the reference built from
    # the file's weights with the engine's activation numerics); None: ``state_dict`` / ``fidelity_reference``
    reference_weights: str | None = None
    file_reference: str | None = None

    def build_reference(self, checkpoint: Any, options: Any = None) -> Any:
        """The torch reference: ``reference(checkpoint, options)``; ``options`` (the recipe's typed options or
        None) lets a family build the variant the export asks for (BitNet's activation mode)."""
        return _resolve(self.reference)(checkpoint, options)

    def merge(self, model: Any, checkpoint: Any, adapter: Any, options: Any) -> tuple[Any, Any]:
        return _resolve(self.merge_adapter)(model, checkpoint, adapter, options)  # type: ignore[arg-type]

    def open_directory(self, root: Any) -> Mapping[str, Any] | None:
        return _resolve(self.read_checkpoint)(root) if self.read_checkpoint else None

    def recognises(self, config: Mapping[str, Any]) -> bool:
        archs = config.get("architectures") or []
        return any(a in self.architectures for a in archs) or config.get("model_type") in self.model_types


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Registry:
    """The family table: rows are added explicitly (``register``); a duplicate is an error, never an override."""

    def __init__(self) -> None:
        self._rows: dict[Family, FamilySpec] = {}

    def register(self, spec: FamilySpec) -> FamilySpec:
        if spec.family in self._rows:
            raise ValueError(f"family {spec.family.value!r} is registered already")
        self._rows[spec.family] = spec
        return spec

    def unregister(self, family: Family) -> None:
        """Remove a row (for tests that register a throwaway family)."""
        self._rows.pop(family, None)

    def __iter__(self) -> Iterator[Family]:
        return iter(self._rows)

    def __contains__(self, family: object) -> bool:
        return family in self._rows

    def values(self) -> Iterator[FamilySpec]:
        return iter(list(self._rows.values()))

    def names(self) -> str:
        return ", ".join(f.value for f in self._rows)

    def get(self, family: Family | str) -> FamilySpec:
        key = family if isinstance(family, Family) else Family(str(family).strip().lower())
        try:
            return self._rows[key]
        except KeyError:
            raise UnsupportedError(
                f"model family {key.value!r} is not supported yet; supported: {self.names()}"
            ) from None

    def detect(self, config: Mapping[str, Any]) -> FamilySpec:
        """The family of a checkpoint config, by its ``architectures`` or ``model_type``."""
        archs = config.get("architectures") or []
        if not isinstance(archs, list):
            raise CheckpointError(f"config.json: 'architectures' must be a list, got {type(archs).__name__}")
        for spec in self._rows.values():
            if spec.recognises(config):
                return spec
        seen = ", ".join(map(str, archs)) if archs else f"model_type={config.get('model_type')!r}"
        known = ", ".join(a for s in self._rows.values() for a in s.architectures)
        raise UnsupportedError(
            f"unsupported architecture ({seen}); supported families: {self.names()} (architectures: {known})"
        )


def _builtin() -> Registry:
    from . import bitnet, hrm, lfm2, trm

    table = Registry()
    for spec in (lfm2.SPEC, bitnet.SPEC, trm.SPEC, hrm.SPEC):
        table.register(spec)
    return table


FAMILIES = _builtin()


def get(family: Family | str) -> FamilySpec:
    return FAMILIES.get(family)


def detect(config: Mapping[str, Any]) -> FamilySpec:
    return FAMILIES.detect(config)


def supported_names() -> str:
    return FAMILIES.names()
