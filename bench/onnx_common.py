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
            "artifact": dec["filename"],
            "signature": check.signature(out_dir / dec["filename"]),
            "state": {
                "layer_types": dec["layer_types"],
                "conv_cache": dec["conv_cache_size"],
                "kv_heads": dec["num_key_value_heads"],
                "head_dim": dec["head_size"],
                "hidden_size": dec["hidden_size"],
            },
            "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL"},
        },
    }


def open_builder(out_dir: Path, **options: Any) -> OnnxSession:
    return OnnxSession(Path(out_dir), builder_manifest(Path(out_dir)), **options)
