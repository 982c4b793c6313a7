"""The structure check of an ONNX export: the file's graph against the graph the exporter builds for the checkpoint.

Fidelity measures what the graph computes on the verification windows; it cannot see a change that only acts on
tokens or positions those windows never reach.  A new-user trial passed ``edgekit verify`` with a token remapped
in front of the embedding (the token never occurs in the held-out text), with GroupQueryAttention reading RoPE
tables re-sliced from position 600 on (the tables themselves intact), and with an RMSNorm swapped for a LayerNorm
on a model whose widened bar hid it.  So the check rebuilds the float graph from the checkpoint's config and
weights (without serialising the large initializers: ``SkeletonBuilder``) and compares, node by node: the same
nodes (by name), the same op type, the same inputs, the small constants (shapes, split sizes, ``logits_to_keep``)
equal, and no node the exporter does not write.

What the exporter's post-processing changes is allowed, as measured on onnxruntime 1.32's tools: the
MatMulNBits quantiser turns ``MatMul`` X into ``MatMulNBits`` ``X_Q{bits}`` (same activation input, same output),
the tied embedding's ``Transpose`` into a ``Reshape`` and its ``Gather`` into ``GatherBlockQuantized`` (same
indices); the float16 converter adds ``graph_output_cast*`` / ``graph_input_cast*`` Casts at the graph boundary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .builder import GraphBuilder

# failure lines reported at most (then a count)
MAX_LINES = 10
# initializers up to this many elements are compared by value (shape and split constants, scalars)
SMALL = 64
# op type in the float graph -> (what the quantiser may turn it into, the inputs it keeps: the activation, a
# Gather's indices; the tied table's Transpose reads only the weight, which the tensor check reads back; whether
# it keeps the outputs: the Transpose's Reshape writes the packed table, read only as GatherBlockQuantized's data)
QUANTISED = {"MatMul": ("MatMulNBits", slice(0, 1), True), "Gather": ("GatherBlockQuantized", slice(1, 2), True),
             "Transpose": ("Reshape", slice(0, 0), False)}
# inputs a quantised replacement may have (onnxruntime's quantisers write A, B, scales and, asymmetric, zero points;
# GatherBlockQuantized data, indices, scales, zero points; Reshape data, shape): the read-back dequantises exactly
# these, so a further one (MatMulNBits' g_idx or bias, which onnxruntime applies) would be read by nothing (a
# new-user trial: a bias of +2 on the EOS logit passed verification under the widened KL bar)
MAX_INPUTS = {"MatMulNBits": 4, "GatherBlockQuantized": 4, "Reshape": 2}
_QUANT_SUFFIX = re.compile(r"_Q\d+$")
_BOUNDARY_CAST = re.compile(r"^graph_(output|input)_cast\d+$")


class SkeletonBuilder(GraphBuilder):
    """A ``GraphBuilder`` that keeps only small initializers (the weights are the tensor check's)."""

    def init(self, name: str, array: np.ndarray) -> str:
        return super().init(name, array) if np.size(array) <= SMALL else name


def _float_name(node: Any) -> str:
    """The float graph's name of a file node (the quantiser's renames undone)."""
    if node.op_type == "MatMulNBits":
        return _QUANT_SUFFIX.sub("", node.name)
    if node.name == "embed/Reshape" and node.op_type == "Reshape":
        return "embed/Transpose"
    return node.name


# a separate-LoRA branch (``adapters.add_branches``): lora/<key>/{A,scale,B,Add}, the Add writing the projection's
# output name and reading the projection's output renamed <name>/base
_LORA_NODE = {"A": "MatMul", "scale": "Mul", "B": "MatMul", "Add": "Add"}


def _renames(model: Any, lora_branches: bool) -> tuple[dict[str, str], set[str], list[str]]:
    """(file value name -> the float graph's name, the nodes the exporter's post-processing adds, failure lines).

    A boundary Cast of the float16 converter is allowed only at the boundary: ``graph_output_cast*`` writing a
    graph output (its producer's output renamed), ``graph_input_cast*`` reading a graph input (its consumers
    read the cast).  A Cast by that name anywhere else is refused (a new-user trial passed ``edgekit verify``
    with int64 -> float16 -> int64 Casts inside the mask arithmetic: exact below 2048 positions, wrong beyond)."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    added: set[str] = set()
    fails: list[str] = []
    branches: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type == "Cast" and _BOUNDARY_CAST.match(node.name):
            one = len(node.input) == 1 and len(node.output) == 1
            if one and node.name.startswith("graph_output") and node.output[0] in outputs:
                rename[node.input[0]] = node.output[0]
            elif one and node.name.startswith("graph_input") and node.input[0] in inputs:
                rename[node.output[0]] = node.input[0]
            else:
                fails.append(f"structure: Cast {node.name!r} ({list(node.input)} -> {list(node.output)}) is not at "
                             "the graph's boundary, where the float16 converter puts its Casts")
                continue
            added.add(node.name)
        elif lora_branches and node.name.startswith("lora/"):
            prefix, _, part = node.name.rpartition("/")
            branches.setdefault(prefix, {})[part] = node
            added.add(node.name)
    producers = {out: node for node in model.graph.node for out in node.output}
    for prefix, parts in branches.items():
        fail = _lora_branch_failure(prefix, parts, producers)
        if fail:
            fails.append(fail)
        else:
            add = parts["Add"]
            rename[add.input[0]] = add.output[0]
    return rename, added, fails


def _lora_branch_failure(prefix: str, parts: dict[str, Any], producers: Mapping[str, Any]) -> str | None:
    """The one LoRA branch ``prefix`` (``lora/<key>``) against what ``adapters.add_branches`` writes:
    A: MatMul(x, lora.<key>.A), scale: Mul(., lora_scale), B: MatMul(., lora.<key>.B), Add(<out>/base, .) -> <out>,
    ``x`` the input of the projection writing <out>/base.  A fifth trial dropped every scale Mul (the adapter then
    ignores its run-time scale) and passed."""
    from .adapters import SCALE

    key = prefix.removeprefix("lora/")
    if set(parts) != set(_LORA_NODE) or any(parts[k].op_type != op for k, op in _LORA_NODE.items()):
        found = {k: n.op_type for k, n in parts.items()}
        return f"structure: LoRA branch {prefix!r} has nodes {found}, the exporter writes {_LORA_NODE}"
    add = parts["Add"]
    target = add.output[0] if len(add.output) == 1 else ""
    base = producers.get(f"{target}/base")
    want = {
        "A": ([base.input[0] if base is not None and base.input else "?", f"lora.{key}.A"], [f"{prefix}/xa"]),
        "scale": ([f"{prefix}/xa", SCALE], [f"{prefix}/xas"]),
        "B": ([f"{prefix}/xas", f"lora.{key}.B"], [f"{prefix}/xab"]),
        "Add": ([f"{target}/base", f"{prefix}/xab"], [target]),
    }
    for part, (inputs, outputs) in want.items():
        node = parts[part]
        if list(node.input) != inputs or list(node.output) != outputs:
            return (f"structure: LoRA branch node {node.name!r} reads {list(node.input)} and writes "
                    f"{list(node.output)}, the exporter wires {inputs} -> {outputs}")
    return None


def separate(manifest: Any) -> bool:
    """Whether the bundle keeps its adapters as LoRA branches of the graph (``--lora-mode separate``)."""
    return (manifest["plan"].get("options") or {}).get("lora_mode") == "separate"


def check(path: Path, expected: Any, what: str, lora_branches: bool = False) -> list[str]:
    """The ONNX file at ``path`` against ``expected`` (the ModelProto a ``SkeletonBuilder`` made for the checkpoint);
    ``lora_branches``: the bundle is ``--lora-mode separate``, whose ``lora/...`` branch nodes
    (``adapters.add_branches``) are allowed.  One failure line per missing, extra, retyped or rewired node (inputs
    and outputs, after undoing the renames of the exporter's post-processing: ``_renames``) and per differing small
    constant (the first ``MAX_LINES``, then a count)."""
    from onnx import numpy_helper

    from . import readback

    model = readback.load(path)
    want = {n.name: n for n in expected.graph.node}
    rename, added, fails = _renames(model, lora_branches)
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name in added:
            continue
        name = _float_name(node)
        ref = want.get(name)
        if ref is None:
            fails.append(f"structure: node {node.name!r} ({node.op_type}) is not one the exporter writes for {what}")
            continue
        seen.add(name)
        quantised, kept, same_outputs = QUANTISED.get(ref.op_type, (None, slice(None), True))
        if node.op_type != ref.op_type and node.op_type != quantised:
            fails.append(f"structure: node {node.name!r} is {node.op_type}, the exporter writes {ref.op_type}")
            continue
        # every input of a node as written; of a node the quantiser replaced, the inputs it keeps
        keep = slice(None) if node.op_type == ref.op_type else kept
        got, exp = [rename.get(x, x) for x in node.input[keep]], list(ref.input[keep])
        if got != exp:
            fails.append(f"structure: node {node.name!r} ({node.op_type}) reads {got}, the exporter wires {exp}")
        extra = [x for x in node.input[MAX_INPUTS.get(node.op_type, len(node.input)):] if x]
        if node.op_type != ref.op_type and extra:
            fails.append(f"structure: node {node.name!r} ({node.op_type}) has inputs {extra} that the exporter does "
                         f"not write (at most {MAX_INPUTS[node.op_type]})")
        got, exp = [rename.get(x, x) for x in node.output], list(ref.output)
        if got != exp and (node.op_type == ref.op_type or same_outputs):
            fails.append(f"structure: node {node.name!r} ({node.op_type}) writes {got}, the exporter writes {exp}")
    for name in want.keys() - seen:
        fails.append(f"structure: the graph lacks node {name!r} ({want[name].op_type}) that the exporter writes for "
                     f"{what}")
    inits = {t.name: t for t in model.graph.initializer}
    for t in expected.graph.initializer:
        f = inits.get(t.name)
        if f is None:
            fails.append(f"structure: the graph lacks the constant {t.name!r}")
        elif not np.array_equal(numpy_helper.to_array(f), numpy_helper.to_array(t)):
            fails.append(f"structure: constant {t.name!r} is {numpy_helper.to_array(f).tolist()}, the exporter writes "
                         f"{numpy_helper.to_array(t).tolist()}")
    return fails[:MAX_LINES] + ([f"structure: ... and {len(fails) - MAX_LINES} more"] if len(fails) > MAX_LINES else [])
