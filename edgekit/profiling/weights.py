"""Bytes a decode step reads: the denominator of the roofline (tokens/s <= bandwidth / bytes per token).

Every weight is read once per decoded token, except a token-embedding table that is *not* also the output
projection: of that table only one row is read.  For GGUF the tensor layout is read from the file header (a
small reader here, so the device needs no ``gguf`` package); other formats count their weight files whole,
which slightly overstates the bytes when an untied embedding is stored.  The KV cache adds what the attention
layers read at the current context length.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO, Mapping

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types -> struct format of a scalar (8 = string, 9 = array handled separately)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "Q")).decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        etype, n = _read(f, "I"), _read(f, "Q")
        if etype in _SCALARS:
            f.seek(struct.calcsize("<" + _SCALARS[etype]) * n, 1)
        else:
            for _ in range(n):
                _skip_value(f, etype)
        return None
    raise ValueError(f"unknown GGUF value type {vtype}")


def gguf_tensor_bytes(path: Path) -> dict[str, int]:
    """Tensor name -> bytes stored, from the header's offsets (sizes are the gaps between data offsets)."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        _read(f, "I")  # version: the layout read here is the same in versions 2 and 3
        n_tensors, n_kv = _read(f, "Q"), _read(f, "Q")
        alignment = 32
        for _ in range(n_kv):
            key, vtype = _string(f), _read(f, "I")
            value = _skip_value(f, vtype)
            if key == "general.alignment" and isinstance(value, int):
                alignment = value
        offsets = []
        for _ in range(n_tensors):
            name = _string(f)
            n_dims = _read(f, "I")
            f.seek(8 * n_dims + 4, 1)  # dims, ggml type
            offsets.append((_read(f, "Q"), name))
        data_start = -(-f.tell() // alignment) * alignment
        end = path.stat().st_size
    offsets.sort()
    sizes = {}
    for i, (off, name) in enumerate(offsets):
        nxt = offsets[i + 1][0] if i + 1 < len(offsets) else end - data_start
        sizes[name] = nxt - off
    return sizes


def weight_bytes(root: Path, manifest: Mapping[str, Any]) -> int:
    """Bytes of weights read per decoded token (see the module docstring)."""
    artifact = manifest.get("artifact", {}).get("file")
    if manifest.get("format") == "gguf" and artifact:
        sizes = gguf_tensor_bytes(Path(root) / artifact)
        total = sum(sizes.values())
        if "output.weight" in sizes and "token_embd.weight" in sizes:  # untied: one embedding row per token
            rows = int(manifest.get("model", {}).get("vocab_size") or 1)
            total -= sizes["token_embd.weight"] - sizes["token_embd.weight"] // max(rows, 1)
        return total
    tokenizer_like = ("tokenizer", "vocab", "merges", "special_tokens", "chat_template", "golden", "config")
    return sum(
        int(e["size"])
        for name, e in manifest.get("files", {}).items()
        if not any(t in name.lower() for t in tokenizer_like) and not name.endswith((".json", ".txt", ".jinja"))
    )


def kv_bytes_per_position(manifest: Mapping[str, Any]) -> int:
    """Bytes of K and V one context position holds across all attention layers (0 if unknown): the model kind
    records the values per position; the engine table, the bytes per value of the engine's cache."""
    from ..runtimes.engines import ENGINES, Engine

    try:
        values = int(manifest.get("model", {}).get("kv_values_per_position") or 0)
        elem = ENGINES[Engine(manifest.get("engine"))].kv_bytes
    except (TypeError, ValueError):
        return 0
    if manifest.get("plan", {}).get("quant", {}).get("name") == "f32":
        elem = 4  # edgekit runs F32 GGUF bundles with an F32 KV cache
    return values * elem


def decode_bytes(weights: int, manifest: Mapping[str, Any], depth: int, n: int) -> int:
    """Average bytes per decoded token over a decode of ``n`` tokens starting at context ``depth``."""
    return weights + kv_bytes_per_position(manifest) * (depth + n // 2)
