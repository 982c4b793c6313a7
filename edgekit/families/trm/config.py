"""TRM's configuration as one frozen value, read from the official ``all_config.yaml`` (its ``arch:`` section).

Field names are the official code's own (TinyRecursiveModels, ``models/recursive_reasoning/trm.py``,
``TinyRecursiveReasoningModel_ACTV1Config``), and so are the defaults of the optional ones: ``puzzle_emb_ndim``
0, ``puzzle_emb_len`` 16, ``mlp_t`` False, ``no_ACT_continue`` True, ``rms_norm_eps`` 1e-5, ``rope_theta``
10000, ``forward_dtype`` "bfloat16".

Three numbers are *not* in ``all_config.yaml``: the official ``pretrain.py`` takes ``seq_len``, ``vocab_size`` and
``num_puzzle_identifiers`` from the dataset's metadata (``dataset.json``, written by the official dataset
builders).  Here they come, in this order, from an explicit argument, from a ``dataset.json`` lying beside the
checkpoint, from the ``arch:`` mapping itself (a resolved model config such as the one the official code
validates), and finally from the tensors (``checkpoint.load_checkpoint``): vocab from ``embed_tokens``, identifiers
from ``puzzle_emb.weights``, sequence length from ``embed_pos`` or the ``mlp_t`` weights.  An attention model with
RoPE (or no position encoding) runs on any length, so its ``seq_len`` may stay ``None`` until a task fixes it.

This module imports no torch: a device (or a plan) can validate a checkpoint's config without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from edgekit.errors import CheckpointError, MissingDependencyError, UnsupportedError

CONFIG_FILE = "all_config.yaml"
DATASET_FILE = "dataset.json"  # the official dataset metadata (PuzzleDatasetMetadata), optional
# ``arch.name`` values this family reads: the official TRM model class.
ARCH_NAMES = ("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",)
# Other model classes of the official repository, refused by name (their step differs from TRM's).
OTHER_ARCHS = (
    "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
    "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
    "recursive_reasoning.transformers_baseline@Model_ACTV2",
)
POS_ENCODINGS = ("rope", "learned", "none")
FORWARD_DTYPES = ("float32", "bfloat16", "float16")
TASK_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")


# ---------------------------------------------------------------------------------------------------------------
# Reading helpers shared with the HRM family (same file layout, same yaml writer).


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse an ``all_config.yaml``; a missing file, a missing PyYAML or a non-mapping is a one-line error."""
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; an official TRM/HRM checkpoint directory holds step_N and the all_config.yaml "
            "that the training script wrote beside it"
        )
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError(
            "PyYAML is not installed; it reads TRM/HRM all_config.yaml files: pip install pyyaml"
        ) from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def arch_section(data: Mapping[str, Any], where: Path) -> dict[str, Any]:
    """The ``arch:`` mapping of an ``all_config.yaml``."""
    arch = data.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(f"{where}: no 'arch:' mapping (the model config); is this an official all_config.yaml?")
    return arch


def read_dataset_metadata(directory: Path) -> dict[str, int]:
    """``seq_len`` / ``vocab_size`` / ``num_puzzle_identifiers`` from a ``dataset.json`` beside the checkpoint.

    Returns {} when there is none; the official training code reads the same three fields from its dataset's
    ``train/dataset.json`` (``PuzzleDatasetMetadata``), so a user can copy that file next to the checkpoint.
    """
    path = directory / DATASET_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object (the dataset metadata)")
    return {k: _int(meta, k, path) for k in TASK_FIELDS if k in meta}


def _int(arch: Mapping[str, Any], key: str, where: Path | str, minimum: int = 0) -> int:
    value = arch[key]
    # bool is an int subclass; a yaml 'true' where a count belongs is a broken config, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{where}: arch.{key} must be an integer, got {value!r}")
    if value < minimum:
        raise CheckpointError(f"{where}: arch.{key} must be >= {minimum}, got {value}")
    return value


