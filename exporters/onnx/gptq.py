"""GPTQ for ONNX ``MatMulNBits`` weights with the round-to-nearest quantiser's own scales (static groups).

Why a hand-written GPTQ: onnxruntime 1.32's ``GPTQWeightOnlyQuantConfig`` measured *worse* than round-to-nearest
on the built-in model (top-1 0.6104, mean KL 2.3e-1; on a single 256x128 MatMul twice RTN's output error on its
own calibration data, README "Calibrated 4-bit quantisation"), and torchao 0.18's GPTQ asserts a CUDA device.
This is Frantar et al. 2022 Algorithm 1 (the column loop and the input Hessians are ``edgekit.gptq``, shared with
the GGUF export's Q4_0 / Q4_K codes).

One change from the paper: the block scales are **fixed** from the original weight by onnxruntime's symmetric
block quantiser (``quantize_matmul_4bits`` / ``_8bits``: the signed value of largest magnitude of each block maps
to code 0, scale = that value / -2^(bits-1)), so only the codes change.  The file keeps the exact layout, scales
and bytes the round-to-nearest export writes; a weight is replaced by GPTQ's codes inside the ``MatMulNBits``
node the quantiser wrote.  Columns stay in order (no act-order: with static groups it only permutes which
column quantises first, and measured no better here: bench/gptq_probe.py).

Imports numpy at import time; torch inside ``gptq_codes``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ... import gptq as core
from ...gptq import DAMP, LAZY_BATCH, QTYPE_SUFFIX, hessian_hooks, hessians  # noqa: F401 (this module's API)


def rtn_codes(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's symmetric block quantiser on a float32 [out, in] weight: (codes uint8 [out, in] in
    0 .. 2^bits - 1, scales float32 [out, in / block]); code - 2^(bits-1) times the block's scale decodes it."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    from .readback import unpack

    cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=bits,
                                           op_types_to_quantize=("MatMul",))
    kn = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)  # MatMul's [K, N]
    packed, scales, _zp = mnq.DefaultWeightOnlyQuantizer(cfg).qbits_block_quant(kn)
    n, k = kn.shape[1], kn.shape[0]
    k_blocks = -(-k // block)
    codes = unpack(packed.reshape(n, k_blocks, -1), bits, block).reshape(n, k_blocks * block)[:, :k]
    return np.ascontiguousarray(codes), np.asarray(scales, dtype=np.float32).reshape(n, k_blocks)


def dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Codes [out, in] and block scales [out, in / block] -> float32 [out, in], as ``MatMulNBits`` decodes them."""
    s = np.repeat(scales.astype(np.float32), block, axis=1)[:, : codes.shape[1]]
    return (codes.astype(np.float32) - np.float32(1 << (bits - 1))) * s


def pack(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Codes uint8 [out, in] -> MatMulNBits' B uint8 [out, in / block, block * bits / 8] (lowest bits first; the
    inverse of ``readback.unpack``)."""
    n, k = codes.shape
    k_blocks = -(-k // block)
    padded = np.zeros((n, k_blocks * block), dtype=np.uint8)
    padded[:, :k] = codes
    per = 8 // bits
    vals = padded.reshape(n, k_blocks, block // per, per).astype(np.uint16)
    shifts = (np.arange(per, dtype=np.uint16) * bits)
    return (vals << shifts).sum(-1).astype(np.uint8)


def gptq_codes(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, bits: int, block: int,
               damp: float = DAMP) -> np.ndarray:
    """GPTQ's codes (uint8 [out, in]) of a float32 [out, in] weight under fixed block ``scales`` [out, in / block]
    (``rtn_codes``'), given the input Hessian ``hessian`` [in, in] (2 X^T X / tokens over the calibration inputs):
    ``edgekit.gptq.gptq_codes`` with zero point 2^(bits-1).  A column no calibration token reached (zero diagonal)
    keeps round-to-nearest."""
    cols = np.asarray(weight).shape[1]
    col_scale = np.repeat(np.asarray(scales, dtype=np.float32), block, axis=1)[:, :cols]
    return core.gptq_codes(weight, hessian, col_scale, float(1 << (bits - 1)), (1 << bits) - 1, damp=damp)


def gptq(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, bits: int, block: int,
         damp: float = DAMP) -> np.ndarray:
    """``gptq_codes`` decoded: float32 [out, in]."""
    return dequantize(gptq_codes(weight, hessian, scales, bits, block, damp), scales, bits, block)


def apply(model: Any, float_weights: Mapping[str, np.ndarray], modules: Mapping[str, str], reference: Any,
          windows: list[list[int]], progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Replace the packed codes of every symmetric ``MatMulNBits`` weight of a quantised ModelProto (in place) by
    GPTQ's codes under the node's own scales.  ``float_weights``: the float graph's MatMul weight initializer
    name -> its float32 [K, N] values; ``modules``: that name -> the reference's ``nn.Linear`` whose input the
    MatMul sees (a fused q|k|v: the q projection's; the tied head: ``lm_head``); the Hessians come from
    ``reference`` (float, the whole model at once) over the calibration ``windows``.  A tied embedding's
    ``GatherBlockQuantized`` reads the same blocks, so it gets the head's GPTQ codes.  Returns the manifest's
    summary (tensors, tokens, damping, lazy batch)."""
    from onnx import helper, numpy_helper

    progress("GPTQ: input Hessians of every MatMul over the calibration text")
    hs = hessians(reference, sorted(set(modules.values())), windows)
    inits = {t.name: t for t in model.graph.initializer}
    done: list[str] = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or (len(node.input) > 3 and node.input[3]):
            continue
        weight = node.input[1].rsplit("_Q", 1)[0]
        if weight not in float_weights or weight not in modules:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block, n, k = int(attrs.get("bits", 4)), int(attrs["block_size"]), int(attrs["N"]), int(attrs["K"])
        w = np.ascontiguousarray(np.asarray(float_weights[weight], dtype=np.float32).T)  # [N, K]
        b_init = inits[node.input[1]]
        b = numpy_helper.to_array(b_init)
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, -1)
        if w.shape != (n, k) or k % block:
            continue  # a padded block: keep round-to-nearest
        progress(f"GPTQ: {weight} ({len(done) + 1})")
        codes = gptq_codes(w, hs[modules[weight]], scales, bits, block)
        b_init.CopyFrom(numpy_helper.from_array(pack(codes, bits, block).reshape(b.shape), b_init.name))
        done.append(weight)
    return core.summary(done, windows, "GPTQ (Frantar et al. 2022) with round-to-nearest's block scales")
