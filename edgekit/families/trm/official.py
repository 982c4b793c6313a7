"""The official TRM/HRM checkpoint layout as edgekit checkpoints: a directory with ``step_N`` (or ``checkpoint``)
and the ``all_config.yaml`` beside it.  ``open_trm`` / ``open_hrm`` answer None for a directory that is not
theirs, so the checkpoint opener can ask every family in turn; torch is imported only by ``build_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekit.families.trm.config import CONFIG_FILE, DATASET_FILE, arch_section, read_yaml


def _open(root: Path, names: tuple[str, ...], load_config: Callable[..., Any]) -> dict[str, Any] | None:
    from edgekit.families.trm.checkpoint import find_weights_file, tensor_shapes

    if not (root / CONFIG_FILE).is_file():
        return None
    arch = arch_section(read_yaml(root / CONFIG_FILE), root / CONFIG_FILE)
    if arch.get("name") not in names:
        return None
    from edgekit.families.trm.checkpoint import check_finite

    weights = find_weights_file(root)
    cfg = load_config(weights)
    check_finite(weights)
    return {
        "config": {"architectures": [arch["name"]], **arch},
        "model_config": cfg,
        "files": (weights,),
        "config_files": tuple(p for p in (root / CONFIG_FILE, root / DATASET_FILE) if p.is_file()),
        "shapes": {k: tuple(v.shape) for k, v in tensor_shapes(weights).items()},
    }


def open_trm(root: Path) -> dict[str, Any] | None:
    from edgekit.families.trm.checkpoint import load_config
    from edgekit.families.trm.config import ARCH_NAMES

    return _open(root, ARCH_NAMES, load_config)


def open_hrm(root: Path) -> dict[str, Any] | None:
    from edgekit.families.hrm.checkpoint import load_config
    from edgekit.families.hrm.config import ARCH_NAMES

    return _open(root, ARCH_NAMES, load_config)


def build_trm(checkpoint: Any, options: Any = None) -> Any:
    from edgekit.families.trm.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint.files[0])


def build_hrm(checkpoint: Any, options: Any = None) -> Any:
    from edgekit.families.hrm.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint.files[0])
