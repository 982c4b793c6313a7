"""Reading a Hugging Face checkpoint directory: config, (sharded) safetensors, tokenizer and generation config.

Everything here is validated up front, before any heavy work, so that a bad checkpoint fails in seconds with
a message that names the file and what is wrong with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

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
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="np") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as exc:  # SafetensorError is not importable as a stable type across versions
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); re-save or re-download it") from None
    return shapes


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
    vocab = tok.get_vocab(with_added_tokens=True)
    top = max(vocab.values()) + 1 if vocab else 0
    if top > rows:
        raise CheckpointError(
            f"{path}: tokenizer has ids up to {top - 1} but the embedding has {rows} rows; "
            "the tokenizer does not belong to these weights"
        )


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Validate and describe a checkpoint directory (or ``builtin:NAME``) without loading its weights."""
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
    shapes = tensor_shapes(files)
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
