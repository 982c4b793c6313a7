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
    proto = onnx.load_from_string(buf.getvalue())
    name_weights(proto, model)
    return proto


def name_weights(proto: Any, model: Any) -> None:
    """Give the traced graph's anonymous weight initializers (``onnx::MatMul_N``: the exporter's transposed copies
    of the ``nn.Linear`` weights, [in, out]) the reference's parameter names (``<module>.weight``), so that the
    tensor check reads each back under its own name (``file_weights``).  Matched by exact value (a transposition
    is exact); an initializer equal to no Linear weight, or to several, keeps its name (and the check then
    reports the weight as missing rather than guessing)."""
    import numpy as np
    import torch
    from onnx import numpy_helper

    linears = {f"{n}.weight": m.weight.detach().float().numpy() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    rename: dict[str, str] = {}
    for init in proto.graph.initializer:
        if not init.name.startswith("onnx::") or len(init.dims) != 2:
            continue
        arr = numpy_helper.to_array(init).T
        hits = [n for n, w in linears.items() if w.shape == arr.shape and np.array_equal(w, arr)]
        if len(hits) == 1 and hits[0] not in rename.values():
            rename[init.name] = hits[0]
    for init in proto.graph.initializer:
        init.name = rename.get(init.name, init.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]


def file_weights(root: Path, manifest: Any, weights: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The bundle's weights under the reference's names (``edgekit.tensorcheck``): every matmul weight (float
    ``MatMul`` or ``MatMulNBits`` blocks, read once however many unrolled cycles use it, with MatMulNBits' int8
    activation blocks at accuracy level 4), the other float initializers that are reference weights (embeddings,
    the halting head), and the reset carry (``carry_init.npz``).  A matmul weight under no reference name is
    reported as foreign; constants that are not weights (RoPE tables) are skipped."""
    import numpy as np

    from ...errors import BundleError
    from ...tensorcheck import ReadTensor
    from . import readback

    out: list[ReadTensor] = []
    for w in readback.read(root / manifest["artifact"]["file"]):
        if w.name in weights:
            mods = (w.name.removesuffix(".weight"),) if w.matmul else ()
            out.append(ReadTensor(w.name, w.name, w.values, w.qtype, w.block, w.levels, None, mods, w.act))
        elif w.matmul:
            out.append(ReadTensor(w.name, f"<unknown:{w.name}>", w.values, w.qtype, w.block, w.levels))
    carry = root / manifest["artifact"]["carry"]
    try:
        data = np.load(carry, allow_pickle=False)
        out += [ReadTensor(f"{carry.name}:{k}", k, np.asarray(data[k], dtype=np.float32), "F32") for k in data.files]
    except (OSError, ValueError) as exc:
        raise BundleError(f"{carry}: not a readable reset carry ({exc}); re-export the bundle") from None
    return out, {}


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
