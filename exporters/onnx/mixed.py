"""Mixed precision for ONNX int4 (``edgekit.mixed``): the types a ``MatMulNBits`` weight may take, their stored
bytes, the scan's quantise/dequantise callback and the plan for a family export.

Types (names as the manifest records them): ``int4_b256`` ... ``int4_b16`` and ``int8_b256`` ... ``int8_b32``:
``MatMulNBits``' ``bits`` and ``block_size`` are attributes of each node, and its CPU kernel runs every one of
these at ``accuracy_level`` 4 (int8 activations quantised per block of that node's ``block_size``).  Stored
bytes are the packed weights (bits / 8 each) plus one float32 scale per block; the weights are symmetric (no
zero points).  A block must divide the weight's input width K, so no block is padded.

The tied embedding / LM head is a candidate too: ``GatherBlockQuantized`` takes ``bits`` and ``block_size``
attributes and reads the head's blocks at any of these types, so the table stays stored once.  The reference
shares that one parameter between ``embed_tokens`` and ``lm_head``; the scan quantises it under the embedding's
name, so both uses are measured (at every type: an embedding is not a linear layer's weight).

The scan's ``fake`` quantises one weight with onnxruntime's own block quantiser (``DefaultWeightOnlyQuantizer
.qbits_block_quant``: the C++ ``quantize_matmul_4bits`` / ``quantize_matmul_8bits`` that ``MatMulNBitsQuantizer``
writes the file with) and decodes it with ``readback.dequantize_matmul_nbits`` (the tensor check's read-back).
The run-time int8 activation quantisation is the same whatever the weight type, so the scan leaves it out.

Imports only the standard library at import time (options are checked at plan time without numpy).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

INT4_BLOCKS = (256, 128, 64, 32, 16)
INT8_BLOCKS = (256, 128, 64, 32)
CANDIDATES: tuple[str, ...] = tuple(f"int4_b{b}" for b in INT4_BLOCKS) + tuple(f"int8_b{b}" for b in INT8_BLOCKS)
SCALE_BYTES = 4  # float32, one per block


def type_name(bits: int, block: int) -> str:
    return f"int{bits}_b{block}"


def parse_type(name: str) -> tuple[int, int]:
    """``"int4_b64"`` -> (4, 64)."""
    m = re.fullmatch(r"int(4|8)_b(\d+)", name)
    if m is None:
        raise ValueError(f"not an ONNX mixed-precision type: {name!r}")
    return int(m.group(1)), int(m.group(2))


def fits(shape: Sequence[int], name: str) -> bool:
    """Whether a [out, in] weight can take the type (the block divides the input width)."""
    return int(shape[1]) % parse_type(name)[1] == 0


def nbytes(shape: Sequence[int], name: str) -> int:
    """Stored bytes of a [out, in] weight at the type: packed weights + float32 scales."""
    bits, block = parse_type(name)
    out, k = int(shape[0]), int(shape[1])
    blocks = out * (-(-k // block))
    return blocks * (block * bits // 8) + blocks * SCALE_BYTES


def fake_quant(weight: Any, name: str) -> Any:
    """``weight`` (float32 numpy [out, in]) quantised at the type by onnxruntime's block quantiser (symmetric
    round-to-nearest) and decoded as ``MatMulNBits`` reads it (float32 numpy [out, in])."""
    import numpy as np
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    from .readback import dequantize_matmul_nbits

    bits, block = parse_type(name)
    cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=bits,
                                           op_types_to_quantize=("MatMul",))
    kn = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)  # MatMul's [K, N]
    packed, scales, _zp = mnq.DefaultWeightOnlyQuantizer(cfg).qbits_block_quant(kn)
    n, k = kn.shape[1], kn.shape[0]
    return dequantize_matmul_nbits(packed, scales, None, n, k, bits, block)


def node_types(model: Any) -> dict[str, str]:
    """Float weight name -> type of every ``MatMulNBits`` of a ModelProto (the quantiser's ``_Q4`` suffix
    removed from the weight's name)."""
    from onnx import helper

    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            out[node.input[1].rsplit("_Q", 1)[0]] = type_name(int(attrs.get("bits", 4)), int(attrs["block_size"]))
    return out


def plan(job: Any, weights: Mapping[str, tuple[str, ...]],
         defaults: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """The scan over the graph's MatMul weights and the selection under the options' byte budget.

    ``weights``: the float graph's weight initializer name -> the reference parameters it is made of ([out, in]
    each, stacked by rows in the file: a fused q|k|v); ``defaults``: weight name -> the type the plain export
    gives it (their bytes are the default budget).  Returns (weight name -> type, the manifest's
    ``mixed_precision`` entry, its ``calibration`` entry)."""
    import numpy as np

    from edgekit import mixed as mixed_mod

    cands = []
    for name, sources in weights.items():
        shapes = [tuple(job.weights[s].shape) for s in sources]
        shape = (sum(int(s[0]) for s in shapes), int(shapes[0][1]))
        kinds = [k for k in CANDIDATES if fits(shape, k)]
        if defaults[name] not in kinds:
            kinds.append(defaults[name])
        sizes = dict(sorted(((k, nbytes(shape, k)) for k in kinds), key=lambda kv: kv[1]))
        cands.append(mixed_mod.Candidate(sources[0], int(np.prod(shape)), sizes, tuple(sources[1:])))
    to_onnx = {sources[0]: name for name, sources in weights.items()}

    def fake(_name: str, w: Any, t: str) -> Any:
        return fake_quant(w, t)

    result = mixed_mod.plan_job(job, cands, {weights[n][0]: t for n, t in defaults.items()}, fake,
                                "onnxruntime block quantise/dequantise per MatMul weight; MatMulNBitsQuantizer "
                                "runs per (bits, block_size)", to_onnx)
    types, calibration = result.types, result.calibration
    summary = {**result.summary, "scale_dtype": "float32"}
    return types, summary, calibration
