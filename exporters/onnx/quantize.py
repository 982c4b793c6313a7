"""QuantSpec -> ONNX Runtime's own quantisation tools, in one function (``apply``).

- fp16: ``onnxruntime.transformers.float16`` converts the whole graph (weights, activations and state) to
  float16; logits stay float32 so sampling and verification see full-precision scores.
- int8 and int4: ``MatMulNBitsQuantizer``: symmetric block-wise 8- or 4-bit weights in ``MatMulNBits``;
  ``accuracy_level`` 4 lets the CPU kernel quantise activations to int8 per block at run time (dynamic int8
  activations, the fast path on x86 and Arm).  The tied embedding reads the LM head's quantised blocks through
  ``GatherBlockQuantized``, so the vocabulary matrix is stored once: at 8 bits for int8, and for int4 at
  ``head_bits`` (4 as onnxruntime-genai's builder does, or 8 for a more accurate head).

A mixed-precision assignment (``types``: weight -> bits, block size) runs the quantiser once per (bits, block
size), each run excluding every other float MatMul; the tied embedding's ``GatherBlockQuantized`` takes the head
node's bits and block size, whatever they are.

int8 is block-wise rather than ``quantize_dynamic``'s per-channel weights with one activation scale per tensor:
on the built-in trained model that scheme reached only 0.935 top-1 agreement (block-wise 8-bit: 0.987).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ...errors import InternalError, UnsupportedError
from ...plan import QuantSpec
from . import BLOCKWISE, OnnxOptions


@dataclass(frozen=True)
class TiedHead:
    """Where a family graph keeps a tied embedding / LM head, so the quantiser can share the head's blocks.

    ``weight``: the [hidden, vocab] initializer; ``node``: the LM head MatMul's name; ``embed_nodes``: the
    nodes (a Transpose feeding a Gather) that read the float table for the embedding; ``gather``: the Gather's
    name among them."""

    weight: str
    node: str
    embed_nodes: tuple[str, ...]
    gather: str


@dataclass(frozen=True)
class OnnxQuant:
    """The native form of a QuantSpec for this exporter (validated options included)."""

    name: str
    block_size: int = 32
    accuracy_level: int = 4
    head_bits: int = 4
    # "affine" (symmetric round-to-nearest), "gptq" (round-to-nearest's scales, GPTQ's codes: written by ``gptq.apply``
    # after ``apply``) or "hqq" (onnxruntime's HQQ, asymmetric)
    algorithm: str = "affine"

    @property
    def bits(self) -> int:
        return 8 if self.name == "int8" else 4

    def to_dict(self) -> dict[str, Any]:
        if self.name not in BLOCKWISE:
            return {"name": self.name}
        return {"name": self.name, "block_size": self.block_size, "accuracy_level": self.accuracy_level,
                "head_bits": self.head_bits, "algorithm": self.algorithm}


def native(quant: QuantSpec, options: OnnxOptions) -> OnnxQuant:
    """The plan's quant and validated options in this exporter's native form (the only place they are mapped)."""
    return OnnxQuant(
        name=quant.name,
        block_size=options.block_size,
        accuracy_level=options.accuracy_level,
        head_bits=(options.head_bits or 4) if quant.name == "int4" else 8,
        algorithm=options.algorithm(quant) if hasattr(options, "algorithm") else "affine",
    )


def apply(model: Any, q: OnnxQuant, head: TiedHead | None = None,
          types: Mapping[str, tuple[int, int]] | None = None) -> Any:
    """A float32 ModelProto -> the quantised ModelProto; ``head`` names a tied embedding / LM head to keep shared;
    ``types``: MatMul weight initializer name -> (bits, block_size) where it differs from ``q``'s (a
    mixed-precision assignment; block-wise quants)."""
    if q.name == "fp32":
        return model
    if q.name == "fp16":
        return _fp16(model)
    if q.name in BLOCKWISE:
        return _blockwise(model, q, head, types or {})
    raise InternalError(f"onnx quantisation {q.name!r} has no implementation")


def _fp16(model: Any) -> Any:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # op_block_list=[]: the default list keeps some ops in float32 behind Cast pairs; every op here has a
    # float16 CPU kernel, and a Cast pair per op would cost more than it saves
    return convert_float_to_float16(model, keep_io_types=["logits"], disable_shape_infer=True, op_block_list=[])


def _weights_direct(model: Any) -> None:
    """Rewire ``MatMul(x, Identity(W))`` to ``MatMul(x, W)``.  A traced graph that applies one module several
    times (a recursive reasoner runs its network several times per step) reaches the shared weight through
    Identity nodes; the quantiser only takes a MatMul whose weight is an initializer, and would leave those
    float (the fused-kernel check refuses that).  Rewired, every use shares one quantised weight."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in inits}
    if not alias:
        return
    outputs = {o.name for o in g.output}
    for n in list(g.node):
        if n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in outputs:
            g.node.remove(n)
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in alias and name not in outputs:
                n.input[i] = alias[name]


