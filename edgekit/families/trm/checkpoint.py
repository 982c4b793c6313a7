"""Official TRM checkpoints: a directory with ``step_N`` (``torch.save``'d state dict) and ``all_config.yaml``.

The official training script (TinyRecursiveModels ``pretrain.py``, ``save_train_state``) saves
``model.state_dict()`` of the ``torch.compile``'d loss head as ``step_{N}`` beside the ``all_config.yaml`` it wrote
at start.  Several ``step_N`` may lie there: the highest N is taken unless a file is named.  The HRM release
checkpoints name the single file ``checkpoint``; that name is accepted as well when there is no ``step_N``.

Key mapping (official key -> key of ``reference.RecursiveReasoningModel``): the official prefix is stripped and
the rest is kept verbatim.  The prefix is ``_orig_mod.model.inner.`` when the training ran under torch.compile
(the default) and ``model.inner.`` under ``DISABLE_COMPILE``; one checkpoint uses one of them for every key.

    [_orig_mod.]model.inner.embed_tokens.embedding_weight           [vocab, hidden]   -> embed_tokens.embedding_weight
    [_orig_mod.]model.inner.lm_head.weight                          [vocab, hidden]   -> lm_head.weight (no bias, not tied)
    [_orig_mod.]model.inner.q_head.weight / .bias                   [2, hidden] / [2] -> q_head.weight / .bias
    [_orig_mod.]model.inner.puzzle_emb.weights                      [ids, ndim]       -> puzzle_emb.weights (puzzle_emb_ndim > 0)
    [_orig_mod.]model.inner.embed_pos.embedding_weight              [T, hidden]       -> embed_pos.embedding_weight (learned pos.)
    [_orig_mod.]model.inner.H_init, .L_init                         [hidden]          -> H_init, L_init
    [_orig_mod.]model.inner.L_level.layers.{i}.self_attn.qkv_proj.weight [3*hidden', hidden] -> L_level.layers.{i}.self_attn.qkv_proj.weight
    [_orig_mod.]model.inner.L_level.layers.{i}.self_attn.o_proj.weight   [hidden, hidden']   -> L_level.layers.{i}.self_attn.o_proj.weight
    [_orig_mod.]model.inner.L_level.layers.{i}.mlp_t.gate_up_proj.weight [2*inter_t, T]      -> (mlp_t variant, instead of self_attn)
    [_orig_mod.]model.inner.L_level.layers.{i}.mlp_t.down_proj.weight    [T, inter_t]        ->
    [_orig_mod.]model.inner.L_level.layers.{i}.mlp.gate_up_proj.weight   [2*inter, hidden]   -> L_level.layers.{i}.mlp.gate_up_proj.weight
    [_orig_mod.]model.inner.L_level.layers.{i}.mlp.down_proj.weight      [hidden, inter]     -> L_level.layers.{i}.mlp.down_proj.weight
    (HRM only) [_orig_mod.]model.inner.H_level.layers.{i}.*  — the same block keys             -> H_level.layers.{i}.*

hidden' = num_heads * (hidden // num_heads); T = prefix_len + seq_len; inter = SwiGLU width of hidden, inter_t of
T (``config.swiglu_inter``).  Not saved, so rebuilt: the RoPE tables, the puzzle embedding's local_weights/ids.
``H_init``/``L_init`` are stored in the training ``forward_dtype`` (bfloat16 in real runs); every tensor is
converted to the reference's dtype (float32 unless asked otherwise).

``tensor_shapes`` reads names, shapes and dtypes from a ``torch.save`` file without torch, so a plan (or a device)
can check the config against the tensors; ``load_checkpoint`` imports torch.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from edgekit.errors import CheckpointError
from edgekit.families.trm.config import CONFIG_FILE, TrmConfig, read_config, swiglu_inter

PREFIXES = ("_orig_mod.model.inner.", "model.inner.")
STEP_RE = re.compile(r"^step_(\d+)$")
HRM_RELEASE_NAME = "checkpoint"


# ---------------------------------------------------------------------------------------------------------------
# Files and keys (no torch)


def find_weights_file(path: str | Path) -> Path:
    """The state-dict file of a checkpoint: ``path`` itself if a file, else the highest ``step_N`` inside it."""
    p = Path(path).expanduser()
    if p.is_file():
        if not (p.parent / CONFIG_FILE).is_file():
            raise CheckpointError(f"{p.parent}: no {CONFIG_FILE} beside {p.name}")
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    steps = [(int(m.group(1)), f) for f in p.iterdir() if f.is_file() and (m := STEP_RE.match(f.name))]
    if steps:
        return max(steps)[1]
    if (p / HRM_RELEASE_NAME).is_file():
        return p / HRM_RELEASE_NAME
    names = ", ".join(sorted(f.name for f in p.iterdir())[:10]) or "nothing"
    raise CheckpointError(f"{p}: no step_N state-dict file (found: {names}); give the directory the training wrote")


def strip_prefix(keys: list[str], where: Path | str) -> dict[str, str]:
    """Map each official key to the module key; the prefix must be the same for every key."""
    if not keys:
        raise CheckpointError(f"{where}: the state dict is empty")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            return {k: k[len(prefix) :] for k in keys}
    odd = next((k for k in keys if not any(k.startswith(p) for p in PREFIXES)), None)
    if odd is not None:
        raise CheckpointError(
            f"{where}: key {odd!r} lacks the official prefix ({' or '.join(PREFIXES)}); not an official checkpoint"
        )
    raise CheckpointError(f"{where}: keys mix the {PREFIXES[0]!r} and {PREFIXES[1]!r} prefixes")


def block_shapes(cfg: Any, level: str, count: int, total: int | None) -> dict[str, tuple[int, ...] | None]:
    hidden = cfg.hidden_size
    inner = swiglu_inter(hidden, cfg.expansion)
    out: dict[str, tuple[int, ...] | None] = {}
    for i in range(count):
        base = f"{level}.layers.{i}."
        if cfg.mlp_t:
            inter_t = None if total is None else swiglu_inter(total, cfg.expansion)
            out[base + "mlp_t.gate_up_proj.weight"] = None if total is None else (2 * inter_t, total)  # type: ignore[operator]
            out[base + "mlp_t.down_proj.weight"] = None if total is None else (total, inter_t)  # type: ignore[assignment]
        else:
            width = cfg.num_heads * (hidden // cfg.num_heads)
            out[base + "self_attn.qkv_proj.weight"] = (3 * width, hidden)
            out[base + "self_attn.o_proj.weight"] = (hidden, width)
        out[base + "mlp.gate_up_proj.weight"] = (2 * inner, hidden)
        out[base + "mlp.down_proj.weight"] = (hidden, inner)
    return out


def expected_shapes(cfg: Any) -> dict[str, tuple[int, ...] | None]:
    """Module key -> shape for ``cfg`` (None where an unknown task field leaves the shape open)."""
    hidden, vocab, total = cfg.hidden_size, cfg.vocab_size, cfg.total_len
    out: dict[str, tuple[int, ...] | None] = {
        "embed_tokens.embedding_weight": None if vocab is None else (vocab, hidden),
        "lm_head.weight": None if vocab is None else (vocab, hidden),
        "q_head.weight": (2, hidden),
        "q_head.bias": (2,),
        "H_init": (hidden,),
        "L_init": (hidden,),
    }
    if cfg.puzzle_emb_ndim > 0:
        ids = cfg.num_puzzle_identifiers
        out["puzzle_emb.weights"] = None if ids is None else (ids, cfg.puzzle_emb_ndim)
    if cfg.pos_encodings == "learned":
        out["embed_pos.embedding_weight"] = None if total is None else (total, hidden)
    out.update(block_shapes(cfg, "L_level", cfg.L_layers, total))
    if cfg.separate_h_level:
        out.update(block_shapes(cfg, "H_level", cfg.H_layers, total))
    return out


def infer_task(cfg: Any, shapes: Mapping[str, tuple[int, ...]], where: Path | str) -> Any:
    """Fill seq_len / vocab_size / num_puzzle_identifiers from tensor shapes; a disagreement is a CheckpointError."""
    found: dict[str, int] = {}
    if "embed_tokens.embedding_weight" in shapes:
        found["vocab_size"] = shapes["embed_tokens.embedding_weight"][0]
    if cfg.puzzle_emb_ndim > 0 and "puzzle_emb.weights" in shapes:
        found["num_puzzle_identifiers"] = shapes["puzzle_emb.weights"][0]
    total = None
    if cfg.pos_encodings == "learned" and "embed_pos.embedding_weight" in shapes:
        total = shapes["embed_pos.embedding_weight"][0]
    elif cfg.mlp_t and "L_level.layers.0.mlp_t.gate_up_proj.weight" in shapes:
        total = shapes["L_level.layers.0.mlp_t.gate_up_proj.weight"][-1]
    if total is not None:
        found["seq_len"] = total - cfg.prefix_len
        if found["seq_len"] < 1:
            raise CheckpointError(f"{where}: tensors give a sequence of {total} positions, no room after the prefix")
    for key, value in found.items():
        have = getattr(cfg, key)
        if have is not None and have != value:
            raise CheckpointError(f"{where}: {key} is {have} in the config but the tensors say {value}")
    if cfg.puzzle_emb_ndim == 0 and cfg.num_puzzle_identifiers is None:
        found["num_puzzle_identifiers"] = 1  # unused without a puzzle embedding; any id 0 is valid
    return cfg.with_task(**{k: v for k, v in found.items() if getattr(cfg, k) is None})


def check_shapes(cfg: Any, shapes: Mapping[str, tuple[int, ...]], where: Path | str) -> None:
    """Missing, unexpected or mis-shaped tensors -> CheckpointError naming the first one (official key form)."""
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in shapes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: tensor {missing[0]} is missing{more}; the config does not match the weights")
    extra = [k for k in shapes if k not in want]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{where}: unexpected tensor {extra[0]}{more} for a {cfg.family.upper()} with this config "
            f"(mlp_t={cfg.mlp_t}, pos_encodings={cfg.pos_encodings}, puzzle_emb_ndim={cfg.puzzle_emb_ndim}, "
            f"L_layers={cfg.L_layers})"
        )
    for key, shape in want.items():
        if shape is not None and tuple(shapes[key]) != shape:
            raise CheckpointError(f"{where}: tensor {key} has shape {list(shapes[key])}, the config implies {list(shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Torch-free reading of a torch.save file's names, shapes and dtypes


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # torch storage name without "Storage", e.g. "Float", "BFloat16"


class _Storage:
    def __init__(self, kind: str) -> None:
        self.kind = kind


class _StateDict(dict):
    """Stands in for OrderedDict: torch pickles a ``_metadata`` attribute onto it, so it needs a ``__dict__``."""


class _ShapeUnpickler(pickle.Unpickler):
    """Restricted unpickler: only the classes a state dict pickles, each replaced by a shape-only stand-in."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _StateDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda storage, _offset, size, *_rest: TensorInfo(tuple(int(s) for s in size), storage.kind)
        if module == "torch" and name.endswith("Storage"):
            return name[: -len("Storage")]
        if module == "torch" and name in ("bfloat16", "float32", "float16", "float64"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel); storage_type is a class name or (newer) a dtype.
        kind = pid[1]
        kind = {"float32": "Float", "bfloat16": "BFloat16", "float16": "Half", "float64": "Double"}.get(kind, kind)
        return _Storage(str(kind))


