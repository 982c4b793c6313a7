"""Reading a Hugging Face checkpoint directory: config, (sharded) safetensors, tokenizer and generation config.

Everything here is validated up front, before any heavy work, so that a bad checkpoint fails in seconds with
a message that names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import builtin, families
from .errors import CheckpointError, UnsupportedError
from .families import FamilySpec, ModelKind
from .hashing import sha256_files

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
EMBEDDING_KEYS = ("model.embed_tokens.weight", "model.embedding.weight", "embed_tokens.weight")


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object")
    return data


def weight_files(root: Path) -> list[Path]:
    index = root / WEIGHTS_INDEX
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no 'weight_map'")
        files = sorted({root / name for name in weight_map.values()})
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shards that are missing: {', '.join(missing)}")
        return files
    if (root / WEIGHTS_FILE).is_file():
        return [root / WEIGHTS_FILE]
    if any(root.glob("*.bin")) or any(root.glob("*.pt")):
        raise CheckpointError(
            f"{root}: only pickle weights found; save the model with safetensors "
            "(model.save_pretrained(dir, safe_serialization=True))"
        )
    raise CheckpointError(f"{root}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX}")


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor, read from the safetensors headers (which also catches truncation)."""
    return {name: h.shape for name, h in tensor_headers(files).items()}


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as a safetensors header describes it: shape, dtype name (``BF16``, ``F32``, ``U8``...), file."""

    shape: tuple[int, ...]
    dtype: str
    file: Path


def tensor_headers(files: Iterable[Path]) -> dict[str, TensorHeader]:
    """Name -> shape, dtype and file of every tensor; a name stored in two files is a CheckpointError."""
    from safetensors import safe_open

    out: dict[str, TensorHeader] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="np") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    if key in out:
                        raise CheckpointError(
                            f"{path}: tensor {key!r} is also stored in {out[key].file.name}; a checkpoint holds each "
                            "tensor once (re-save it)"
                        )
                    out[key] = TensorHeader(tuple(sl.get_shape()), str(sl.get_dtype()), path)
        except CheckpointError:
            raise
        except Exception as exc:  # SafetensorError is not importable as a stable type across versions
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); re-save or re-download it") from None
    return out


# --- what a family requires of the tensors (plan-time weight checks) ------------------------------------------

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
# Tensors that change how another tensor is read (scales, zero points, packed codes): dropping one is never harmless.
QUANT_PARAM_SUFFIXES = (
    "weight_scale", "input_scale", "weight_scale_inv", "scale", "scales", "zeros", "qzeros", "zero_point", "g_idx",
    "qweight", "absmax", "quant_map", "quant_state", "SCB", "weight_format",
)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class TensorRule:
    """What a family requires of one tensor: the (shape, dtypes) forms it may take — BitNet's projections are a
    float ``[out, in]`` or packed uint8 ``[out / 4, in]`` — and whether it must be present."""

    forms: tuple[tuple[tuple[int, ...], frozenset[str]], ...]
    required: bool = True

    @classmethod
    def floats(cls, *shape: int, required: bool = True) -> "TensorRule":
        return cls(forms=((tuple(shape), FLOAT_DTYPES),), required=required)

    def describe(self) -> str:
        return " or ".join(f"{list(shape)} {'/'.join(sorted(d))}" for shape, d in self.forms)


def _layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def droppable(name: str, used: Iterable[str]) -> bool:
    """Whether ignoring the extra tensor ``name`` provably leaves the model unchanged: it is no quantisation
    parameter, lies in no decoder layer, and shares no module with a tensor the model uses (a bias beside a used
    weight, for example, would change the output)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in QUANT_PARAM_SUFFIXES or name.endswith(QUANT_PARAM_SUFFIXES) or _layer_of(name) is not None:
        return False
    module = name.rsplit(".", 1)[0]
    return not any(u.rsplit(".", 1)[0] == module for u in used)


