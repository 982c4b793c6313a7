"""Reading an ONNX file's weights back for the tensor check and the fidelity reference (``edgekit.tensorcheck``).

- float32 / float16 initializers are read as they are; a MatMul's weight operand ([in, out]) is transposed back
  to the [out, in] layout of a linear layer;
- ``MatMulNBits`` (com.microsoft) weights are decoded per ONNX Runtime's contrib-op spec
  (docs/ContribOperators.md, MatMulNBits): ``B`` uint8 [N, k_blocks, blob] with the K values of each block
  packed little-end first (8 // bits values per byte), ``scales`` [N * k_blocks], optional ``zero_points``
  packed the same way per row (default ``2**(bits-1)``), value = (q - zero_point) * scale; the result is
  [N, K] = the linear layer's [out, in].  At ``accuracy_level`` 4 the CPU kernel quantises the activation
  operand to int8 per block of ``block_size`` values (symmetric, scale = max|x| / 127): ``ActQuant("sym_block")``.
  ``GatherBlockQuantized`` reads the same blocks (a tied embedding), so it needs no read-back of its own.

A float16 graph (``--quant fp16``) also runs its activations in float16: ``ActQuant("f16")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import BundleError
from edgekit.tensorcheck import ActQuant


@dataclass(frozen=True)
class OnnxWeight:
    """One weight of the file: the float initializer's name (MatMulNBits: the name of the float weight it was
    made from, the quantiser's ``_Q4G32``-style suffix removed), [out, in] float32 values for matmul weights
    (others as stored), storage type, block, levels, activation quantisation."""

    name: str
    values: np.ndarray
    qtype: str
    block: int = 0
    levels: int = 0
    act: ActQuant = ActQuant()
    matmul: bool = False


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """uint8 [..., bytes] -> uint8 [..., count] values of ``bits`` each, lowest bits first."""
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    vals = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return vals.reshape(*packed.shape[:-1], packed.shape[-1] * per)[..., :count]


def dequantize_matmul_nbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int,
                            bits: int, block: int) -> np.ndarray:
    """MatMulNBits' B (+ scales, zero points) -> float32 [N, K]."""
    k_blocks = (k + block - 1) // block
    q = unpack(b.reshape(n, k_blocks, -1), bits, block).astype(np.float32)  # [N, k_blocks, block]
    if zero_points is None or zero_points.size == 0:
        zp = np.full((n, k_blocks, 1), float(1 << (bits - 1)), dtype=np.float32)
    elif zero_points.dtype == np.uint8 and zero_points.size != n * k_blocks:
        zp = unpack(zero_points.reshape(n, -1), bits, k_blocks).astype(np.float32)[..., None]
    else:
        zp = zero_points.reshape(n, k_blocks, 1).astype(np.float32)
    s = scales.reshape(n, k_blocks, 1).astype(np.float32)
    return ((q - zp) * s).reshape(n, k_blocks * block)[:, :k]


def read(path: Path) -> list[OnnxWeight]:
    """Every float initializer and every MatMulNBits weight of the ONNX model at ``path`` (external data loaded).

    Raises ``BundleError`` when the file cannot be read."""
    import onnx
    from onnx import helper, numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError
        raise BundleError(f"{path}: not a readable ONNX model ({exc}); re-export the bundle") from None
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    out: list[OnnxWeight] = []
    used: set[str] = set()
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)
    float_act = ActQuant("f16") if half else ActQuant()
    for node in g.node:
        if len(node.input) > 1 and node.input[1] in used:  # a weight shared by several matmuls: read once
            continue
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
            n, k = int(attrs["N"]), int(attrs["K"])
            b = numpy_helper.to_array(inits[node.input[1]])
            scales = numpy_helper.to_array(inits[node.input[2]])
            zp = numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else None
            used.update(x for x in node.input[1:] if x)
            values = dequantize_matmul_nbits(b, scales, zp, n, k, bits, block)
            act = ActQuant("sym_block", block) if int(attrs.get("accuracy_level", 0)) == 4 else ActQuant()
            name = node.input[1].rsplit("_Q", 1)[0]
            out.append(OnnxWeight(name, values, f"INT{bits}", block, 1 << bits, act, matmul=True))
        elif node.op_type == "MatMul" and node.input[1] in inits:
            t = inits[node.input[1]]
            used.add(t.name)
            arr = numpy_helper.to_array(t)
            qtype = "F16" if t.data_type == onnx.TensorProto.FLOAT16 else "F32"
            out.append(OnnxWeight(t.name, np.asarray(arr, dtype=np.float32).T, qtype, act=float_act, matmul=True))
    for t in g.initializer:
        if t.name in used or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        qtype = "F16" if t.data_type == onnx.TensorProto.FLOAT16 else "F32"
        out.append(OnnxWeight(t.name, np.asarray(numpy_helper.to_array(t), dtype=np.float32), qtype))
    return out