def tensor_shapes(file: str | Path) -> dict[str, TensorInfo]:
    """Key -> (shape, storage dtype) of a ``torch.save``'d state dict, without torch (zip format only)."""
    path = Path(file)
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                raise CheckpointError(f"{path}: no data.pkl inside; not a torch.save file")
            data = _ShapeUnpickler(z.open(name)).load()
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a torch.save zip file (legacy or damaged)") from None
    except (pickle.UnpicklingError, AttributeError, IndexError, TypeError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a plain state dict ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, TensorInfo) for v in data.values()):
        raise CheckpointError(f"{path}: does not hold a flat dict of tensors")
    return {str(k): v for k, v in data.items()}


def read_checkpoint_config(
    path: str | Path, reader: Callable[..., Any] = read_config, **task: int | None
) -> Any:
    """Config of a checkpoint, completed and checked against its tensors' shapes — without torch.

    Raises CheckpointError when the config is missing or malformed or disagrees with the tensors.
    """
    file = find_weights_file(path)
    cfg = reader(file.parent, **task)
    infos = tensor_shapes(file)
    mapping = strip_prefix(list(infos), file)
    shapes = {mapping[k]: v.shape for k, v in infos.items()}
    cfg = infer_task(cfg, shapes, file)
    check_shapes(cfg, shapes, file)
    for key, info in infos.items():
        if info.dtype not in FLOAT_STORAGES:
            raise CheckpointError(f"{file}: tensor {mapping[key]} has dtype {info.dtype}; expected floating point")
    return cfg


