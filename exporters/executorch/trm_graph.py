"""One TRM/HRM supervision step rewritten for XNNPACK: the same numbers as the reference's ``forward``, built from
its weights, with every op after the two embedding gathers inside one XNNPACK delegate.

The reference traced as is leaves about 300 ops outside XNNPACK (RMSNorm's ``mean.dim``, RoPE's slices and
broadcasts, the head split, the gate/up chunk, the prefix slice of the logits) and each gap is a partition
boundary: 164 partitions and ~10 minutes of lowering on the fixture model.  Here:

* RMSNorm's mean of squares is a matmul with a constant ``1/d`` column (XNNPACK's ``mean.dim`` only does 4-D
  global pooling);
* RoPE runs on the flat [B, T, heads*head_dim] projections: ``rotate_half`` per head is a matmul with a constant
  block-diagonal signed permutation (exact: one ±1 term per output), the cos/sin tables are constants for the
  fixed T, tiled over heads — no arange, no slices;
* ``qkv_proj`` and ``gate_up_proj`` become separate q/k/v and gate/up linears (rows of the same weights, so
  per-channel and per-group quantisation give the same values); slicing a tensor with a dynamic batch is not
  delegated, a linear is;
* heads are split and merged with views whose only unknown size is written ``-1`` (XNNPACK reshapes take one
  inferred dimension, never a symbolic one), attention is two ``bmm`` over [B*heads, T, head_dim];
* SiLU is ``x * sigmoid(x)`` (XNNPACK has sigmoid, not silu);
* the prefix positions are dropped from the logits, and position 0 taken for the halting head, by matmuls with
  constant 0/1 selection matrices over the sequence axis (exact), and the two q outputs are two one-row linears.

Only the token / puzzle-embedding gathers (and, with a prefix, nothing else) run outside the delegate.
Numerics: identical to the reference up to float summation order (the norms' means, the GEMMs' blocking).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.families.trm.reference import LEARNED_POS_SCALE, rope_tables


def _linear_from(src: nn.Linear, rows: slice | None = None) -> nn.Linear:
    """A float32 copy of ``src`` (optionally only output rows ``rows``); a fresh module, so quantising it never
    touches the reference."""
    w = src.weight.detach().float()
    b = None if src.bias is None else src.bias.detach().float()
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    return out


def rotate_half_matrix(heads: int, head_dim: int) -> torch.Tensor:
    """R [heads*head_dim]^2 with ``x @ R.T`` == rotate_half of every head of x (``cat(-x2, x1)`` per head)."""
    half = head_dim // 2
    r = torch.zeros(heads * head_dim, heads * head_dim)
    for h in range(heads):
        o = h * head_dim
        for i in range(half):
            r[o + i, o + i + half] = -1.0
            r[o + i + half, o + i] = 1.0
    return r


class RMSNorm(nn.Module):
    """Weightless RMSNorm over the last axis: ``x * rsqrt(mean(x*x) + eps)``, the mean as a matmul and eps as
    its bias (a scalar constant would become a 0-d tensor that XNNPACK leaves outside the delegate)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        # never quantised: buffers through F.linear, not an nn.Linear
        self.register_buffer("mean_col", torch.full((1, dim), 1.0 / dim), persistent=False)
        self.register_buffer("eps", torch.full((1,), float(eps)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(F.linear(x * x, self.mean_col, self.eps))


class SwiGLU(nn.Module):
    def __init__(self, src: Any) -> None:
        super().__init__()
        inter = src.down_proj.in_features
        self.gate_proj = _linear_from(src.gate_up_proj, slice(0, inter))
        self.up_proj = _linear_from(src.gate_up_proj, slice(inter, 2 * inter))
        self.down_proj = _linear_from(src.down_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        return self.down_proj(gate * torch.sigmoid(gate) * self.up_proj(x))


class Attention(nn.Module):
    """Non-causal attention over the fixed T; x [B, T, hidden]."""

    def __init__(self, src: Any, total: int, rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        super().__init__()
        self.heads, self.head_dim, self.total = src.heads, src.head_dim, total
        width = self.heads * self.head_dim
        self.q_proj = _linear_from(src.qkv_proj, slice(0, width))
        self.k_proj = _linear_from(src.qkv_proj, slice(width, 2 * width))
        self.v_proj = _linear_from(src.qkv_proj, slice(2 * width, 3 * width))
        self.o_proj = _linear_from(src.o_proj)
        self.register_buffer("scale", torch.full((1,), 1.0 / math.sqrt(self.head_dim)), persistent=False)
        self.rope = rope is not None
        if rope is not None:
            cos, sin = rope  # [T, head_dim] -> [T, heads*head_dim]: the same angles for every head
            self.register_buffer("cos", cos.repeat(1, self.heads).contiguous(), persistent=False)
            self.register_buffer("sin", sin.repeat(1, self.heads).contiguous(), persistent=False)
            self.register_buffer("rot", rotate_half_matrix(self.heads, self.head_dim), persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, heads*hd] -> [B*heads, T, hd]."""
        x = x.view(-1, self.total, self.heads, self.head_dim).permute(0, 2, 1, 3)
        # contiguous() then view(-1, ...): a reshape of the permuted tensor would trace a symbolic size
        return x.contiguous().view(-1, self.total, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.rope:
            q = q * self.cos + F.linear(q, self.rot) * self.sin
            k = k * self.cos + F.linear(k, self.rot) * self.sin
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        scores = torch.bmm(q, k.permute(0, 2, 1)) * self.scale
        out = torch.bmm(torch.softmax(scores, dim=-1), v)  # [B*heads, T, hd]
        out = out.view(-1, self.heads, self.total, self.head_dim).permute(0, 2, 1, 3)
        return self.o_proj(out.contiguous().view(-1, self.total, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, src: Any, total: int, rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        super().__init__()
        self.use_mlp_t = src.use_mlp_t
        hidden = src.mlp.down_proj.out_features
        if self.use_mlp_t:
            self.mlp_t = SwiGLU(src.mlp_t)
            self.norm_t = RMSNorm(total, src.eps)  # over the sequence axis, as the reference
        else:
            self.self_attn = Attention(src.self_attn, total, rope)
        self.norm_mix = RMSNorm(hidden, src.eps)
        self.mlp = SwiGLU(src.mlp)
        self.norm_mlp = RMSNorm(hidden, src.eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.use_mlp_t:
            ht = h.permute(0, 2, 1)
            h = self.norm_t(ht + self.mlp_t(ht)).permute(0, 2, 1)
        else:
            h = self.norm_mix(h + self.self_attn(h))
        return self.norm_mlp(h + self.mlp(h))


class Level(nn.Module):
    def __init__(self, src: Any, total: int, rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(b, total, rope) for b in src.layers)

    def forward(self, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        h = h + injection
        for layer in self.layers:
            h = layer(h)
        return h


class Step(nn.Module):
    """``forward(z_H, z_L, inputs, puzzle_identifiers) -> (z_H', z_L', logits, q_halt_logits, q_continue_logits)``,
    the reference's one supervision step for puzzles of ``length`` tokens (shapes as its ``forward``)."""

    def __init__(self, ref: Any, length: int) -> None:
        super().__init__()
        cfg = ref.config
        hidden = int(cfg.hidden_size)
        self.hidden, self.prefix_len, self.length = hidden, int(ref.prefix_len), int(length)
        total = self.prefix_len + self.length
        self.total = total
        self.h_cycles, self.l_cycles = int(cfg.H_cycles), int(cfg.L_cycles)
        self.embed_scale = float(ref.embed_scale)
        self.register_buffer("tok_table", ref.embed_tokens.embedding_weight.detach().float().clone(), persistent=False)
        self.has_puzzle = cfg.puzzle_emb_ndim > 0
        if self.has_puzzle:
            # zero-padded once to prefix_len*hidden: the reference's F.pad of every gathered row, done on the table
            pe = ref.puzzle_emb.weights.detach().float()
            self.register_buffer("puzzle_table", F.pad(pe, (0, self.prefix_len * hidden - pe.shape[1])).contiguous(),
                                 persistent=False)
        self.learned_pos = cfg.pos_encodings == "learned"
        if self.learned_pos:
            self.register_buffer("pos_table", ref.embed_pos.embedding_weight.detach().float()[:total].clone(),
                                 persistent=False)
        rope = None
        if cfg.pos_encodings == "rope":
            rope = rope_tables(total, hidden // cfg.num_heads, cfg.rope_theta)
        self.L_level = Level(ref.L_level, total, rope)
        self.H_level = Level(ref.H_level, total, rope) if ref.separate_h_level else None
        self.lm_head = _linear_from(ref.lm_head)
        self.q_halt = _linear_from(ref.q_head, slice(0, 1))
        self.q_continue = _linear_from(ref.q_head, slice(1, 2))
        # 0/1 matrices over the sequence axis: position 0 for the q head, the grid positions for the logits
        first = torch.zeros(1, total)
        first[0, 0] = 1.0
        self.register_buffer("select_first", first, persistent=False)
        if self.prefix_len:
            grid = torch.zeros(self.length, total)
            grid[torch.arange(self.length), self.prefix_len + torch.arange(self.length)] = 1.0
            self.register_buffer("select_grid", grid, persistent=False)

    def embed(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        x = F.embedding(inputs.to(torch.int64), self.tok_table)
        if self.has_puzzle:
            pe = F.embedding(puzzle_identifiers.to(torch.int64), self.puzzle_table)
            x = torch.cat((pe.view(-1, self.prefix_len, self.hidden), x), dim=1)
        if self.learned_pos:
            x = LEARNED_POS_SCALE * (x + self.pos_table)
        return self.embed_scale * x

    def forward(
        self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed(inputs, puzzle_identifiers)
        h_net = self.H_level if self.H_level is not None else self.L_level
        for _h in range(self.h_cycles):
            for _l in range(self.l_cycles):
                z_L = self.L_level(z_L, z_H + x)
            z_H = h_net(z_H, z_L)
        zt = z_H.permute(0, 2, 1)  # [B, hidden, T]
        grid = z_H if not self.prefix_len else F.linear(zt, self.select_grid).permute(0, 2, 1)
        logits = self.lm_head(grid)
        first = F.linear(zt, self.select_first).view(-1, self.hidden)
        return z_H, z_L, logits, self.q_halt(first).view(-1), self.q_continue(first).view(-1)
