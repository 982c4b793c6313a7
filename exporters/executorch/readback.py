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


def linear(name: str, source: str, weight: np.ndarray, q: Any, module: str) -> ReadTensor:
    """``weight`` [out, in] quantised with ``q`` (``quant.LinearQuant``, or None for float) and dequantised."""
    import torch
    from torch import nn

    from .quant import quantize_linears

    if q is None:
        return ReadTensor(name, source, weight, "F32", modules=(module,))
    lin = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
        quantize_linears(lin, q)
    w = lin[0].weight
    if not hasattr(w, "dequantize"):  # a width the group size does not divide stays float (quantize_linears)
        return ReadTensor(name, source, weight, "F32", modules=(module,))
    values = w.dequantize().float().numpy()
    return ReadTensor(name, source, values, f"INT{q.weight_bits}", q.group_size or 0, 1 << q.weight_bits, None,
                      (module,), TOKEN_ACT)


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
         embed: str = "model.embed_tokens.weight", head: str = "lm_head.weight") -> list[ReadTensor]:
    """The quantised weights of an LFM2/Llama-like language export: every linear in ``linear_names`` (checkpoint
    names of [out, in] weights) at the options' quant or, where ``per_linear`` names it, its own (a mixed-precision
    assignment: checkpoint name -> ``quant.LinearQuant``), the LM head at the options' head bits, the token table
    as the options store it."""
    from . import quant

    lq = quant.linear_quant(spec, options)
    per_linear = per_linear or {}
    out = [linear(n, n, weights[n], per_linear.get(n, lq), n.removesuffix(".weight")) for n in linear_names]
    head_w = weights.get(head, weights[embed])
    hq = lq.at_bits(options.lm_head_bits(spec)) if lq is not None else None
    head_t = linear(head, head, head_w, hq, "lm_head")
    out.append(head_t)
    bits = {"none": None, "8": 8, "4": 4}[options.embedding_quant]
    if options.shares_embedding(spec):
        out.append(ReadTensor(embed, embed, head_t.values, head_t.qtype, head_t.block, head_t.levels))
    elif bits is not None:
        out.append(embedding(embed, embed, weights[embed], bits))
    else:
        out.append(ReadTensor(embed, embed, weights[embed], "F32"))
    return out
