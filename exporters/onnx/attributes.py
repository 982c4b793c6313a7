"""The attributes of the fused kernels an exporter writes, from the checkpoint's config, and their read-back check.

A kernel attribute changes what the engine computes without touching a weight: GroupQueryAttention's ``scale``,
``local_window_size`` (a window ≥ 512 tokens is invisible to the 512-token verification windows), head counts and
``rotary_interleaved``; a norm's ``epsilon``.  A sensitive model's widened fidelity bar can hide a small change
(a new-user trial: GQA ``scale`` +36 % and a q-norm epsilon x1000 passed int4 fidelity), so the tensor check
compares every attribute of these kernels in the file with the values the exporter writes for the checkpoint
(``check``), like the GGUF metadata check; and the bundle's ``genai_config.json`` with the one the exporter
writes (``edgekit.exporters.sidecars.check_json``).

The exporters build their nodes from the same ``NodeRule`` values (one source for what is written and what is
checked).  Attribute names and meanings: ONNX Runtime's docs/ContribOperators.md (com.microsoft domain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping



@dataclass(frozen=True)
class NodeRule:
    """Every node of ``op_type`` carries exactly ``attrs`` (name -> int, float or str); ``count``: how many such
    nodes the graph holds (None: any number)."""

    op_type: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    count: int | None = None


def gqa(num_heads: int, kv_num_heads: int, head_dim: int, count: int) -> NodeRule:
    """GroupQueryAttention as a Hugging Face decoder computes attention: softmax scale 1 / sqrt(head_dim)
    (``scaled_dot_product_attention``'s default), rotary embedding applied inside the kernel on the half-split
    layout (``rotate_half``: ``rotary_interleaved`` 0), no sliding window (``local_window_size`` -1)."""
    return NodeRule("GroupQueryAttention", {
        "num_heads": int(num_heads), "kv_num_heads": int(kv_num_heads), "scale": 1.0 / math.sqrt(head_dim),
        "do_rotary": 1, "rotary_interleaved": 0, "local_window_size": -1,
    }, count)


def rms_norms(eps: float) -> tuple[NodeRule, NodeRule]:
    """RMSNorm as ``SimplifiedLayerNormalization`` (last axis, float32 statistics: ``stash_type`` 1) and as
    ``SkipSimplifiedLayerNormalization`` (the residual add fused), both with the checkpoint's epsilon."""
    return (NodeRule("SimplifiedLayerNormalization", {"axis": -1, "epsilon": float(eps), "stash_type": 1}),
            NodeRule("SkipSimplifiedLayerNormalization", {"epsilon": float(eps)}))


def _stored(value: Any) -> Any:
    """``value`` as an ONNX attribute stores it (a float as float32, a str as bytes decoded)."""
    import numpy as np

    if isinstance(value, float):
        return float(np.float32(value))
    return value


def check(path: Path, rules: Mapping[str, NodeRule], what: str) -> list[str]:
    """The nodes of the ONNX file at ``path`` against ``rules`` (op_type -> rule); ``what`` names the checkpoint
    values the rules come from.  One failure line per node with a missing, extra or different attribute (naming
    node, attribute, file value and expected value), and per op_type whose node count differs."""
    from onnx import helper

    from . import readback

    model = readback.load(path)
    fails: list[str] = []
    seen = {op: 0 for op in rules}
    for node in model.graph.node:
        rule = rules.get(node.op_type)
        if rule is None:
            continue
        seen[node.op_type] += 1
        got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        got = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in got.items()}
        for name in sorted(set(got) | set(rule.attrs)):
            if name not in rule.attrs:
                fails.append(f"tensor check: {node.op_type} {node.name!r} has attribute {name}={got[name]!r}, which "
                             f"the exporter does not write ({what})")
            elif name not in got:
                fails.append(f"tensor check: {node.op_type} {node.name!r} lacks attribute {name} (expected "
                             f"{rule.attrs[name]!r} from {what})")
            elif _stored(got[name]) != _stored(rule.attrs[name]):
                fails.append(f"tensor check: {node.op_type} {node.name!r} attribute {name} is {got[name]!r} in the "
                             f"file, expected {_stored(rule.attrs[name])!r} from {what}")
    for op, rule in rules.items():
        if rule.count is not None and seen[op] != rule.count:
            fails.append(f"tensor check: the graph has {seen[op]} {op} node(s), expected {rule.count} from {what}")
    return fails
