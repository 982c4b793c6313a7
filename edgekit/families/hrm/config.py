"""HRM's configuration as one frozen value, read from the official ``all_config.yaml`` (its ``arch:`` section).

Field names and defaults are the official code's (sapientinc/HRM ``models/hrm/hrm_act_v1.py``,
``HierarchicalReasoningModel_ACTV1Config``): ``puzzle_emb_ndim`` 0, ``rms_norm_eps`` 1e-5, ``rope_theta`` 10000,
``forward_dtype`` "bfloat16".  Unlike TRM there is no ``puzzle_emb_len`` key: the prefix is
ceil(puzzle_emb_ndim / hidden_size) positions.  HRM halts on ``q_halt > q_continue`` (no ``no_ACT_continue``).
The HRM copy inside the TinyRecursiveModels repository (``recursive_reasoning.hrm``) adds ``mlp_t`` and allows
``pos_encodings`` other than rope/learned; both names are read here.  ``seq_len`` / ``vocab_size`` /
``num_puzzle_identifiers`` are resolved as for TRM (``edgekit.families.trm.config``).  No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edgekit.errors import CheckpointError
from edgekit.families.trm.config import (
    CONFIG_FILE,
    RecursiveConfig,
    POS_ENCODINGS,
    _bool,
    _float,
    _int,
    _str,
    arch_section,
    check_dtype_name,
    check_geometry,
    read_dataset_metadata,
    read_yaml,
    require_keys,
    task_fields,
)

ARCH_NAMES = (
    "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",  # sapientinc/HRM
    "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",  # the copy in TinyRecursiveModels
)


@dataclass(frozen=True)
class HrmConfig(RecursiveConfig):
    """An HRM model's hyperparameters (official field names); ``prefix_len`` is derived, never written."""

    name: str
    hidden_size: int
    num_heads: int
    expansion: float
    H_cycles: int
    L_cycles: int
    H_layers: int
    L_layers: int
    halt_max_steps: int
    halt_exploration_prob: float
    pos_encodings: str
    puzzle_emb_ndim: int = 0
    mlp_t: bool = False  # only in the TinyRecursiveModels copy of HRM
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    forward_dtype: str = "bfloat16"
    seq_len: int | None = None
    vocab_size: int | None = None
    num_puzzle_identifiers: int | None = None

    @property
    def family(self) -> str:
        return "hrm"

    @property
    def prefix_len(self) -> int:
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    @property
    def separate_h_level(self) -> bool:
        return True

    @property
    def halt_on_continue(self) -> bool:
        return True

    @classmethod
    def from_arch(
        cls,
        arch: Mapping[str, Any],
        where: Path | str = "arch",
        dataset: Mapping[str, int] | None = None,
        **task: int | None,
    ) -> "HrmConfig":
        """Validate an ``arch:`` mapping into a config; CheckpointError names the offending field."""
        name = arch.get("name", ARCH_NAMES[0])
        if name not in ARCH_NAMES:
            raise CheckpointError(f"{where}: arch.name {name!r} is not an HRM model (expected one of {', '.join(ARCH_NAMES)})")
        require_keys(
            arch,
            ("hidden_size", "num_heads", "expansion", "H_cycles", "L_cycles", "H_layers", "L_layers",
             "halt_max_steps", "pos_encodings"),
            where,
        )
        a = dict(arch)
        a.setdefault("halt_exploration_prob", 0.0)
        a.setdefault("puzzle_emb_ndim", 0)
        a.setdefault("mlp_t", False)
        a.setdefault("rms_norm_eps", 1e-5)
        a.setdefault("rope_theta", 10000.0)
        resolved = task_fields(a, dataset or {}, task, where)
        cfg = cls(
            name=str(name),
            hidden_size=_int(a, "hidden_size", where, 1),
            num_heads=_int(a, "num_heads", where, 1),
            expansion=_float(a, "expansion", where),
            H_cycles=_int(a, "H_cycles", where, 1),
            L_cycles=_int(a, "L_cycles", where, 1),
            H_layers=_int(a, "H_layers", where, 1),
            L_layers=_int(a, "L_layers", where, 1),
            halt_max_steps=_int(a, "halt_max_steps", where, 1),
            halt_exploration_prob=_float(a, "halt_exploration_prob", where),
            pos_encodings=_str(a, "pos_encodings", where, POS_ENCODINGS),
            puzzle_emb_ndim=_int(a, "puzzle_emb_ndim", where, 0),
            mlp_t=_bool(a, "mlp_t", where),
            rms_norm_eps=_float(a, "rms_norm_eps", where),
            rope_theta=_float(a, "rope_theta", where),
            forward_dtype=check_dtype_name(a, where),
            **resolved,  # type: ignore[arg-type]
        )
        if cfg.name == ARCH_NAMES[0] and (cfg.mlp_t or cfg.pos_encodings == "none"):
            # sapientinc's model class has neither; a config asking for them did not come from that code.
            raise CheckpointError(f"{where}: {ARCH_NAMES[0]} supports neither mlp_t nor pos_encodings 'none'")
        check_geometry(cfg, where)
        return cfg


def read_config(path: str | Path, **task: int | None) -> HrmConfig:
    """The config of an official HRM checkpoint from ``all_config.yaml`` (+ ``dataset.json``); no torch."""
    p = Path(path).expanduser()
    directory = p if p.is_dir() else p.parent
    where = directory / CONFIG_FILE
    arch = arch_section(read_yaml(where), where)
    return HrmConfig.from_arch(arch, where, read_dataset_metadata(directory), **task)
