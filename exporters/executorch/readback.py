"""The weights an ExecuTorch export quantised, for the tensor check and the fidelity reference
(``edgekit.tensorcheck``).

A ``.pte`` keeps its XNNPACK weights inside the delegate's own serialised graph (packed int4/int8 blocks with
bf16 scales, keyed by content hash), which edgekit does not parse.  So this read-back is *not from the file*:
it quantises the merged float weights again exactly as the exporter does (``quant.quantize_linears`` /
``QuantizedEmbedding``, the same torchao configs) and dequantises the torchao tensors that would be lowered —
what the issue allows for this format.  It checks the quantiser's output (scales, groups, the LM head's bits,
the embedding table) and gives fidelity its reference; the file's integrity rests on its sha256 in the manifest.

Activations: torchao's ``Int8DynamicActivationIntxWeightConfig`` (8da*) quantises each token's input row to
int8, asymmetric, at run time; XNNPACK's ``qd8`` GEMM does the same: ``ActQuant("asym_token")``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from edgekit.tensorcheck import ActQuant, ReadTensor

TOKEN_ACT = ActQuant("asym_token")


def linear(name: str, source: str, weight: np.ndarray, q: Any, module: str,
           hessian: np.ndarray | None = None) -> ReadTensor:
    """``weight`` [out, in] quantised with ``q`` (``quant.LinearQuant``, or None for float) and dequantised; with
    its input ``hessian``, GPTQ's codes under the same scales (``gptq.quantized``: storage type ``INT<bits>_GPTQ``)."""
    from edgekit.gptq import QTYPE_SUFFIX

    from .gptq import quantized

    if q is None:
        return ReadTensor(name, source, weight, "F32", modules=(module,))
    w = quantized(weight, q, hessian)
    if w is None:  # a width the group size does not divide stays float (quantize_linears)
        return ReadTensor(name, source, weight, "F32", modules=(module,))
    values = w.dequantize().float().numpy()
    qtype = f"INT{q.weight_bits}" + (QTYPE_SUFFIX if hessian is not None else "")
    return ReadTensor(name, source, values, qtype, q.group_size or 0, 1 << q.weight_bits, None, (module,), TOKEN_ACT)


def embedding(name: str, source: str, table: np.ndarray, bits: int, group: int = 32) -> ReadTensor:
    """The token table as ``QuantizedEmbedding`` stores it, read through ExecuTorch's own gather kernel."""
    import torch

    from .quant import QuantizedEmbedding

    emb = QuantizedEmbedding.quantize(torch.from_numpy(np.array(table, dtype=np.float32)), bits, group)
    with torch.no_grad():
        values = emb(torch.arange(table.shape[0]).view(1, -1))[0].float().numpy()
    g = group if table.shape[1] % group == 0 else table.shape[1]
    return ReadTensor(name, source, values, f"INT{bits}", g, (1 << bits) - 1)


def read(weights: Mapping[str, np.ndarray], options: Any, spec: Any, linear_names: Any,
         per_linear: Mapping[str, Any] | None = None,
         embed: str = "model.embed_tokens.weight", head: str = "lm_head.weight",
         hessians: Mapping[str, np.ndarray] | None = None) -> list[ReadTensor]:
    """The quantised weights of an LFM2/Llama-like language export: every linear in ``linear_names`` (checkpoint
    names of [out, in] weights) at the options' quant or, where ``per_linear`` names it, its own (a mixed-precision
    assignment: checkpoint name -> ``quant.LinearQuant``), the LM head at the options' head bits, the token table
    as the options store it.  ``hessians`` (module name -> input Hessian): the linears whose codes GPTQ wrote."""
    from . import quant

    lq = quant.linear_quant(spec, options)
    per_linear, hessians = per_linear or {}, hessians or {}

    def one(n: str, w: np.ndarray, q: Any, module: str) -> ReadTensor:
        return linear(n, n, w, q, module, hessians.get(module))

    out = [one(n, weights[n], per_linear.get(n, lq), n.removesuffix(".weight")) for n in linear_names]
    head_w = weights.get(head, weights[embed])
    hq = lq.at_bits(options.lm_head_bits(spec)) if lq is not None else None
    head_t = one(head, head_w, hq, "lm_head")
    out.append(head_t)
    bits = {"none": None, "8": 8, "4": 4}[options.embedding_quant]
    if options.shares_embedding(spec):
        out.append(ReadTensor(embed, embed, head_t.values, head_t.qtype, head_t.block, head_t.levels))
    elif bits is not None:
        out.append(embedding(embed, embed, weights[embed], bits))
    else:
        out.append(ReadTensor(embed, embed, weights[embed], "F32"))
    return out
