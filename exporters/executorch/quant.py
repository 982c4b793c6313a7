"""edgekit's ExecuTorch quantisations -> torchao configs (linears, by a module-name -> config map) and packed
embedding tables.

The one place where a ``QuantSpec`` becomes something torchao / ExecuTorch understands (``linear_quant``).  Linears use torchao's
``Int8DynamicActivationIntxWeightConfig`` with the *unpacked* int8 layout: XNNPACK recognises its
dequantise/linear pattern and runs it as a dynamically-quantised GEMM (the ``opaque_torchao_auto`` layout that
export_llm's ``torchao:8da8w`` mode picks needs torchao's own kernel library, which the pip wheel lacks).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Mapping

import torch
from torch import nn

from ...errors import InternalError
from ...plan import QuantSpec
from . import LinearOptions


XNNPACK_INT4_GROUP = 32  # XNNPACK's blockwise int4 GEMM takes groups that are multiples of this


@dataclass(frozen=True)
class LinearQuant:
    weight_bits: int  # 4 or 8
    group_size: int | None  # None: one scale per output channel
    # "hqq": torchao's HQQ scale search (slower, sometimes better at 4 bits); "gptq": affine's scales, then GPTQ's
    # codes (gptq.py) — torchao quantises it as affine
    algorithm: str = "affine"

    def describe(self) -> str:
        g = f"group {self.group_size}" if self.group_size else "per channel"
        return f"int8 dynamic activations, int{self.weight_bits} weights, {g}, {self.algorithm}"

    def fits(self, in_features: int) -> bool:
        """Whether a linear of that input width can take this scheme: a group must divide the width, and XNNPACK
        lowers a per-channel int4 weight as one group of the whole width, which must be a multiple of 32."""
        if self.group_size:
            return in_features % self.group_size == 0
        return self.weight_bits == 8 or in_features % XNNPACK_INT4_GROUP == 0

    def at_bits(self, bits: int) -> "LinearQuant":
        """The same scheme at other weight bits (XNNPACK's int8-weight GEMM is per-channel only)."""
        return LinearQuant(bits, None if bits == 8 else self.group_size, self.algorithm)

    def config(self):
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig
        from torchao.quantization.granularity import PerAxis, PerGroup

        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=getattr(torch, f"int{self.weight_bits}"),
            weight_granularity=PerGroup(self.group_size) if self.group_size else PerAxis(0),
            intx_choose_qparams_algorithm="hqq_scale_only" if self.algorithm == "hqq" else "affine",
        )


def linear_quant(quant: QuantSpec, options: LinearOptions) -> LinearQuant | None:
    """The plan's quant + validated options -> ``LinearQuant`` (None for float32)."""
    if quant.is_float:
        return None
    return LinearQuant(int(quant.weight_bits), options.group(quant), options.algorithm(quant))


def quantize_linears(model: nn.Module, q: LinearQuant, overrides: Mapping[str, LinearQuant] | None = None) -> None:
    """Quantise every linear in place with ``q``, except the modules named in ``overrides`` (module name ->
    its own config; e.g. a tied LM head at 8 bits).  LoRA A/B stay float32 (tiny, and kept exact for a separate
    adapter); a linear whose input width the scheme does not fit (``LinearQuant.fits``) stays float."""
    from torchao.quantization import quantize_

    overrides = dict(overrides or {})

    def wanted(m: nn.Module, fqn: str) -> bool:
        if not isinstance(m, nn.Linear) or ".lora_" in f".{fqn}" or fqn in overrides:
            return False
        return q.fits(m.in_features)

    quantize_(model, q.config(), filter_fn=wanted)
    for name, config in overrides.items():
        quantize_(model, config.config(),
                  filter_fn=lambda m, fqn, name=name, c=config: fqn == name and c.fits(m.in_features))


class QuantizedEmbedding(nn.Module):
    """Weight-only 4/8-bit symmetric embedding, per row groups, run by ExecuTorch's quantized kernels
    (``quantized_decomposed.embedding_4bit`` / ``embedding_byte``): a gather has nothing to gain from XNNPACK."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.contiguous())

    @classmethod
    def quantize(cls, weight: torch.Tensor, bits: int, group_size: int) -> "QuantizedEmbedding":
        vocab, dim = weight.shape
        if dim % group_size:
            group_size = dim
        qmax = (1 << (bits - 1)) - 1  # 7 or 127; symmetric, so -8 / -128 are never produced
        w = weight.float().view(vocab, dim // group_size, group_size)
        scale = (w.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-12)
        q = torch.clamp(torch.round(w / scale), -qmax, qmax).to(torch.int8).view(vocab, dim)
        if bits == 4:
            u = (q + 8).to(torch.uint8).view(vocab, dim // 2, 2)
            q = (u[..., 0] << 4) | u[..., 1]  # the kernel's nibble order: even column in the high nibble
        return cls(q, scale.view(vocab, -1), bits)

    @classmethod
    def from_int8_head(cls, head_weight: torch.Tensor) -> "QuantizedEmbedding":
        """The gather table made of the int8 per-channel LM head's own bytes (torchao's unpacked int8 tensor):
        the serialiser stores identical bytes once, so a tied model keeps one table for both uses."""
        zero = getattr(head_weight, "zero_point", None)
        if zero is not None and bool(zero.any()):
            raise InternalError("the LM head is not symmetric int8; its table cannot serve the embedding")
        q = head_weight.qdata.detach()
        return cls(q.clone(), head_weight.scale.detach().float().reshape(q.shape[0], -1).clone(), 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.bits == 4:
            return torch.ops.quantized_decomposed.embedding_4bit.dtype(
                self.qweight, self.scales, None, -8, 7, tokens, dtype=torch.float32
            )
        return torch.ops.quantized_decomposed.embedding_byte.dtype(
            self.qweight, self.scales, None, -128, 127, tokens, dtype=torch.float32
        )


def quantize_embedding(model: nn.Module, name: str, bits: int, group_size: int = 32) -> None:
    """Replace the ``nn.Embedding`` child ``name`` of ``model`` by a 4/8-bit ``QuantizedEmbedding``."""
    setattr(model, name, QuantizedEmbedding.quantize(getattr(model, name).weight.detach(), bits, group_size))


def share_embedding_with_head(model: nn.Module, embedding: str, head: str, bits: int) -> None:
    """Make the child embedding ``embedding`` read the tied linear ``head``'s table (``bits`` 32: float32, or 8:
    int8 per channel): after serialisation one copy of the table serves both.  An int4 head has no gather
    kernel, so it cannot."""
    if bits == 32:
        getattr(model, embedding).weight = getattr(model, head).weight
    elif bits == 8:
        setattr(model, embedding, QuantizedEmbedding.from_int8_head(getattr(model, head).weight))
    else:
        raise InternalError(f"an int{bits} LM head cannot share its table with the embedding")
