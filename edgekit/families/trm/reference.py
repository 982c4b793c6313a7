"""The PyTorch reference of TRM (and, with a separate H network, of HRM): one supervision step and the ACT loop.

Written from the official code's behaviour, not its text: TinyRecursiveModels (commit e7b6871)
``models/recursive_reasoning/trm.py`` + ``models/layers.py``, and sapientinc/HRM (commit 42410da)
``models/hrm/hrm_act_v1.py``.  Facts it reproduces (each checked against ``../shared/fixtures/*-official``):

* Input embedding x [B, T, hidden], T = P + seq_len: token embedding; if ``puzzle_emb_ndim`` > 0 the puzzle
  vector ``puzzle_emb.weights[id]`` zero-padded at the end to P*hidden, viewed [P, hidden] and prepended;
  with learned positions ``0.707106781 * (x + embed_pos)`` (the official literal, not 1/sqrt 2 exactly);
  then everything, prefix included, times sqrt(hidden).
* One step (``forward``): for each of H_cycles: L_cycles times ``z_L = L_net(z_L + z_H + x)``, then
  ``z_H = H_net(z_H + z_L)``; TRM's H_net *is* L_net (one network), HRM's is ``H_level``.  The official code
  runs all but the last update without gradient; the order and values are the same.
* A network is ``h + injection`` then post-norm blocks: ``h = rms(h + mix(h)); h = rms(h + swiglu(h))``, RMSNorm
  without weight, eps ``rms_norm_eps``, computed in float32.  ``mix`` is non-causal self-attention with RoPE, or
  (``mlp_t``) a SwiGLU over the *sequence* axis whose norm is over the sequence axis too.
* Attention: ``qkv_proj`` viewed [B, T, 3*heads, head_dim] as query heads, key heads, value heads; RoPE in the
  rotate-half form (``cat(-x2, x1)``, frequencies duplicated ``cat(f, f)``) over positions 0..T-1, the prefix at
  0; scale 1/sqrt(head_dim); ``o_proj``.  SwiGLU: ``gate_up_proj`` chunked gate | up, ``down(silu(gate) * up)``.
* Heads: ``logits = lm_head(z_H)[:, P:]``; ``q = q_head(z_H[:, 0])`` in float32, q[..., 0] halt, q[..., 1]
  continue.  Position 0 is the first grid cell when there is no prefix (P = 0).
* ACT at evaluation (the official ``evaluate`` loop): the carry is reset once to H_init / L_init broadcast over
  batch and positions, then every row runs exactly ``halt_max_steps`` steps; Q values stop nothing in eval
  mode.  ``run(..., halt=True)`` applies the training-time halting rule without exploration instead
  (TRM with ``no_ACT_continue``: q_halt > 0; otherwise q_halt > q_continue), which is what a solver that stops
  early does.

Dtypes: the model computes in the dtype of its parameters (float32 by default; ``model.to(torch.bfloat16)``
mirrors the official bfloat16 ``forward_dtype``: weights cast to bf16, RMSNorm and RoPE in float32, q logits
returned as float32).  The module's state-dict keys are the official ones without the
``[_orig_mod.]model.inner.`` prefix (see ``checkpoint.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UnsupportedError
from edgekit.families.trm.config import swiglu_inter

# The official learned-position scale, written as a literal there; 1/sqrt(2) differs in the 10th digit.
LEARNED_POS_SCALE = 0.707106781


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, in float32 whatever x's dtype (official ``layers.rms_norm``)."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return x32.to(x.dtype)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim] float32 for the rotate-half form (official ``RotaryEmbedding``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, head_dim]; computed in float32 (the tables' dtype), returned in x's dtype."""
    x32 = x.to(torch.float32)
    out = x32 * cos.unsqueeze(-2) + _rotate_half(x32) * sin.unsqueeze(-2)
    return out.to(x.dtype)