def _names(names: list[str], limit: int = 3) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_tensors(
    root: Path,
    headers: Mapping[str, TensorHeader],
    rules: Mapping[str, TensorRule],
    allow_extra: bool = False,
    num_layers: int | None = None,
) -> None:
    """Refuse weights that are not what the config describes, naming the tensor: a missing tensor (transformers
    would fill it with a random initialisation), weights for fewer or more decoder layers than ``num_layers``,
    layer tensors of another mixer than the config's layer types, an unexpected tensor (dropped silently by
    transformers; ``allow_extra`` accepts the ones ``droppable`` proves harmless), a wrong shape or dtype.
    Raises CheckpointError (one line)."""
    present = set(headers)
    missing = [n for n, r in rules.items() if r.required and n not in present]
    extra = sorted(n for n in present if n not in rules)
    if num_layers is not None:
        held = sorted({i for n in present if (i := _layer_of(n)) is not None})
        if held and held[-1] >= num_layers:
            raise CheckpointError(
                f"{root}: the weights hold decoder layer {held[-1]} ({_names([n for n in extra if _layer_of(n) == held[-1]], 1)}) "
                f"but config.json says num_hidden_layers {num_layers}; the config does not describe these weights"
            )
        absent = [i for i in range(num_layers) if i not in held]
        if absent and missing:
            raise CheckpointError(
                f"{root}: config.json says num_hidden_layers {num_layers} but the weights hold no tensors for layer"
                f"{'s' if len(absent) > 1 else ''} {_names([str(i) for i in absent], 4)}; the config does not "
                "describe these weights"
            )
    if missing:
        by_layer = [n for n in missing if _layer_of(n) is not None]
        for name in by_layer:
            i = _layer_of(name)
            other = [n for n in extra if _layer_of(n) == i]
            if other:
                raise CheckpointError(
                    f"{root}: layer {i} holds {other[0]} where the config expects {name}; the config's layer types "
                    "(layer_types / full_attn_idxs) do not match the weights"
                )
        where = headers[next(iter(headers))].file.parent if headers else root
        shard = " (one shard of the index lacks it)" if (where / WEIGHTS_INDEX).is_file() else ""
        raise CheckpointError(
            f"{root}: tensor {_names(missing)} is missing from the weights{shard}; transformers would fill it with "
            "random values — re-save the complete checkpoint"
        )
    if extra:
        used = [n for n in rules if n in present]
        harmful = [n for n in extra if not droppable(n, used)]
        if harmful or not allow_extra:
            bad = harmful or extra
            hint = (
                "it changes the model (a quantisation scale, a layer tensor or a part of a used module), so it "
                "cannot be dropped" if harmful else "pass --allow-extra-tensors to export without it"
            )
            raise CheckpointError(
                f"{root}: unexpected tensor {_names(bad)} that this config does not use; {hint}"
            )
    for name, rule in rules.items():
        h = headers.get(name)
        if h is None:
            continue
        if not any(h.dtype in dtypes for _, dtypes in rule.forms):
            raise CheckpointError(
                f"{h.file}: tensor {name} has dtype {h.dtype}; expected {'/'.join(sorted(set().union(*(d for _, d in rule.forms))))}"
            )
        if not any(h.shape == shape and h.dtype in dtypes for shape, dtypes in rule.forms):
            raise CheckpointError(
                f"{h.file}: tensor {name} has shape {list(h.shape)} ({h.dtype}); the config implies {rule.describe()}"
            )


def check_index(root: Path, headers: Mapping[str, TensorHeader]) -> None:
    """A sharded checkpoint's index and its shards must agree tensor by tensor (transformers loads by the index:
    a tensor listed but absent from its shard is filled with random values, one not listed is ignored)."""
    index = root / WEIGHTS_INDEX
    if not index.is_file():
        return
    weight_map = read_json(index, "safetensors index").get("weight_map") or {}
    for name, shard in weight_map.items():
        h = headers.get(name)
        if h is None or h.file.name != shard:
            where = f"it is in {h.file.name}" if h is not None else "no shard holds it"
            raise CheckpointError(f"{index}: lists tensor {name} in shard {shard}, but {where}; re-save the checkpoint")
    unlisted = sorted(set(headers) - set(weight_map))
    if unlisted:
        raise CheckpointError(
            f"{index}: shard {headers[unlisted[0]].file.name} holds {_names(unlisted)}, which the index does not list; "
            "re-save the checkpoint"
        )


