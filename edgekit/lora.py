"""PEFT LoRA adapters: validation against the base checkpoint (before any work) and merging.

Merging uses peft's own ``merge_and_unload`` so that rank, alpha, ``use_rslora`` and per-module rank/alpha
patterns are honoured exactly as at training time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from . import builtin
from .checkpoint import Checkpoint, read_json, sha256_files, tensor_shapes
from .errors import AdapterError, CheckpointError

PREFIX = "base_model.model."  # peft's key prefix: a key without it matches no module and is dropped on load
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
    check_config_types(root, config)
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
        if not key.startswith(PREFIX):
            raise AdapterError(
                f"{weights}: tensor {key!r} lacks peft's {PREFIX!r} key prefix, so peft would load none of the "
                "adapter and the merge would change nothing; save the adapter with peft's save_pretrained"
            )
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
        rank = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
        if a[0] != rank:
            # checked here because peft's own size-mismatch error dumps every tensor (dozens of lines)
            raise AdapterError(
                f"{root}: {module}: adapter_config.json says rank {rank}, but lora_A has {a[0]} rows "
                f"(A{list(a)} B{list(b)}); the config does not belong to these weights"
            )
    check_targets(root, config, sorted(modules), allowed)
    check_values(weights)
    return Adapter(path=root, config=config, modules=tuple(sorted(modules)))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_config_types(root: Path, config: Mapping[str, Any]) -> None:
    """Every adapter_config.json value that changes the merge must have the type peft expects: peft does not
    validate them, and e.g. ``use_rslora: "false"`` (a string) is truthy, so it would merge with another scale."""
    where = root / ADAPTER_CONFIG

    def bad(key: str, want: str) -> AdapterError:
        return AdapterError(f"{where}: {key} must be {want}, got {config[key]!r}")

    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterError(f"{where}: r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha", 8)
    if not _is_number(alpha) or not math.isfinite(alpha):
        raise AdapterError(f"{where}: lora_alpha must be a finite number, got {alpha!r}")
    if alpha == 0:
        raise AdapterError(f"{where}: lora_alpha is 0, so the adapter's scale is 0 and merging would change nothing")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out", "inference_mode"):
        if key in config and not isinstance(config[key], bool):
            raise bad(key, "true or false (a JSON boolean)")
    for key in ("target_modules", "exclude_modules", "layers_pattern"):
        v = config.get(key)
        if v is not None and not isinstance(v, str) and not (
            isinstance(v, list) and all(isinstance(x, str) for x in v)
        ):
            raise bad(key, "a string or a list of strings")
    for key in ("target_modules", "exclude_modules"):
        if isinstance(config.get(key), str) and config[key] != "all-linear":
            try:
                re.compile(config[key])
            except re.error as exc:
                raise AdapterError(f"{where}: {key} {config[key]!r} is not a valid regular expression ({exc})") from None
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool))
        or (isinstance(layers, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in layers))
    ):
        raise bad("layers_to_transform", "a layer index or a list of layer indices")
    for key in ("rank_pattern", "alpha_pattern"):
        v = config.get(key)
        if v is None:
            continue
        if not isinstance(v, dict) or not all(_is_number(x) and math.isfinite(x) and x > 0 for x in v.values()):
            raise bad(key, "an object of module pattern -> positive number")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias {config['bias']!r} is not supported; only LoRA weights merge (bias 'none')")


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first pattern that matches the end of ``module`` (as a regex) wins."""
    for pattern, value in patterns.items():
        if module == pattern or re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def check_targets(root: Path, config: Mapping[str, Any], modules: list[str], allowed: frozenset[str]) -> None:
    """Every module the adapter holds tensors for must be one peft wraps under this config — in
    ``target_modules``, not in ``exclude_modules``, in ``layers_to_transform`` — or peft drops its tensors
    silently and the merge is partial.  Uses peft's own matcher (``check_target_module_exists``)."""
    from types import SimpleNamespace

    from .errors import require

    require("peft", "export")
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = config.get("target_modules")
    if targets == "all-linear":
        targets = sorted(allowed)
    if targets is None:
        raise AdapterError(f"{root / ADAPTER_CONFIG}: has no target_modules; peft would not know which layers to wrap")
    view = SimpleNamespace(
        target_modules=targets if isinstance(targets, str) else set(targets),
        exclude_modules=config.get("exclude_modules"),
        modules_to_save=None,
        target_parameters=None,
        layers_to_transform=config.get("layers_to_transform"),
        layers_pattern=config.get("layers_pattern"),
    )
    dropped = [m for m in modules if not check_target_module_exists(view, m)]
    if dropped:
        more = f" (+{len(dropped) - 1} more)" if len(dropped) > 1 else ""
        raise AdapterError(
            f"{root}: the adapter holds tensors for {dropped[0]}{more}, which its adapter_config.json excludes "
            "(target_modules / exclude_modules / layers_to_transform); peft would drop them and merge only part "
            "of the adapter — fix the config to name every trained module"
        )


def check_values(weights: Path) -> None:
    """NaN/Inf in an adapter tensor is refused by name, as is an adapter whose every lora_B is zero (never
    trained: the merge would change nothing)."""
    from safetensors import safe_open

    from .errors import require

    torch = require("torch", "export")
    any_b = False
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if not t.dtype.is_floating_point:
                raise AdapterError(f"{weights}: tensor {key} has dtype {t.dtype}; LoRA weights are floats")
            if not bool(torch.isfinite(t).all()):
                raise AdapterError(f"{weights}: tensor {key} holds NaN or Inf; the adapter is damaged or training diverged")
            if ".lora_B" in key and bool(t.any()):
                any_b = True
    if not any_b:
        raise AdapterError(f"{weights}: every lora_B is zero (an untrained adapter); merging it would change nothing")


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