class Embedding(nn.Module):
    """A lookup table whose parameter is named ``embedding_weight`` as in the official ``CastedEmbedding``."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding_weight = nn.Parameter(torch.zeros(rows, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight)


class PuzzleEmbedding(nn.Module):
    """Per-identifier vectors ``weights`` [num_puzzle_identifiers, puzzle_emb_ndim].

    A parameter here (the official code keeps it as a buffer trained by its own sign-SGD); the key is the same.
    """

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(rows, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weights)


class SwiGLU(nn.Module):
    """``down(silu(gate) * up)`` with ``gate_up_proj`` [2*inter, width] split gate | up; no biases."""

    def __init__(self, width: int, inter: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(width, 2 * inter, bias=False)
        self.down_proj = nn.Linear(inter, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Attention(nn.Module):
    """Non-causal multi-head attention, all positions, optional RoPE.  x [B, T, hidden] -> [B, T, hidden]."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.qkv_proj = nn.Linear(hidden, 3 * heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, 3 * self.heads, self.head_dim)
        q = qkv[:, :, : self.heads]
        k = qkv[:, :, self.heads : 2 * self.heads]
        v = qkv[:, :, 2 * self.heads :]
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # [B, heads, T, head_dim]
        # Plain matmul/softmax rather than SDPA: the same numbers (official: SDPA / flash-attn, default scale),
        # and every exporter lowers these three ops.
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Block(nn.Module):
    """Post-norm block: mixer (attention or MLP over the sequence axis) then SwiGLU over channels."""

    def __init__(self, config: Any, total_len: int | None) -> None:
        super().__init__()
        self.eps = float(config.rms_norm_eps)
        self.use_mlp_t = bool(config.mlp_t)
        if self.use_mlp_t:
            if total_len is None:
                raise UnsupportedError("the MLP-over-sequence variant (mlp_t) needs a known seq_len")
            self.mlp_t = SwiGLU(total_len, swiglu_inter(total_len, config.expansion))
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, swiglu_inter(config.hidden_size, config.expansion))

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if self.use_mlp_t:
            # Mixing over positions: the sequence axis becomes the feature axis, normed over positions too.
            ht = h.transpose(1, 2)
            h = rms_norm(ht + self.mlp_t(ht), self.eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h, rope), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """``layers`` applied to ``h + injection`` (the injection is added once, before the stack)."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(
        self, h: torch.Tensor, injection: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        h = h + injection
        for layer in self.layers:
            h = layer(h, rope)
        return h


class RecursiveReasoningModel(nn.Module):
    """TRM (``separate_h_level`` False) or HRM (True); ``forward`` is one supervision (ACT) step.

    ``forward(z_H, z_L, inputs, puzzle_identifiers) -> (z_H', z_L', logits, q_halt_logits, q_continue_logits)``:

    * z_H, z_L: [B, T, hidden] in the model's dtype (float32 by default), T = prefix_len + seq_len;
    * inputs: [B, seq_len] int32 or int64 token ids (official dataset encoding, e.g. Sudoku 0 pad, 1 blank,
      2.. digits); puzzle_identifiers: [B] int32 or int64 (ignored when ``puzzle_emb_ndim`` is 0);
    * logits: [B, seq_len, vocab_size] model dtype; q_halt_logits, q_continue_logits: [B] float32.

    No data-dependent Python control flow and no in-place state: it traces with torch.export / torch.onnx as is
    (the loop counts are config constants).  ``initial_state`` gives the reset carry.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        if config.vocab_size is None or config.num_puzzle_identifiers is None:
            raise UnsupportedError("the reference needs vocab_size and num_puzzle_identifiers (load it from a checkpoint)")
        if config.mlp_t or config.pos_encodings == "learned":
            if config.seq_len is None:
                raise UnsupportedError(
                    "this variant (mlp_t or learned positions) fixes the sequence length; give seq_len"
                )
        self.config = config
        hidden = config.hidden_size
        self.prefix_len = int(config.prefix_len)
        total = config.total_len
        self.embed_scale = math.sqrt(hidden)
        self.embed_tokens = Embedding(config.vocab_size, hidden)
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)
        self.q_head = nn.Linear(hidden, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "learned":
            self.embed_pos = Embedding(total, hidden)
        self.L_level = ReasoningModule([Block(config, total) for _ in range(config.L_layers)])
        self.separate_h_level = bool(config.separate_h_level)
        if self.separate_h_level:
            self.H_level = ReasoningModule([Block(config, total) for _ in range(config.H_layers)])
        self.register_buffer("H_init", torch.zeros(hidden))
        self.register_buffer("L_init", torch.zeros(hidden))
        # RoPE tables stay float32 and out of the state dict (the official buffers are non-persistent); kept as
        # plain attributes so that model.to(bfloat16) does not round them.
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.pos_encodings == "rope" and total is not None:
            self._rope = rope_tables(total, hidden // config.num_heads, config.rope_theta)

    # -- pieces ---------------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.embedding_weight.dtype

    def rope(self, total_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.pos_encodings != "rope":
            return None
        if self._rope is not None and self._rope[0].shape[0] == total_len:
            return self._rope
        return rope_tables(total_len, self.config.hidden_size // self.config.num_heads, self.config.rope_theta)

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """x [B, T, hidden], already scaled by sqrt(hidden)."""
        x = self.embed_tokens(inputs.to(torch.int64))
        if self.config.puzzle_emb_ndim > 0:
            hidden = self.config.hidden_size
            pe = self.puzzle_emb(puzzle_identifiers.to(torch.int64))
            pad = self.prefix_len * hidden - pe.shape[-1]
            if pad > 0:
                pe = F.pad(pe, (0, pad))
            x = torch.cat((pe.view(-1, self.prefix_len, hidden), x), dim=-2)
        if self.config.pos_encodings == "learned":
            x = LEARNED_POS_SCALE * (x + self.embed_pos.embedding_weight)
        return self.embed_scale * x

    def initial_state(self, batch_size: int, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The reset carry (z_H, z_L), each [batch, T, hidden]: H_init / L_init broadcast to every row and position."""
        n = self.config.seq_len if seq_len is None else seq_len
        if n is None:
            raise UnsupportedError("the sequence length is unknown: give seq_len")
        shape = (batch_size, n + self.prefix_len, self.config.hidden_size)
        return self.H_init.expand(shape).clone(), self.L_init.expand(shape).clone()

    # -- one supervision step -------------------------------------------------------------------------------------

    def forward(
        self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.input_embeddings(inputs, puzzle_identifiers)
        rope = self.rope(x.shape[1])
        h_net = self.H_level if self.separate_h_level else self.L_level
        for _h in range(self.config.H_cycles):
            for _l in range(self.config.L_cycles):
                z_L = self.L_level(z_L, z_H + x, rope)
            z_H = h_net(z_H, z_L, rope)
        logits = self.lm_head(z_H)[:, self.prefix_len :]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H, z_L, logits, q[..., 0], q[..., 1]

    step = forward

    def halts(self, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
        """The halting decision [B] bool of the official ACT wrapper, exploration left out."""
        if self.config.halt_on_continue:
            return q_halt > q_continue
        return q_halt > 0


@dataclass(frozen=True)
class RunResult:
    """What ``run`` computed.  Per-row values are taken at the step where that row stopped.

    logits [B, seq_len, vocab] float32; preds [B, seq_len] int64 (argmax); q_halt_logits, q_continue_logits [B]
    float32; steps [B] int64 (steps each row ran, 1..max_steps); ``*_per_step`` stack every step the loop ran
    ([N, ...], all rows, including rows already halted); z_H, z_L [B, T, hidden]: the carry after the last step.
    """

    logits: torch.Tensor
    preds: torch.Tensor
    q_halt_logits: torch.Tensor
    q_continue_logits: torch.Tensor
    steps: torch.Tensor
    logits_per_step: torch.Tensor
    q_halt_logits_per_step: torch.Tensor
    q_continue_logits_per_step: torch.Tensor
    halted_per_step: torch.Tensor
    z_H: torch.Tensor
    z_L: torch.Tensor


def _as_int_tensor(value: Any, what: str) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise UnsupportedError(f"{what} must be integer token ids, got dtype {t.dtype}")
    return t.to(torch.int64)


def check_inputs(model: RecursiveReasoningModel, inputs: Any, puzzle_identifiers: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch of puzzles for ``model``; returns (inputs [B, S] int64, puzzle_identifiers [B] int64).

    Raises UnsupportedError for a wrong rank or length, tokens outside [0, vocab_size), identifiers outside
    [0, num_puzzle_identifiers).
    """
    cfg = model.config
    x = _as_int_tensor(inputs, "inputs")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise UnsupportedError(f"inputs must be [batch, seq_len] token ids (one puzzle per row), got shape {tuple(x.shape)}")
    if cfg.seq_len is not None and x.shape[1] != cfg.seq_len:
        raise UnsupportedError(f"puzzles have {x.shape[1]} cells but this model takes {cfg.seq_len}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise UnsupportedError(f"token ids must lie in [0, {cfg.vocab_size - 1}]; got values from {lo} to {hi}")
    if puzzle_identifiers is None:
        ids = torch.zeros(x.shape[0], dtype=torch.int64)
    else:
        ids = _as_int_tensor(puzzle_identifiers, "puzzle_identifiers").reshape(-1)
        if ids.shape[0] != x.shape[0]:
            raise UnsupportedError(f"{ids.shape[0]} puzzle identifiers for {x.shape[0]} puzzles")
        if int(ids.min()) < 0 or int(ids.max()) >= cfg.num_puzzle_identifiers:
            raise UnsupportedError(
                f"puzzle identifiers must lie in [0, {cfg.num_puzzle_identifiers - 1}]; got {int(ids.min())}..{int(ids.max())}"
            )
    return x, ids


def run(
    model: RecursiveReasoningModel,
    inputs: Any,
    puzzle_identifiers: Any = None,
    max_steps: int | None = None,
    halt: bool = False,
) -> RunResult:
    """The evaluation loop: reset the carry once, then up to ``max_steps`` supervision steps.

    ``halt=False`` is the official evaluation (every row runs ``max_steps``, default ``halt_max_steps``);
    ``halt=True`` stops each row at the first step whose halting head says halt (``model.halts``) and the whole
    batch once every row has stopped.  inputs [B, seq_len] integer ids; puzzle_identifiers [B] (default 0).
    """
    steps_cap = model.config.halt_max_steps if max_steps is None else max_steps
    if isinstance(steps_cap, bool) or not isinstance(steps_cap, int) or steps_cap < 1:
        raise UnsupportedError(f"max_steps must be a positive integer, got {max_steps!r}")
    x, ids = check_inputs(model, inputs, puzzle_identifiers)
    b = x.shape[0]
    with torch.inference_mode():
        z_H, z_L = model.initial_state(b, x.shape[1])
        per_logits, per_qh, per_qc, per_halted = [], [], [], []
        done = torch.zeros(b, dtype=torch.bool)
        steps = torch.zeros(b, dtype=torch.int64)
        final_logits = final_qh = final_qc = None
        for i in range(steps_cap):
            z_H, z_L, logits, qh, qc = model(z_H, z_L, x, ids)
            logits = logits.to(torch.float32)
            stop = torch.full((b,), i + 1 >= steps_cap, dtype=torch.bool)
            if halt:
                stop = stop | model.halts(qh, qc)
            newly = stop & ~done
            if final_logits is None:
                final_logits, final_qh, final_qc = logits.clone(), qh.clone(), qc.clone()
            else:
                # Rows still running take this step's outputs; rows that stopped earlier keep theirs.
                live = ~done
                final_logits = torch.where(live.view(-1, 1, 1), logits, final_logits)
                final_qh = torch.where(live, qh, final_qh)
                final_qc = torch.where(live, qc, final_qc)
            steps = torch.where(~done, steps + 1, steps)
            done = done | newly
            per_logits.append(logits)
            per_qh.append(qh)
            per_qc.append(qc)
            per_halted.append(done.clone())
            if bool(done.all()):
                break
    assert final_logits is not None and final_qh is not None and final_qc is not None  # loop ran >= once
    return RunResult(
        logits=final_logits,
        preds=final_logits.argmax(-1),
        q_halt_logits=final_qh,
        q_continue_logits=final_qc,
        steps=steps,
        logits_per_step=torch.stack(per_logits),
        q_halt_logits_per_step=torch.stack(per_qh),
        q_continue_logits_per_step=torch.stack(per_qc),
        halted_per_step=torch.stack(per_halted),
        z_H=z_H,
        z_L=z_L,
    )
