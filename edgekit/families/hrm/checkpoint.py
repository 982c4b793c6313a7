"""Official HRM checkpoints: ``step_N`` (or the release name ``checkpoint``) beside ``all_config.yaml``.

sapientinc/HRM ``pretrain.py`` saves ``model.state_dict()`` of the compiled loss head, exactly as TRM does, so the
file handling and the key mapping are TRM's (``edgekit.families.trm.checkpoint``, which documents every key):
``[_orig_mod.]model.inner.<key>`` -> ``<key>``, with HRM's two stacks ``H_level.layers.{i}.*`` and
``L_level.layers.{i}.*`` (same block keys).  ``H_init``/``L_init`` and ``puzzle_emb.weights`` are buffers in the
official model, parameters or buffers here; the keys are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.families.hrm.config import HrmConfig, read_config
from edgekit.families.trm.checkpoint import find_weights_file, load_with, read_checkpoint_config

__all__ = ["find_weights_file", "load_checkpoint", "load_config"]


def load_checkpoint(path: str | Path, dtype: Any = None, **task: int | None) -> Any:
    """Load an official HRM checkpoint into ``RecursiveReasoningModel`` (eval mode, float32 unless ``dtype``).

    Raises CheckpointError for a missing/bad config or missing/extra/mis-shaped/non-finite tensors.
    """
    return load_with(path, read_config, dtype, **task)


def load_config(path: str | Path, **task: int | None) -> HrmConfig:
    """Torch-free: the HRM config of a checkpoint, checked against its tensors' shapes."""
    return read_checkpoint_config(path, read_config, **task)
