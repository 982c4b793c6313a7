"""Shared pieces of the ONNX benchmarks: open an onnxruntime-genai builder output with edgekit's wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.exporters.onnx import check
from edgekit.runtimes.onnxruntime import OnnxSession


def builder_manifest(out_dir: Path) -> dict[str, Any]:
    """A manifest for a builder output directory, so that OnnxSession (and verify.run) can open it."""
    cfg = json.loads((out_dir / "genai_config.json").read_text())["model"]
    dec = cfg["decoder"]
    eos = cfg["eos_token_id"]
    return {
        "format": "onnx",
        "engine": "onnxruntime",
        "model": {
            "context_length": cfg["context_length"],
            "vocab_size": cfg["vocab_size"],
            "bos_id": cfg.get("bos_token_id"),
            "eos_ids": eos if isinstance(eos, list) else [eos],
            "add_bos": True,
        },
        "artifact": {
            "file": dec["filename"],
            "signature": check.signature(out_dir / dec["filename"]),
            "state": _state(dec),
            "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL"},
        },
    }


def _state(dec: dict[str, Any]) -> dict[str, Any]:
    """The runtime's state description for the builder's inputs (same names and layouts as edgekit's LFM2)."""
    out: dict[str, Any] = {}
    for i, kind in enumerate(dec["layer_types"]):
        if kind == "full_attention":
            for kv in ("key", "value"):
                shape = [1, dec["num_key_value_heads"], "context", dec["head_size"]]
                out[f"past_key_values.{i}.{kv}"] = {"present": f"present.{i}.{kv}", "shape": shape, "update": "in_place"}
        else:
            shape = [1, dec["hidden_size"], dec["conv_cache_size"]]
            out[f"past.{i}.conv"] = {"present": f"present.{i}.conv", "shape": shape, "update": "swap"}
    return out


def open_builder(out_dir: Path, **options: Any) -> OnnxSession:
    return OnnxSession(Path(out_dir), builder_manifest(Path(out_dir)), **options)
