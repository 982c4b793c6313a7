"""ONNX exporter: merged LFM2 -> ``model.onnx`` (+ ``model.onnx.data``) with explicit KV and conv state, plus the
``genai_config.json`` that lets onnxruntime-genai run the same file.

The graph is generated directly on ONNX Runtime's fused CPU kernels (see ``graph``); quantisation uses ONNX
Runtime's own tools (see ``quantize``); after writing, the exporter loads the file with every ONNX Runtime graph
optimisation on and records which kernels the optimised graph runs (``check``), failing if attention, the
short convolution or the quantised matmuls did not end up in fused kernels.  Thresholds were measured on the
built-in trained model with its LoRA merged (tests/test_onnx_parity.py; bench/RESULTS.md, "ONNX").
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ...errors import UnsupportedError
from ...families import Family, lfm2
from ...plan import QuantSpec, Target, Thresholds, WeightKind
from .. import ExporterSpec, ExportJob
from . import check, genai_config, graph, quantize

ARTIFACT = "model.onnx"
DATA = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"

QUANTS: dict[str, QuantSpec] = {
    q.name: q
    for q in (
        QuantSpec("fp32", WeightKind.FLOAT, 32, description="float32, lossless"),
        QuantSpec("fp16", WeightKind.FLOAT, 16, description="float16 weights, activations and state; float32 logits"),
        QuantSpec(
            "int8", WeightKind.INT, 8, 32, activation_bits=8, method="round-to-nearest, symmetric",
            description="8-bit block-wise weights (MatMulNBits, block 32), int8 dynamic activations per block "
            "(accuracy level 4); tied embedding / LM head at 8 bits",
        ),
        QuantSpec(
            "int4", WeightKind.INT, 4, 32, activation_bits=8, method="round-to-nearest, symmetric",
            description="4-bit block-wise weights (MatMulNBits, block 32 by default), int8 activations per block "
            "(accuracy level 4); tied embedding / LM head at 4 bits (head_bits=8 for 8)",
        ),
    )
}

# Measured on builtin:lfm2-tiny + builtin:lfm2-tiny-lora, 2048 held-out tokens (top-1 / mean KL / max |Δlogit|):
# fp32 1.0000 / 2e-12 / 2.0e-5; fp16 1.0000 / 6.4e-7 / 1.3e-2; int8 0.982 / 3.4e-4; int4 0.860 / 2.8e-2
# (head_bits=8: 0.893 / 1.6e-2; block_size=128: 0.842, below the bar).  The bars: fp32 >= 0.999 top-1
# and max |Δlogit| <= 1e-3, int8 >= 0.95, int4 >= 0.85.
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_top1=0.999, max_mean_kl=1e-6, max_abs_logit=1e-3, min_greedy_prefix=32),
    "fp16": Thresholds(min_top1=0.99, max_mean_kl=1e-4, max_abs_logit=0.1, min_greedy_prefix=16),
    "int8": Thresholds(min_top1=0.95, max_mean_kl=2e-3),
    "int4": Thresholds(min_top1=0.85, max_mean_kl=4e-2),
}

OPTIONS = {
    "block_size": "int8/int4: weights per scale in MatMulNBits (16, 32, 64, 128, 256; default 32)",
    "accuracy_level": "int8/int4: MatMulNBits compute type (0 = default, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
    "activations; default 4)",
    "head_bits": "int4: bits of the tied embedding / LM head (4 or 8; default 4)",
}


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    plan = job.plan
    if plan.family is not Family.LFM2:
        raise UnsupportedError(f"ONNX export of {plan.family.value} is not implemented; supported: lfm2")
    q = quantize.native(plan.quant.name, plan.options)
    meta = lfm2.describe(job.checkpoint.config)
    shape = lfm2.Lfm2Shape.from_config(job.checkpoint.config)
    t0 = time.perf_counter()
    job.progress("building the ONNX graph (float32)")
    model = graph.build(job.weights, shape)
    if q.name != "fp32":
        job.progress(f"quantising to {q.name} with onnxruntime's tools")
        model = quantize.apply(model, q)
    job.progress(f"writing {ARTIFACT}")
    _save(model, out_dir)
    del model
    (out_dir / GENAI_CONFIG).write_text(
        json.dumps(genai_config.build(shape, meta, ARTIFACT), indent=4) + "\n", encoding="utf-8"
    )
    job.progress("checking the graph ONNX Runtime optimises it into (fused kernels)")
    report = check.optimized_graph(out_dir / ARTIFACT, shape, q.name)
    return {
        "artifact": ARTIFACT,
        "external_data": DATA,
        "genai_config": GENAI_CONFIG,
        "quant": q.to_dict(),
        "signature": check.signature(out_dir / ARTIFACT),
        "tensor_types": check.tensor_types(out_dir / ARTIFACT),
        "state": {
            "layer_types": list(shape.layer_types),
            "conv_cache": shape.conv_cache,
            "kv_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "hidden_size": shape.hidden,
        },
        "logits_to_keep": {"input": graph.LOGITS_TO_KEEP, "default": 1, "all": 0},
        "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL"},
        "optimized_ops": report,
        "libraries": _versions(),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("onnx", "onnxruntime", "onnxruntime-genai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _save(model: Any, out_dir: Path) -> None:
    import onnx

    # weights go to one external file: protobuf cannot hold a model file over 2 GB (LFM2-1.2B in float32), and
    # the graph file stays small enough to inspect without reading the weights; small constants stay inline
    # because ONNX shape inference reads them
    onnx.save(model, out_dir / ARTIFACT, save_as_external_data=True, all_tensors_to_one_file=True, location=DATA)


EXPORTER = ExporterSpec(
    target=Target.ONNX,
    engine="onnxruntime",
    artifact=ARTIFACT,
    families=frozenset({Family.LFM2}),
    quants=QUANTS,
    default_quant="fp32",
    thresholds=THRESHOLDS,
    export=export,
    options=OPTIONS,
    check_options=quantize.native,
)