FLOAT_STORAGES = ("Float", "BFloat16", "Half", "Double")


def check_finite(file: str | Path) -> None:
    """NaN/Inf in any tensor of the state dict is refused by name (plan time; imports torch)."""
    import torch

    for key, value in load_state_dict(Path(file)).items():
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{file}: tensor {key} holds NaN or infinite values; export a checkpoint with finite weights")


# ---------------------------------------------------------------------------------------------------------------
# Loading (torch)


def load_state_dict(file: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` onto the CPU; anything but a flat dict of tensors is a CheckpointError."""
    import torch

    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{file}: cannot be read as a state dict ({first})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{file}: does not hold a flat dict of tensors")
    return sd


def load_with(path: str | Path, reader: Callable[..., Any], dtype: Any = None, **task: int | None) -> Any:
    """Shared TRM/HRM loader: returns a ``RecursiveReasoningModel`` in eval mode with the checkpoint's weights."""
    import torch

    from edgekit.families.trm.reference import RecursiveReasoningModel

    file = find_weights_file(path)
    cfg = reader(file.parent, **task)
    raw = load_state_dict(file)
    mapping = strip_prefix(list(raw), file)
    sd = {mapping[k]: v for k, v in raw.items()}
    cfg = infer_task(cfg, {k: tuple(v.shape) for k, v in sd.items()}, file)
    check_shapes(cfg, {k: tuple(v.shape) for k, v in sd.items()}, file)
    for key, value in sd.items():
        if not value.dtype.is_floating_point:
            raise CheckpointError(f"{file}: tensor {key} has dtype {value.dtype}; expected floating point")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{file}: tensor {key} holds NaN or infinite values")
    target = torch.float32 if dtype is None else dtype
    model = RecursiveReasoningModel(cfg)
    model.load_state_dict({k: v.to(target) for k, v in sd.items()}, strict=True)
    return model.to(target).eval()


def load_checkpoint(path: str | Path, dtype: Any = None, **task: int | None) -> Any:
    """Load an official TRM checkpoint (directory with ``step_N`` + ``all_config.yaml``, or a ``step_N`` file).

    ``task`` may give seq_len / vocab_size / num_puzzle_identifiers (needed for none of the fixture checkpoints;
    an attention + RoPE model without a ``dataset.json`` gets its length from each batch).  ``dtype`` defaults to
    float32.  Returns ``reference.RecursiveReasoningModel`` (eval mode) whose ``.config`` is a ``TrmConfig``.
    Raises CheckpointError for a missing/bad config, missing/extra/mis-shaped/non-finite tensors.
    """
    return load_with(path, read_config, dtype, **task)


def load_config(path: str | Path, **task: int | None) -> TrmConfig:
    """Torch-free: the TRM config of a checkpoint, checked against its tensors' shapes (``read_checkpoint_config``)."""
    return read_checkpoint_config(path, read_config, **task)