def check_finite(headers: Mapping[str, TensorHeader], names: Iterable[str]) -> None:
    """NaN or Inf in a float tensor the model uses is refused by name (verification cannot catch it: every
    comparison with NaN is false).  Reads the values (torch, memory-mapped)."""
    from safetensors import safe_open

    from .errors import require

    torch = require("torch", "export")
    by_file: dict[Path, list[str]] = {}
    for name in names:
        h = headers.get(name)
        if h is not None and h.dtype in FLOAT_DTYPES:
            by_file.setdefault(h.file, []).append(name)
    for path, keys in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for key in keys:
                t = f.get_tensor(key)
                if not bool(torch.isfinite(t).all()):
                    bad = int((~torch.isfinite(t)).sum())
                    raise CheckpointError(
                        f"{path}: tensor {key} holds {bad} NaN/Inf value{'s' if bad > 1 else ''}; the weights are "
                        "damaged (or training diverged) — export a checkpoint with finite weights"
                    )


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint directory."""

    path: Path
    config: Mapping[str, Any]  # the raw config file
    model_config: Any  # the family's frozen config value, read from ``config``
    family: FamilySpec
    files: tuple[Path, ...]  # weight files
    shapes: Mapping[str, tuple[int, ...]]
    config_files: tuple[Path, ...] = ()  # the files the config was read from (default: config.json)

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]

    @property
    def bundle_files(self) -> list[Path]:
        """Files copied into a bundle beside the artifact (the model kind decides: a tokenizer, or none)."""
        from . import kinds

        return kinds.behaviour(self.family.kind).bundle_files(self)

    @cached_property
    def sha256(self) -> str:
        configs = list(self.config_files) or [self.path / "config.json"]
        return sha256_files([*configs, *self.files, *self.tokenizer_files], self.path)

    @cached_property
    def tokenizer_config(self) -> dict[str, Any]:
        p = self.path / "tokenizer_config.json"
        return read_json(p, "tokenizer_config.json") if p.is_file() else {}

    @cached_property
    def generation_config(self) -> dict[str, Any]:
        p = self.path / "generation_config.json"
        return read_json(p, "generation_config.json") if p.is_file() else {}

    @property
    def chat_template(self) -> str | None:
        jinja = self.path / "chat_template.jinja"  # transformers 5 writes the template beside tokenizer_config
        return jinja.read_text(encoding="utf-8") if jinja.is_file() else self.tokenizer_config.get("chat_template")


def embedding_rows(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    for key in EMBEDDING_KEYS:
        if key in shapes:
            return shapes[key][0]
    return None


def check_tokenizer(root: Path, rows: int) -> None:
    path = root / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{root}: tokenizer.json is missing (a language model needs its tokenizer)")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable tokenizers file ({exc})") from None
    check_token_ids(path)
    vocab = tok.get_vocab(with_added_tokens=True)
    top = max(vocab.values()) + 1 if vocab else 0
    if top > rows:
        raise CheckpointError(
            f"{path}: tokenizer has ids up to {top - 1} but the embedding has {rows} rows; "
            "the tokenizer does not belong to these weights"
        )


def check_token_ids(path: Path) -> None:
    """Token ids must be one-to-one: an added token whose id is already an ordinary vocabulary entry (or another
    added token) makes llama.cpp abort on load, and tokenizers silently moves it to a new id, so the engines would
    disagree.  Read from the file itself (``added_tokens`` vs ``model.vocab``), as the GGUF vocab writer reads it."""
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    by_id: dict[int, str] = {}
    if isinstance(vocab, dict):
        by_id = {i: t for t, i in vocab.items() if isinstance(i, int)}
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], the id is the position
        by_id = {i: e[0] for i, e in enumerate(vocab) if isinstance(e, list) and e}
    for entry in data.get("added_tokens") or [] if isinstance(data, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise CheckpointError(f"{path}: an added_tokens entry has no integer id ({entry!r})")
        i, text = entry["id"], entry.get("content")
        if i in by_id and by_id[i] != text:
            raise CheckpointError(
                f"{path}: added token {text!r} reuses id {i} of {by_id[i]!r}; token ids must be one-to-one "
                "(llama.cpp aborts on such a vocabulary) — give the added token a new id"
            )
        by_id[i] = text


def open_checkpoint(source: str | Path, allow_extra_tensors: bool = False) -> Checkpoint:
    """Validate and describe a checkpoint directory (or ``builtin:NAME``) without building the model: config,
    tokenizer, and every tensor's name, shape, dtype and values against what the family's config requires
    (``check_weights``).  ``allow_extra_tensors`` accepts unused tensors whose absence provably changes nothing."""
    root = builtin.resolve(source)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a Hugging Face checkpoint directory)")
    if not (root / "config.json").exists():
        readers = [spec for spec in families.FAMILIES.values() if spec.read_checkpoint]
        for spec in readers:
            found = spec.open_directory(root)
            if found is not None:
                return Checkpoint(path=root, family=spec, **found)
        raise CheckpointError(
            f"{root}: no config.json (a Hugging Face checkpoint), and not one of the official checkpoint layouts of "
            f"{', '.join(s.family.value for s in readers)} (e.g. step_N + all_config.yaml naming a supported arch)"
        )
    config = read_json(root / "config.json", "config.json")
    spec = families.detect(config)
    model_config = spec.read_config(config)
    files = weight_files(root)
    headers = tensor_headers(files)
    shapes = {name: h.shape for name, h in headers.items()}
    check_weights(root, model_config, headers, allow_extra_tensors)
    if spec.kind is ModelKind.LANGUAGE:
        rows = embedding_rows(shapes)
        if rows is None:
            raise CheckpointError(f"{root}: no embedding tensor among the weights ({', '.join(EMBEDDING_KEYS)})")
        if rows != int(config["vocab_size"]):
            raise CheckpointError(
                f"{root}: config vocab_size {config['vocab_size']} does not match the embedding's {rows} rows"
            )
        check_tokenizer(root, rows)
    return Checkpoint(
        path=root, config=config, model_config=model_config, family=spec, files=tuple(files), shapes=shapes
    )


def check_weights(root: Path, model_config: Any, headers: Mapping[str, TensorHeader], allow_extra: bool) -> None:
    """The plan-time weight checks of a Hugging Face directory: index vs shards, the family's ``tensor_rules()``
    (names, shapes, dtypes, layer count and types; families without rules get only the generic checks), a tied
    head stored beside the embedding must equal it, and every used float tensor must be finite."""
    check_index(root, headers)
    rules_of = getattr(model_config, "tensor_rules", None)
    if rules_of is None:
        return
    rules = rules_of()
    check_tensors(root, headers, rules, allow_extra, getattr(model_config, "num_hidden_layers", None))
    used = [n for n in rules if n in headers]
    check_finite(headers, used)
    if getattr(model_config, "tie_word_embeddings", False) and "lm_head.weight" in headers:
        check_tied_copy(headers)


def check_tied_copy(headers: Mapping[str, TensorHeader]) -> None:
    """With tied embeddings transformers ignores a stored ``lm_head.weight``: accept it only when it is the
    embedding itself, else the export would compute with another head than the one the user trained."""
    from safetensors import safe_open

    from .errors import require

    torch = require("torch", "export")
    emb_name = next((k for k in EMBEDDING_KEYS if k in headers), None)
    if emb_name is None:
        return
    tensors = []
    for name in (emb_name, "lm_head.weight"):
        with safe_open(str(headers[name].file), framework="pt") as f:
            tensors.append(f.get_tensor(name))
    if tensors[0].shape != tensors[1].shape or not torch.equal(tensors[0].float(), tensors[1].float()):
        raise CheckpointError(
            f"{headers['lm_head.weight'].file}: lm_head.weight differs from {emb_name}, but config.json ties the "
            "embeddings, so it would be ignored; set tie_word_embeddings: false if the head is untied"
        )