def _config(q: OnnxQuant, bits: int, head: bool = False, block: int | None = None) -> Any:
    """The weight-only config of onnxruntime's MatMulNBitsQuantizer for ``q.algorithm`` at ``bits``: symmetric
    round-to-nearest (``DefaultWeightOnlyQuantConfig``) or HQQ (``HQQWeightOnlyQuantConfig``: half-quadratic
    proximal search of each block's zero point, asymmetric, no data).  A tied head stays symmetric round-to-nearest:
    ``GatherBlockQuantized`` serves the embedding from its blocks and takes no zero points."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    block = q.block_size if block is None else block
    if q.algorithm == "hqq" and bits == 4 and not head:
        return mnq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits, op_types_to_quantize=("MatMul",))
    return mnq.DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=q.accuracy_level, bits=bits,
        op_types_to_quantize=("MatMul",),
    )


def _blockwise(model: Any, q: OnnxQuant, head: TiedHead | None, types: Mapping[str, tuple[int, int]]) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

    def run(model: Any, bits: int, block: int, exclude: list[str] | None, is_head: bool = False) -> Any:
        cfg = _config(q, bits, head=is_head, block=block)
        quant = MatMulNBitsQuantizer(
            model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=q.accuracy_level,
            nodes_to_exclude=exclude, algo_config=cfg,
        )
        quant.process()
        return quant.model.model

    _weights_direct(model)
    inits = {t.name for t in model.graph.initializer}
    # MatMulNBitsQuantizer quantises every MatMul not in nodes_to_exclude (its nodes_to_include only adds
    # op types it would otherwise skip), so each (bits, block_size) run excludes the float MatMuls of the others
    matmuls = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    unknown = sorted(set(types) - set(matmuls.values()))
    if unknown:
        raise InternalError(f"mixed-precision types for weights the graph has no MatMul of: {', '.join(unknown)}")
    groups: dict[tuple[bool, int, int], list[str]] = {}
    for node, weight in matmuls.items():
        is_head = head is not None and node == head.node  # a run of its own: symmetric whatever the algorithm
        bits, block = types.get(weight, (q.head_bits if is_head else q.bits, q.block_size))
        groups.setdefault((is_head, bits, block), []).append(node)
    for (is_head, bits, block), nodes in sorted(groups.items()):
        model = run(model, bits, block, [n for n in matmuls if n not in nodes], is_head)
    return model if head is None else _tie_quantized_embedding(model, q, head)


def _tie_quantized_embedding(model: Any, q: OnnxQuant, tied: TiedHead) -> Any:
    """Replace Transpose(lm_head float) -> Gather by GatherBlockQuantized over the LM head's quantised blocks."""
    from onnx import helper, numpy_helper

    g = model.graph
    head = next((n for n in g.node if n.name.startswith(tied.node) and n.op_type == "MatMulNBits"), None)
    if head is None:
        raise UnsupportedError(f"{q.name}: the LM head was not quantised to MatMulNBits; cannot share it with the embedding")
    blocks, scales = head.input[1], head.input[2]
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
    if len(head.input) > 3 and head.input[3]:
        raise UnsupportedError(f"{q.name}: asymmetric LM head blocks cannot be shared with GatherBlockQuantized")
    inits = {t.name: t for t in g.initializer}
    n_rows, n_blocks, blob = inits[blocks].dims  # [vocab, hidden / block, block * bits / 8]
    old = [n for n in g.node if n.name in tied.embed_nodes]
    gather = next(n for n in old if n.name == tied.gather)
    for n in old:
        g.node.remove(n)
    shape_name = "embed/packed_shape"
    g.initializer.append(numpy_helper.from_array(np.array([n_rows, n_blocks * blob], dtype=np.int64), shape_name))
    new = [
        # [vocab, blocks, blob] -> [vocab, hidden * bits / 8]: the row layout GatherBlockQuantized expects
        helper.make_node("Reshape", [blocks, shape_name], ["embed/packed"], name="embed/Reshape"),
        helper.make_node(
            "GatherBlockQuantized", ["embed/packed", gather.input[1], scales], [gather.output[0]], name=tied.gather,
            domain="com.microsoft", bits=bits, block_size=block, gather_axis=0, quantize_axis=1,
        ),
    ]
    for k, n in enumerate(new):
        g.node.insert(k, n)
    if not any(tied.weight in n.input for n in g.node):
        g.initializer.remove(inits[tied.weight])
    return model
