"""What onnxruntime's kernels require of an LFM2's shapes, checked when the export is planned (the pair file's
graph would otherwise fail inside onnxruntime, at load or at the first run, with its own traceback).

Limits measured with onnxruntime 1.32 on random LFM2s (tests/exporters/onnx/test_limits.py):
- CPU ``GroupQueryAttention``: "head_size must be a multiple of 8" (head size 12 fails at the first run);
- ``MatMulNBits`` (int8 / int4 here): the input dimension K of every quantised matrix must hold whole blocks —
  hidden 80 with ``--block-size 32`` fails at load ("Incompatible dimensions for matrix multiplication").
BitNet (``check_bitnet``): the same GroupQueryAttention head size; its ternary ``MatMulNBits`` blocks must divide
every projection's input width, and int2 must stay on the 2-bit CPU kernel's fast path (blocks <= 128, accuracy
level 4), which ``exporters/onnx/bitnet.py`` otherwise found only after loading the model.
Stdlib only: imported by ``make_plan`` through the recipe row's ``plan_check``.
"""

from __future__ import annotations

import math
from typing import Any

from edgekit.errors import UnsupportedError

from . import BLOCKWISE

GQA_HEAD_MULTIPLE = 8
OTHER_FORMATS = "--format gguf or --format executorch"


def check_lfm2(config: Any, quant: Any, options: Any) -> None:
    """Raise UnsupportedError naming the limit when onnxruntime cannot run this LFM2 with this quantisation."""
    hd = int(config.head_dim)
    if int(config.attention_layers) and hd % GQA_HEAD_MULTIPLE:
        raise UnsupportedError(
            f"onnx: head size {hd} (hidden_size {config.hidden_size} / {config.num_attention_heads} heads) is not a "
            f"multiple of {GQA_HEAD_MULTIPLE}, which onnxruntime's GroupQueryAttention requires; export with "
            f"{OTHER_FORMATS}"
        )
    block = getattr(options, "block_size", None)
    if quant.name not in BLOCKWISE or not block:
        return
    widths = {"hidden_size": int(config.hidden_size), "feed-forward width": int(config.intermediate_size)}
    for what, k in widths.items():
        if k % block:
            fits = [b for b in (16, 32, 64, 128, 256) if math.gcd(*widths.values()) % b == 0]
            raise UnsupportedError(
                f"onnx {quant.name}: {what} {k} is not a multiple of --block-size {block}; MatMulNBits quantises whole "
                f"blocks along each matrix's input dimension — "
                + (f"pass --block-size {' or '.join(map(str, fits))}" if fits else "use --quant fp32 or fp16")
                + f", or export with {OTHER_FORMATS}"
            )


FAST_INT2_BLOCKS = (16, 32, 64, 128)
TERNARY_BITS = {"int2": 2, "int4": 4}


def _check_head(config: Any, family: str) -> None:
    hd = int(config.head_dim)
    if hd % GQA_HEAD_MULTIPLE:
        raise UnsupportedError(
            f"onnx {family}: head size {hd} is not a multiple of {GQA_HEAD_MULTIPLE}, which onnxruntime's "
            f"GroupQueryAttention requires; export with {OTHER_FORMATS}"
        )


def bitnet_block_size(config: Any, wanted: int, bits: int, accuracy_level: int) -> int:
    """The ternary MatMulNBits block: ``wanted`` must divide every projection's input width (hidden, q width,
    feed-forward width); int2 must stay on the fast kernel (blocks <= 128, accuracy level 4)."""
    widths = sorted({int(config.hidden_size), int(config.num_attention_heads) * int(config.head_dim),
                     int(config.intermediate_size)})
    if any(w % wanted for w in widths):
        fits = [bs for bs in (16, 32, 64, 128, 256) if all(w % bs == 0 for w in widths)]
        raise UnsupportedError(
            f"onnx BitNet --block-size {wanted} does not divide the projection widths {widths}; "
            + (f"valid: {', '.join(map(str, fits))}" if fits else f"no block size fits: use --quant fp32 or {OTHER_FORMATS}")
        )
    if bits == 2 and (wanted not in FAST_INT2_BLOCKS or accuracy_level != 4):
        raise UnsupportedError(
            f"onnx BitNet int2 needs --accuracy-level 4 and --block-size <= 128 (ONNX Runtime's 2-bit CPU kernel "
            f"otherwise dequantises, ~100x slower); got block {wanted}, accuracy level {accuracy_level}; or use int4"
        )
    return wanted


def check_bitnet(config: Any, quant: Any, options: Any) -> None:
    """Raise UnsupportedError naming the limit when onnxruntime cannot run this BitNet with this quantisation."""
    _check_head(config, "BitNet")
    bits = TERNARY_BITS.get(quant.name)
    if bits:
        bitnet_block_size(config, int(options.block_size), bits, int(options.accuracy_level))
