"""Helpers for writing ONNX graphs op by op (no tracing), and for saving them with external data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 21
MS_DOMAIN = "com.microsoft"


class GraphBuilder:
    """Accumulates nodes and initializers; every intermediate gets a unique, readable name."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._consts: dict[str, str] = {}

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", **attrs: Any) -> list[str]:
        outs = outputs or [f"{name}/out{k}" for k in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def i64(self, values: list[int]) -> str:
        key = "const/i64/" + "_".join(str(v) for v in values)
        if key not in self._consts:
            self._consts[key] = self.init(key, np.array(values, dtype=np.int64))
        return self._consts[key]

    def model(self, name: str, inputs: list[Any], outputs: list[Any]) -> Any:
        """The ModelProto (opset ``OPSET`` + com.microsoft 1, IR 10: readable by onnxruntime >= 1.16)."""
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="edgekit",
        )
        model.ir_version = 10
        return model


def save(model: Any, out_dir: Path) -> None:
    """``model.onnx`` with every weight in one external file ``model.onnx.data``: protobuf cannot hold a model file
    over 2 GB (a 1.2B-parameter model in float32), and the graph file stays small enough to inspect without reading weights."""
    import onnx

    from . import ARTIFACT, DATA

    onnx.save(model, out_dir / ARTIFACT, save_as_external_data=True, all_tensors_to_one_file=True, location=DATA)


def versions() -> dict[str, str]:
    from ...versions import versions as installed

    return installed("onnx", "onnxruntime", "onnxruntime-genai")
