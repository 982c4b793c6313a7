"""The LFM2 graph edgekit lowers to ExecuTorch: ``forward(tokens [1, n], input_pos [1]) -> logits [1, vocab]``.

It follows ExecuTorch's LLM runner conventions (KV cache and conv state held in mutable buffers, the custom
``llama::update_cache`` / ``llama::custom_sdpa`` kernels, a dynamic token dimension so prefill is one call) and
is written so that XNNPACK can take as much of it as possible:

* RMSNorm's row mean is a matmul with a constant ``1/d`` column (XNNPACK's ``mean.dim`` only does 4-D global
  pooling), so every norm stays inside the delegate;
* RoPE's ``rotate_half`` is a matmul with a constant signed permutation (slices of a tensor with a dynamic
  dimension are not delegated);
* the conv layer concatenates its state and convolves without padding, so the main path needs no slicing;
  only the state update (a [1, d, L-1] copy) runs outside XNNPACK;
* the conv state is zeroed whenever ``input_pos == 0``, so a new sequence never sees the previous one's tail
  (the KV cache needs no reset: positions past ``input_pos`` are masked).

torch is imported by this module: it is only used at export time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...families.lfm2 import Lfm2Shape

# registers llama::update_cache / llama::custom_sdpa for tracing
from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


@dataclass(frozen=True)
class LoraSpec:
    """A separate (unmerged) LoRA branch: ``y = base(x) + scale * B(A(x))``; A and B stay float32."""

    rank: int
    scale: float


class Linear(nn.Module):
    """A bias-free linear with an optional separate LoRA branch (``lora_a`` / ``lora_b`` in the names lets the
    exporter tag these weights for the adapter data file)."""

    def __init__(self, d_in: int, d_out: int, lora: LoraSpec | None = None) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out, bias=False)
        self.lora = lora
        if lora is not None:
            self.lora_a = nn.Linear(d_in, lora.rank, bias=False)
            self.lora_b = nn.Linear(lora.rank, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.lora is not None:
            y = y + self.lora_b(self.lora_a(x)) * self.lora.scale
        return y


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # mean(x^2) = (x*x) @ (1/d): a fully-connected op XNNPACK runs; never quantised (not an nn.Linear)
        self.register_buffer("mean_col", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = F.linear(x * x, self.mean_col)
        return x * torch.rsqrt(ms + self.eps) * self.weight


def rotate_half_matrix(head_dim: int) -> torch.Tensor:
    """R with x @ R.T == cat(-x[..., h:], x[..., :h]) (Hugging Face's rotate_half)."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim)
    for i in range(half):
        r[i, i + half] = -1.0
        r[i + half, i] = 1.0
    return r


class Attention(nn.Module):
    def __init__(self, s: Lfm2Shape, lora: Mapping[str, LoraSpec]) -> None:
        super().__init__()
        hd = s.head_dim
        self.n_heads, self.n_kv, self.hd = s.heads, s.kv_heads, hd
        self.q_proj = Linear(s.hidden, s.heads * hd, lora.get("q_proj"))
        self.k_proj = Linear(s.hidden, s.kv_heads * hd, lora.get("k_proj"))
        self.v_proj = Linear(s.hidden, s.kv_heads * hd, lora.get("v_proj"))
        self.out_proj = Linear(s.heads * hd, s.hidden, lora.get("out_proj"))
        self.q_layernorm = RMSNorm(hd, s.eps)
        self.k_layernorm = RMSNorm(hd, s.eps)
        self.register_buffer("rot", rotate_half_matrix(hd), persistent=False)
        cache = (1, s.context, s.kv_heads, hd)  # the [B, S, H, D] layout llama::custom_sdpa reads
        self.register_buffer("k_cache", torch.zeros(cache), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache), persistent=False)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + F.linear(x, self.rot) * sin

    def forward(self, x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        _, n, _ = x.shape
        q = self.q_layernorm(self.q_proj(x).view(1, n, self.n_heads, self.hd))
        k = self.k_layernorm(self.k_proj(x).view(1, n, self.n_kv, self.hd))
        v = self.v_proj(x).view(1, n, self.n_kv, self.hd)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        torch.ops.llama.update_cache(k, self.k_cache, pos)
        torch.ops.llama.update_cache(v, self.v_cache, pos)
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, pos, None, 0, True)
        return self.out_proj(out.reshape(1, n, self.n_heads * self.hd))


