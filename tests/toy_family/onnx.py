"""The toy family -> ONNX: Gather, MatMul, Relu, MatMul; inputs named as the ONNX runtime expects
(``input_ids``, ``attention_mask``), no state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.exporters import ExportJob
from edgekit.exporters.onnx import ARTIFACT, builder, check


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    from onnx import TensorProto, helper

    w = job.weights
    b = builder.GraphBuilder()
    h = b.op("Gather", [b.init("embed", w["model.embed_tokens.weight"]), "input_ids"], "embed/Gather")[0]
    h = b.op("MatMul", [h, b.init("up", w["up.weight"].T)], "up/MatMul")[0]
    h = b.op("Relu", [h], "up/Relu")[0]
    b.op("MatMul", [h, b.init("down", w["down.weight"].T)], "down/MatMul", outputs=["logits"])
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),  # unused
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", job.config.vocab_size])]
    builder.save(b.model("toymlp", inputs, outputs), out_dir)
    return {"file": ARTIFACT, "signature": check.signature(out_dir / ARTIFACT), "state": {}}