def _float(arch: Mapping[str, Any], key: str, where: Path | str) -> float:
    value = arch[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{where}: arch.{key} must be a number, got {value!r}")
    return float(value)


def _bool(arch: Mapping[str, Any], key: str, where: Path | str) -> bool:
    value = arch[key]
    if not isinstance(value, bool):
        raise CheckpointError(f"{where}: arch.{key} must be true or false, got {value!r}")
    return value


def _str(arch: Mapping[str, Any], key: str, where: Path | str, choices: tuple[str, ...]) -> str:
    value = arch[key]
    if value not in choices:
        raise CheckpointError(f"{where}: arch.{key} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def require_keys(arch: Mapping[str, Any], keys: tuple[str, ...], where: Path | str) -> None:
    missing = [k for k in keys if k not in arch]
    if missing:
        raise CheckpointError(f"{where}: arch is missing {', '.join(missing)}")


def task_fields(
    arch: Mapping[str, Any], dataset: Mapping[str, int], overrides: Mapping[str, int | None], where: Path | str
) -> dict[str, int | None]:
    """Resolve seq_len / vocab_size / num_puzzle_identifiers: explicit > dataset.json > arch; all must agree."""
    out: dict[str, int | None] = {}
    for key in TASK_FIELDS:
        seen: list[tuple[str, int]] = []
        if overrides.get(key) is not None:
            seen.append(("the caller", int(overrides[key])))  # type: ignore[arg-type]
        if key in dataset:
            seen.append((DATASET_FILE, dataset[key]))
        if arch.get(key) is not None:
            seen.append(("arch", _int(arch, key, where, minimum=1)))
        values = {v for _, v in seen}
        if len(values) > 1:
            raise CheckpointError(
                f"{where}: {key} disagrees between sources ({', '.join(f'{s}: {v}' for s, v in seen)})"
            )
        out[key] = seen[0][1] if seen else None
        if out[key] is not None and out[key] < 1:  # type: ignore[operator]
            raise CheckpointError(f"{where}: {key} must be >= 1, got {out[key]}")
    return out


def swiglu_inter(width: int, expansion: float) -> int:
    """SwiGLU's inner width: round(expansion * width * 2/3) rounded up to a multiple of 256.

    Source: official ``models/layers.py`` (``SwiGLU.__init__``, ``_find_multiple``).  Python's round() is
    banker's rounding; the official code uses the same builtin, so ties agree.
    """
    base = round(expansion * width * 2 / 3)
    return -(base // -256) * 256


def check_dtype_name(arch: Mapping[str, Any], where: Path | str) -> str:
    if "forward_dtype" not in arch:
        return "bfloat16"  # the official default when the key is absent
    return _str(arch, "forward_dtype", where, FORWARD_DTYPES)


# ---------------------------------------------------------------------------------------------------------------


class RecursiveConfig:
    """What TRM and HRM configs derive alike from their fields (``prefix_len`` is each family's own)."""

    @property
    def total_len(self) -> int | None:
        """T = prefix_len + seq_len: the state's sequence length."""
        return None if self.seq_len is None else self.seq_len + self.prefix_len  # type: ignore[attr-defined]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads  # type: ignore[attr-defined]

    @property
    def mlp_inter(self) -> int:
        return swiglu_inter(self.hidden_size, self.expansion)  # type: ignore[attr-defined]

    @property
    def mlp_t_inter(self) -> int | None:
        return None if self.total_len is None else swiglu_inter(self.total_len, self.expansion)  # type: ignore[attr-defined]

    @property
    def is_complete(self) -> bool:
        return None not in (self.seq_len, self.vocab_size, self.num_puzzle_identifiers)  # type: ignore[attr-defined]

    def with_task(self, **fields: int) -> Any:
        """A copy with seq_len / vocab_size / num_puzzle_identifiers set (unknown keys are a TypeError)."""
        return replace(self, **fields)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def describe(self) -> dict[str, Any]:
        """Manifest metadata: the official names plus the resolved prefix length."""
        return {**self.to_dict(), "prefix_len": self.prefix_len}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TrmConfig(RecursiveConfig):
    """A TRM model's hyperparameters (official field names).

    ``H_layers`` is read and kept but unused: the official TRM applies its single ``L_level`` network for both the
    z_L and z_H updates ("H_layers: ignored").  ``puzzle_emb_len`` is the value as written (0 = derive it as
    ceil(puzzle_emb_ndim / hidden_size)); ``prefix_len`` is the resolved number of prefix positions.
    ``seq_len`` / ``vocab_size`` / ``num_puzzle_identifiers`` are None only while unknown (see the module doc).
    """

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
    pos_encodings: str  # "rope" | "learned" | "none"
    puzzle_emb_ndim: int = 0
    puzzle_emb_len: int = 16
    mlp_t: bool = False  # MLP over the sequence axis instead of self-attention (the Sudoku variant)
    no_ACT_continue: bool = True  # halt on sigmoid(q_halt) > 0.5 alone (True) or on q_halt > q_continue
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    forward_dtype: str = "bfloat16"
    seq_len: int | None = None
    vocab_size: int | None = None
    num_puzzle_identifiers: int | None = None

    # -- derived ------------------------------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return "trm"

    @property
    def prefix_len(self) -> int:
        """Puzzle-embedding prefix positions P: ``puzzle_emb_len``, or ceil(ndim / hidden) when that is 0."""
        if self.puzzle_emb_len == 0:
            return -(self.puzzle_emb_ndim // -self.hidden_size)
        return self.puzzle_emb_len

    @property
    def separate_h_level(self) -> bool:
        """False: TRM updates z_H with the same network as z_L (HRM has a separate H_level)."""
        return False

    @property
    def halt_on_continue(self) -> bool:
        """True when halting compares q_halt with q_continue; False when q_halt > 0 alone decides."""
        return not self.no_ACT_continue

    # -- reading ------------------------------------------------------------------------------------------------

    @classmethod
    def from_arch(
        cls,
        arch: Mapping[str, Any],
        where: Path | str = "arch",
        dataset: Mapping[str, int] | None = None,
        **task: int | None,
    ) -> "TrmConfig":
        """Validate an ``arch:`` mapping (plus optional dataset metadata / explicit task fields) into a config.

        Raises CheckpointError naming the field for a missing or ill-typed value, or a config the official code
        cannot run; UnsupportedError for another official model class (``arch.name``).
        """
        name = arch.get("name", ARCH_NAMES[0])
        if name not in ARCH_NAMES:
            if name in OTHER_ARCHS:
                raise UnsupportedError(f"{where}: arch.name {name!r} is not supported; the trm family reads {ARCH_NAMES[0]}")
            raise CheckpointError(f"{where}: arch.name {name!r} is not a TRM model (expected {ARCH_NAMES[0]})")
        require_keys(
            arch,
            ("hidden_size", "num_heads", "expansion", "H_cycles", "L_cycles", "L_layers", "halt_max_steps",
             "pos_encodings"),
            where,
        )
        a = dict(arch)
        a.setdefault("H_layers", 0)
        a.setdefault("halt_exploration_prob", 0.0)
        a.setdefault("puzzle_emb_ndim", 0)
        a.setdefault("puzzle_emb_len", 16)
        a.setdefault("mlp_t", False)
        a.setdefault("no_ACT_continue", True)
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
            H_layers=_int(a, "H_layers", where, 0),
            L_layers=_int(a, "L_layers", where, 1),
            halt_max_steps=_int(a, "halt_max_steps", where, 1),
            halt_exploration_prob=_float(a, "halt_exploration_prob", where),
            pos_encodings=_str(a, "pos_encodings", where, POS_ENCODINGS),
            puzzle_emb_ndim=_int(a, "puzzle_emb_ndim", where, 0),
            puzzle_emb_len=_int(a, "puzzle_emb_len", where, 0),
            mlp_t=_bool(a, "mlp_t", where),
            no_ACT_continue=_bool(a, "no_ACT_continue", where),
            rms_norm_eps=_float(a, "rms_norm_eps", where),
            rope_theta=_float(a, "rope_theta", where),
            forward_dtype=check_dtype_name(a, where),
            **resolved,  # type: ignore[arg-type]
        )
        check_geometry(cfg, where)
        return cfg


def check_geometry(cfg: Any, where: Path | str) -> None:
    """Configs the official code cannot run (it would fail with a shape error deep inside the forward)."""
    if cfg.expansion <= 0:
        raise CheckpointError(f"{where}: arch.expansion must be > 0, got {cfg.expansion}")
    if cfg.rms_norm_eps <= 0:
        raise CheckpointError(f"{where}: arch.rms_norm_eps must be > 0, got {cfg.rms_norm_eps}")
    if not cfg.mlp_t and cfg.head_dim < 1:
        raise CheckpointError(f"{where}: hidden_size {cfg.hidden_size} < num_heads {cfg.num_heads}")
    if cfg.pos_encodings == "rope" and cfg.head_dim % 2:
        raise CheckpointError(f"{where}: RoPE needs an even head_dim; hidden_size/num_heads = {cfg.head_dim}")
    if cfg.puzzle_emb_ndim == 0 and cfg.prefix_len != 0:
        # The official TRM sizes the state with puzzle_emb_len but prepends nothing without an embedding, so
        # z_H + x fails; the no-embedding variant must say puzzle_emb_len: 0.
        raise CheckpointError(
            f"{where}: puzzle_emb_ndim is 0 but puzzle_emb_len is {cfg.prefix_len}; set puzzle_emb_len: 0 "
            "(the official code cannot run this config either)"
        )
    if cfg.puzzle_emb_ndim > cfg.prefix_len * cfg.hidden_size:
        raise CheckpointError(
            f"{where}: puzzle_emb_ndim {cfg.puzzle_emb_ndim} does not fit {cfg.prefix_len} prefix positions of "
            f"{cfg.hidden_size}"
        )


def read_config(path: str | Path, **task: int | None) -> TrmConfig:
    """The config of an official TRM checkpoint, from ``all_config.yaml`` (+ ``dataset.json``) alone; no torch.

    ``path`` is the checkpoint directory or a ``step_N`` file inside it.  ``task`` may give seq_len,
    vocab_size, num_puzzle_identifiers (checked against the files).  Fields only the tensors know stay None.
    """
    p = Path(path).expanduser()
    directory = p if p.is_dir() else p.parent
    where = directory / CONFIG_FILE
    arch = arch_section(read_yaml(where), where)
    return TrmConfig.from_arch(arch, where, read_dataset_metadata(directory), **task)