class ShortConv(nn.Module):
    def __init__(self, s: Lfm2Shape, lora: Mapping[str, LoraSpec]) -> None:
        super().__init__()
        d, k = s.hidden, s.conv_kernel
        self.k = k
        # in_proj (d -> 3d, split B, C, x) as three linears: a split of a tensor with a dynamic dimension would
        # leave the delegate
        self.B_proj = Linear(d, d, lora.get("in_proj"))
        self.C_proj = Linear(d, d, lora.get("in_proj"))
        self.x_proj = Linear(d, d, lora.get("in_proj"))
        self.out_proj = Linear(d, d, lora.get("out_proj"))
        self.weight = nn.Parameter(torch.zeros(d, 1, k))  # depthwise kernel, HF's conv.conv.weight
        self.register_buffer("conv_state", torch.zeros(1, d, k - 1), persistent=False)

    def forward(self, x: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        bx = (self.B_proj(x) * self.x_proj(x)).transpose(1, 2)  # [1, d, n]
        ext = torch.cat([self.conv_state * fresh, bx], dim=2)  # [1, d, n + k - 1]
        with torch.no_grad():
            self.conv_state.copy_(ext[:, :, -(self.k - 1) :])
        y = F.conv1d(ext, self.weight, groups=ext.shape[1])  # no padding: exactly n outputs
        return self.out_proj(self.C_proj(x) * y.transpose(1, 2))


class FeedForward(nn.Module):
    def __init__(self, s: Lfm2Shape, lora: Mapping[str, LoraSpec]) -> None:
        super().__init__()
        self.w1 = Linear(s.hidden, s.ff, lora.get("w1"))
        self.w3 = Linear(s.hidden, s.ff, lora.get("w3"))
        self.w2 = Linear(s.ff, s.hidden, lora.get("w2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, s: Lfm2Shape, kind: str, lora: Mapping[str, LoraSpec]) -> None:
        super().__init__()
        self.is_attention = kind == "full_attention"
        self.operator_norm = RMSNorm(s.hidden, s.eps)
        self.ffn_norm = RMSNorm(s.hidden, s.eps)
        if self.is_attention:
            self.self_attn = Attention(s, lora)
        else:
            self.conv = ShortConv(s, lora)
        self.feed_forward = FeedForward(s, lora)

    def forward(self, x, pos, fresh, cos, sin):
        h = self.operator_norm(x)
        h = self.self_attn(h, pos, cos, sin) if self.is_attention else self.conv(h, fresh)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x))


class Lfm2(nn.Module):
    def __init__(self, s: Lfm2Shape, lora: Mapping[str, LoraSpec] | None = None) -> None:
        super().__init__()
        lora = lora or {}
        self.shape = s
        self.embed_tokens = nn.Embedding(s.vocab, s.hidden)
        self.layers = nn.ModuleList(Block(s, t, lora) for t in s.layer_types)
        self.embedding_norm = RMSNorm(s.hidden, s.eps)
        self.lm_head = nn.Linear(s.hidden, s.vocab, bias=False)
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float64) / s.head_dim))
        ang = torch.outer(torch.arange(s.context, dtype=torch.float64), inv)
        ang = torch.cat([ang, ang], dim=-1)  # rotate_half layout: the same angle for i and i + d/2
        self.register_buffer("rope_cos", ang.cos().float(), persistent=False)
        self.register_buffer("rope_sin", ang.sin().float(), persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        pos = input_pos[0].item()
        torch._check_is_size(pos)
        torch._check(pos + n <= self.shape.context)
        cos = self.rope_cos.narrow(0, pos, n).view(1, n, 1, -1)
        sin = self.rope_sin.narrow(0, pos, n).view(1, n, 1, -1)
        fresh = (input_pos > 0).to(torch.float32)  # 0 at the start of a sequence: drop stale conv state
        h = self.embed_tokens(tokens)
        for layer in self.layers:
            h = layer(h, pos, fresh, cos, sin)
        h = self.embedding_norm(h[:, -1, :])  # the runner samples from the last position only
        return self.lm_head(h)


# -- weights -------------------------------------------------------------------------------------------------
def _dest(hf: str) -> list[tuple[str, slice | None]]:
    """HF LFM2 tensor name -> (name in ``Lfm2``, row slice) pairs; in_proj is split into B, C, x."""
    name = hf.removeprefix("model.")
    if name == "embedding_norm.weight" or name.startswith("embed_tokens.") or name == "lm_head.weight":
        return [(name, None)]
    if name.endswith("conv.in_proj.weight"):
        stem = name.removesuffix("in_proj.weight")
        return [(f"{stem}{p}.base.weight", i) for i, p in enumerate(("B_proj", "C_proj", "x_proj"))]
    if name.endswith("conv.conv.weight"):
        return [(name.replace("conv.conv.weight", "conv.weight"), None)]
    if name.endswith("_layernorm.weight") or name.endswith("_norm.weight"):
        return [(name, None)]
    if name.endswith(".weight"):
        return [(name.removesuffix(".weight") + ".base.weight", None)]
    raise KeyError(hf)


def load_weights(model: Lfm2, weights: Mapping[str, np.ndarray]) -> None:
    """Copy HF-named float32 weights into ``model``; every parameter must be covered exactly once."""
    params = dict(model.named_parameters())
    seen: set[str] = set()
    d = model.shape.hidden
    for hf, array in weights.items():
        if hf == "lm_head.weight" and "lm_head.weight" not in params:
            continue
        for name, part in _dest(hf):
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if part is not None:
                t = t[part * d : (part + 1) * d]
            if name not in params:
                raise KeyError(f"no parameter {name} for {hf}")
            with torch.no_grad():
                params[name].copy_(t.reshape(params[name].shape))
            seen.add(name)
    if "lm_head.weight" not in weights:  # tied: LFM2 checkpoints omit lm_head
        with torch.no_grad():
            model.lm_head.weight.copy_(model.embed_tokens.weight)
        seen.add("lm_head.weight")
    missing = sorted(n for n in params if n not in seen and ".lora_" not in n)
    if missing:
        raise KeyError(f"weights missing for {missing[:5]}")


def load_lora(model: Lfm2, tensors: Mapping[str, np.ndarray]) -> None:
    """PEFT names (``...<module>.lora_A.weight``) -> the separate LoRA branches; in_proj's B is split in three."""
    params = dict(model.named_parameters())
    d = model.shape.hidden
    for key, array in tensors.items():
        module, ab = key.rsplit(".lora_", 1)
        module = module.removeprefix("base_model.model.")
        which = "lora_a" if ab.startswith("A") else "lora_b"
        for name, part in _dest(module + ".weight"):
            target = name.replace(".base.weight", f".{which}.weight")
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if part is not None and which == "lora_b":
                t = t[part * d : (part + 1) * d]
            with torch.no_grad():
                params[target].copy_(t)


def example_inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(1, n + 1, dtype=torch.long).view(1, n), torch.tensor([0], dtype=torch.long)


def lora_modules(targets: Sequence[str], rank: int, scale: float) -> dict[str, LoraSpec]:
    return {t: LoraSpec(rank, scale) for t in targets}
