"""Export-time checks of the written file: its I/O signature, and the kernels ONNX Runtime's optimiser turns it into.

A graph that ONNX Runtime cannot map onto its fused CPU kernels still runs, only several times slower; the
export fails instead of shipping such a file.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

from typing import Mapping

from ...errors import InternalError

# the kernel every weight matmul must end up in, per quant (a plain MatMul on a weight is a silent fallback)
QUANT_KERNELS = {
    "int8": ("MatMulNBits",),
    "int4": ("MatMulNBits",),
    "int2": ("MatMulNBits",),
}


def signature(path: Path) -> dict[str, Any]:
    """Graph inputs and outputs (name -> [dtype, dims]) as ONNX Runtime sees them; the runtime compares with it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}

    def entry(v: Any) -> list[Any]:
        t = v.type.tensor_type
        return [onnx.TensorProto.DataType.Name(t.elem_type).lower(), [d.dim_param or d.dim_value for d in t.shape.dim]]

    return {
        "inputs": {v.name: entry(v) for v in model.graph.input if v.name not in init},
        "optional_inputs": {v.name: entry(v) for v in model.graph.input if v.name in init},
        "outputs": {v.name: entry(v) for v in model.graph.output},
    }


def tensor_types(path: Path) -> dict[str, int]:
    """Histogram of the initializer element types stored in the file (``uint8`` = packed 4/8-bit blocks)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)
    return dict(sorted(names.items()))


def optimized_graph(path: Path, required: Mapping[str, int], quant: str) -> dict[str, int]:
    """Op-type counts of the graph ONNX Runtime runs after ORT_ENABLE_ALL.  ``required`` (op type -> minimum
    count) comes from the family file; raises InternalError if a required kernel is missing, or if a weight
    matmul of a quantised export did not end up in a quantised kernel."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        model = onnx.load(str(Path(tmp) / "opt.onnx"), load_external_data=False)
        init = {t.name for t in model.graph.initializer}
        counts = collections.Counter(n.op_type for n in model.graph.node)
        # a MatMul whose second input is a weight (not an activation) that no quantised kernel took over
        float_matmuls = [
            n.name for n in model.graph.node if n.op_type in ("MatMul", "FusedMatMul") and n.input[1] in init
        ]
    missing = [f"{op} (expected {n}, found {counts.get(op, 0)})" for op, n in required.items() if counts.get(op, 0) < n]
    if quant in QUANT_KERNELS:
        if not any(counts.get(op, 0) for op in QUANT_KERNELS[quant]):
            missing.append(f"any of {', '.join(QUANT_KERNELS[quant])}")
        if float_matmuls:
            missing.append(f"quantised kernels for {', '.join(float_matmuls[:4])}")
    if missing:
        raise InternalError(
            f"{path}: ONNX Runtime did not map the graph onto its fused CPU kernels: missing {'; '.join(missing)}"
        )
    return dict(sorted(counts.items()))
