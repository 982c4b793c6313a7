"""TRM -> ONNX: one supervision step as a graph (state in, state out, logits and halting logits).

    z_H, z_L float32 [batch, T, hidden], inputs int64 [batch, seq_len], puzzle_identifiers int64 [batch]
      -> z_H_next, z_L_next [batch, T, hidden], logits [batch, seq_len, vocab], q_halt_logits, q_continue_logits [batch]

The graph is traced from the PyTorch reference with torch.onnx's TorchScript exporter (the step has no
data-dependent control flow; the cycle counts are constants), with a dynamic batch — the dynamo exporter gives the
same graph (max |Δ| 2e-6 both) but took 95 s against 7 s on the fixture model here; int8/int4 put every weight
matmul into ONNX Runtime's MatMulNBits.  The reset carry ships as ``carry_init.npz``; the session
(``runtimes.solver``) runs the ACT loop.  HRM shares this file (``hrm.py``): the same step with an H network.
"""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path
from typing import Any

from ...families.trm import step
from .. import ExportJob
from . import ARTIFACT, DATA, builder, check, quantize

INPUTS = ["z_H", "z_L", "inputs", "puzzle_identifiers"]
OUTPUTS = ["z_H_next", "z_L_next", "logits", "q_halt_logits", "q_continue_logits"]
OPSET = 18


def trace(model: Any, length: int) -> Any:
    """The float32 ModelProto of one step of ``model`` for puzzles of ``length`` tokens."""
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, step.example_inputs(model, length), buf, dynamo=False, input_names=INPUTS, output_names=OUTPUTS,
            dynamic_axes={name: {0: "batch"} for name in INPUTS + OUTPUTS}, opset_version=OPSET,
        )
    return onnx.load_from_string(buf.getvalue())


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    length = step.seq_len(job.config, job.plan.options.seq_len)
    q = quantize.native(job.plan.quant, job.plan.options)
    t0 = time.perf_counter()
    job.progress(f"tracing one supervision step (seq_len {length}) with torch.onnx")
    model = trace(job.reference, length)
    if q.name != "fp32":
        job.progress(f"quantising to {q.name} with onnxruntime's tools")
        model = quantize.apply(model, q)
    builder.save(model, out_dir)
    del model
    carry = step.write_carry(job.reference, out_dir)
    job.progress("checking the graph ONNX Runtime optimises it into")
    ops = check.optimized_graph(out_dir / ARTIFACT, {}, q.name)
    return {
        "file": ARTIFACT,
        "external_data": DATA,
        "carry": carry,
        "seq_len": length,
        "quant": q.to_dict(),
        "signature": check.signature(out_dir / ARTIFACT),
        "tensor_types": check.tensor_types(out_dir / ARTIFACT),
        "optimized_ops": ops,
        "libraries": builder.versions(),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
