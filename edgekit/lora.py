"""PEFT LoRA adapters: validation against the base checkpoint (before any work) and merging.

Merging uses peft's own ``merge_and_unload`` so that rank, alpha, ``use_rslora`` and per-module rank/alpha
patterns are honoured exactly as at training time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from . import builtin
from .checkpoint import Checkpoint, read_json, sha256_files, tensor_shapes
from .errors import AdapterError, CheckpointError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: Mapping[str, Any]
    modules: tuple[str, ...]  # base module names the adapter changes, e.g. model.layers.0.conv.in_proj

    @cached_property
    def sha256(self) -> str:
        return sha256_files([self.path / ADAPTER_CONFIG, self.path / ADAPTER_WEIGHTS], self.path)

    def summary(self) -> dict[str, Any]:
        return {
            "rank": self.config.get("r"),
            "alpha": self.config.get("lora_alpha"),
            "use_rslora": bool(self.config.get("use_rslora", False)),
            "modules": len(self.modules),
            "target_modules": sorted({m.rsplit(".", 1)[-1] for m in self.modules}),
        }


def open_adapter(source: str | Path, base: Checkpoint) -> Adapter:
    """Read a PEFT LoRA directory and check that every tensor fits a module of ``base``."""
    root = builtin.resolve(source)
    if not root.is_dir():
        raise AdapterError(f"{root}: adapter is not a directory (expected a PEFT adapter directory)")
    try:
        config = read_json(root / ADAPTER_CONFIG, ADAPTER_CONFIG)
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{root}: peft_type {config.get('peft_type')!r} is not supported; only LORA adapters merge")
    if config.get("use_dora"):
        raise AdapterError(f"{root}: DoRA adapters are not supported; train a plain LoRA (use_dora=False)")
    if config.get("modules_to_save"):
        raise AdapterError(f"{root}: modules_to_save {config['modules_to_save']} is not supported; only LoRA layers merge")
    allowed = base.family.lora_targets
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = sorted(set(targets) - allowed)
        if unknown:
            raise AdapterError(
                f"{root}: target_modules {unknown} are not linear layers of {base.family.family.value}; "
                f"known: {', '.join(sorted(allowed))}"
            )
    weights = root / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{root}: {ADAPTER_WEIGHTS} is missing (save the adapter with safe_serialization=True)")
    try:
        shapes = tensor_shapes([weights])
    except CheckpointError as exc:
        raise AdapterError(str(exc)) from None
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        m = _KEY.match(key)
        if not m:
            raise AdapterError(f"{weights}: unexpected tensor {key!r}; only lora_A / lora_B weights can be merged")
        modules.setdefault(m["module"], {})[m["ab"]] = shape
    if not modules:
        raise AdapterError(f"{weights}: holds no LoRA tensors")
    for module, ab in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in allowed:
            raise AdapterError(f"{root}: adapter targets {module!r}; LoRA may target only {', '.join(sorted(allowed))}")
        base_shape = _logical_shape(base, f"{module}.weight")
        if base_shape is None:
            raise AdapterError(
                f"{root}: adapter targets {module!r}, which the base model at {base.path} does not have; "
                "the adapter was trained for another base model"
            )
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{root}: {module} lacks lora_{'B' if 'A' in ab else 'A'}")
        a, b = ab["A"], ab["B"]
        out_f, in_f = base_shape[0], base_shape[-1]
        if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or a[0] != b[1]:
            raise AdapterError(
                f"{root}: {module}: LoRA shapes A{list(a)} B{list(b)} do not fit the base weight {list(base_shape)}; "
                "the adapter was trained for another base model"
            )
    return Adapter(path=root, config=config, modules=tuple(sorted(modules)))


def _logical_shape(base: Checkpoint, name: str) -> tuple[int, ...] | None:
    """A weight's [out, in] shape as the model computes with it: from the family config where the file stores it
    packed (BitNet's uint8 codes hold four rows per byte row), else from the file."""
    config = base.model_config
    if name in base.shapes and hasattr(config, "linear_shape") and name in getattr(config, "linear_names", tuple)():
        return tuple(config.linear_shape(name))
    return base.shapes.get(name)


def merge(model: Any, adapter: Adapter) -> Any:
    """Merge ``adapter`` into ``model`` (a transformers model) with peft and return the plain merged model."""
    from .errors import require

    peft = require("peft", "export")
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except Exception as exc:
        raise AdapterError(f"{adapter.path}: peft could not load the adapter: {exc}") from None
    return wrapped.merge_and_unload().eval()
