"""LFM2 -> ExecuTorch: the graph edgekit lowers, ``forward(tokens [1, n], input_pos [1]) -> logits [1, vocab]``.

The program follows ExecuTorch's LLM runner conventions, so its own runners and demo apps run it unchanged: the
KV cache and the conv state live in mutable buffers (the custom ``llama::update_cache`` / ``llama::custom_sdpa``
kernels), ``n`` is dynamic (prefill is one call of up to ``get_max_seq_len`` tokens), and the metadata methods
``get_bos_id``, ``get_eos_ids``, ``get_max_seq_len``, ``get_max_context_len``, ``get_vocab_size``,
``get_n_layers``, ``use_kv_cache``, ``use_sdpa_with_kv_cache``, ``enable_dynamic_shape`` are present.  The
tokenizer ships as ``tokenizer.json`` (read by ExecuTorch's HF tokenizer), and ``params.json`` (export_llm's
schema) travels along.  The tied embedding / LM head table is stored once, in ``model.ptd`` (the program's data
file), where the head is float32 or int8 (``LanguageOptions.shares_embedding``).  8da4w gives each linear its own
int4 group size or int8 per channel from a sensitivity scan on the calibration text, within the byte budget
(``mixed``; the default, recorded in the manifest's ``mixed_precision`` and read back by ``file_weights``).

The graph is written so that XNNPACK can take as much of it as possible:

* RMSNorm's row mean is a matmul with a constant ``1/d`` column (XNNPACK's ``mean.dim`` only does 4-D global
  pooling), so every norm stays inside the delegate;
* RoPE's ``rotate_half`` is a matmul with a constant signed permutation (slices of a tensor with a dynamic
  dimension are not delegated);
* the conv layer concatenates its state and convolves without padding, so the main path needs no slicing;
  only the state update (a [1, d, L-1] copy) runs outside XNNPACK;
* the conv state is zeroed whenever ``input_pos == 0``, so a new sequence never sees the previous one's tail
  (the KV cache needs no reset: positions past ``input_pos`` are masked).

Thresholds were measured on the built-in trained model (``edgekit.recipes``).
"""


from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AdapterError, CheckpointError, UnsupportedError
from ...families.lfm2 import Lfm2Config
from .. import ExportJob
from . import ARTIFACT, LanguageOptions, lower, metadata, quant
from .structure import file_structure, record_build  # noqa: F401  (the structure check's hooks)

# registers llama::update_cache / llama::custom_sdpa for tracing
from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


_IN_PROJ = ("B_proj", "C_proj", "x_proj")  # HF's conv.in_proj rows, in order
Lora = Optional[Tuple[torch.Tensor, Sequence[torch.Tensor]]]  # (scale [1], factor inputs): adapters.branch


class Linear(nn.Module):
    """A bias-free linear; with ``lora_slots`` set (``adapters.assign_slots``) it adds its separate LoRA branch,
    whose factors are inputs of the program."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor, lora: Lora = None) -> torch.Tensor:
        from .adapters import branch

        return branch(self, x, self.base(x), lora)


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
    def __init__(self, s: Lfm2Config) -> None:
        super().__init__()
        hd = s.head_dim
        self.n_heads, self.n_kv, self.hd = s.num_attention_heads, s.num_key_value_heads, hd
        self.q_proj = Linear(s.hidden_size, s.num_attention_heads * hd)
        self.k_proj = Linear(s.hidden_size, s.num_key_value_heads * hd)
        self.v_proj = Linear(s.hidden_size, s.num_key_value_heads * hd)
        self.out_proj = Linear(s.num_attention_heads * hd, s.hidden_size)
        self.q_layernorm = RMSNorm(hd, s.norm_eps)
        self.k_layernorm = RMSNorm(hd, s.norm_eps)
        self.register_buffer("rot", rotate_half_matrix(hd), persistent=False)
        cache = (1, s.max_position_embeddings, s.num_key_value_heads, hd)  # the [B, S, H, D] layout llama::custom_sdpa reads
        self.register_buffer("k_cache", torch.zeros(cache), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache), persistent=False)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + F.linear(x, self.rot) * sin

    def forward(self, x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor, lora: Lora) -> torch.Tensor:
        _, n, _ = x.shape
        q = self.q_layernorm(self.q_proj(x, lora).view(1, n, self.n_heads, self.hd))
        k = self.k_layernorm(self.k_proj(x, lora).view(1, n, self.n_kv, self.hd))
        v = self.v_proj(x, lora).view(1, n, self.n_kv, self.hd)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        torch.ops.llama.update_cache(k, self.k_cache, pos)
        torch.ops.llama.update_cache(v, self.v_cache, pos)
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, pos, None, 0, True)
        return self.out_proj(out.reshape(1, n, self.n_heads * self.hd), lora)


class ShortConv(nn.Module):
    def __init__(self, s: Lfm2Config) -> None:
        super().__init__()
        d, k = s.hidden_size, s.conv_L_cache
        self.k = k
        # in_proj (d -> 3d, split B, C, x) as three linears: a split of a tensor with a dynamic dimension would
        # leave the delegate
        self.B_proj = Linear(d, d)
        self.C_proj = Linear(d, d)
        self.x_proj = Linear(d, d)
        self.out_proj = Linear(d, d)
        self.weight = nn.Parameter(torch.zeros(d, 1, k))  # depthwise kernel, HF's conv.conv.weight
        self.register_buffer("conv_state", torch.zeros(1, d, k - 1), persistent=False)

    def forward(self, x: torch.Tensor, fresh: torch.Tensor, lora: Lora) -> torch.Tensor:
        bx = (self.B_proj(x, lora) * self.x_proj(x, lora)).transpose(1, 2)  # [1, d, n]
        ext = torch.cat([self.conv_state * fresh, bx], dim=2)  # [1, d, n + k - 1]
        with torch.no_grad():
            self.conv_state.copy_(ext[:, :, -(self.k - 1) :])
        y = F.conv1d(ext, self.weight, groups=ext.shape[1])  # no padding: exactly n outputs
        return self.out_proj(self.C_proj(x, lora) * y.transpose(1, 2), lora)


class FeedForward(nn.Module):
    def __init__(self, s: Lfm2Config) -> None:
        super().__init__()
        self.w1 = Linear(s.hidden_size, s.intermediate_size)
        self.w3 = Linear(s.hidden_size, s.intermediate_size)
        self.w2 = Linear(s.intermediate_size, s.hidden_size)

    def forward(self, x: torch.Tensor, lora: Lora = None) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x, lora)) * self.w3(x, lora), lora)


class Block(nn.Module):
    def __init__(self, s: Lfm2Config, kind: str) -> None:
        super().__init__()
        self.is_attention = kind == "full_attention"
        self.operator_norm = RMSNorm(s.hidden_size, s.norm_eps)
        self.ffn_norm = RMSNorm(s.hidden_size, s.norm_eps)
        if self.is_attention:
            self.self_attn = Attention(s)
        else:
            self.conv = ShortConv(s)
        self.feed_forward = FeedForward(s)

    def forward(self, x, pos, fresh, cos, sin, lora: Lora = None):
        h = self.operator_norm(x)
        h = self.self_attn(h, pos, cos, sin, lora) if self.is_attention else self.conv(h, fresh, lora)
        x = x + h
        return x + self.feed_forward(self.ffn_norm(x), lora)


class Lfm2(nn.Module):
    """``lora_ranks`` (HF projection leaf -> branch rank): the program takes a third input, (scale [1], the
    factors of ``self.lora_slots`` in order) — see ``adapters``."""

    def __init__(self, s: Lfm2Config, lora_ranks: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.shape = s
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(Block(s, t) for t in s.layer_types)
        self.embedding_norm = RMSNorm(s.hidden_size, s.norm_eps)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)
        cos, sin = (torch.from_numpy(t) for t in s.rope_tables())
        # rotate_half layout: the same angle for i and i + d/2
        self.register_buffer("rope_cos", torch.cat([cos, cos], dim=-1), persistent=False)
        self.register_buffer("rope_sin", torch.cat([sin, sin], dim=-1), persistent=False)
        from .adapters import assign_slots

        self.lora_slots = assign_slots(self._linears(), dict(lora_ranks or {}))

    def _linears(self) -> list[tuple[Linear, str, tuple[int, int] | None]]:
        """(graph linear, HF module, B rows) of every projection; in_proj is B_proj, C_proj, x_proj."""
        d = self.shape.hidden_size
        out = []
        for name, m in self.named_modules():
            if isinstance(m, Linear):
                stem, leaf = name.rsplit(".", 1)
                part = None
                if leaf in _IN_PROJ:
                    part = _IN_PROJ.index(leaf)
                    hf = f"model.{stem}.in_proj"
                else:
                    hf = f"model.{name}"
                out.append((m, hf, (part * d, (part + 1) * d) if part is not None else None))
        return out

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor,
                lora: Optional[Tuple[torch.Tensor, ...]] = None) -> torch.Tensor:
        n = tokens.shape[1]
        pos = input_pos[0].item()
        torch._check_is_size(pos)
        torch._check(pos + n <= self.shape.max_position_embeddings)
        cos = self.rope_cos.narrow(0, pos, n).view(1, n, 1, -1)
        sin = self.rope_sin.narrow(0, pos, n).view(1, n, 1, -1)
        fresh = (input_pos > 0).to(torch.float32)  # 0 at the start of a sequence: drop stale conv state
        h = self.embed_tokens(tokens)
        branches = (lora[0], lora[1:]) if lora is not None else None
        for layer in self.layers:
            h = layer(h, pos, fresh, cos, sin, branches)
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
    raise CheckpointError(f"tensor {hf!r} has no place in the LFM2 graph; is this an LFM2 checkpoint?")


def load_weights(model: Lfm2, weights: Mapping[str, np.ndarray]) -> None:
    """Copy HF-named float32 weights into ``model``; every parameter must be covered exactly once."""
    params = dict(model.named_parameters())
    seen: set[str] = set()
    d = model.shape.hidden_size
    for hf, array in weights.items():
        if hf == "lm_head.weight" and "lm_head.weight" not in params:
            continue
        for name, part in _dest(hf):
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if part is not None:
                t = t[part * d : (part + 1) * d]
            if name not in params:
                raise CheckpointError(f"tensor {hf!r} has no place in the LFM2 graph (no parameter {name})")
            with torch.no_grad():
                params[name].copy_(t.reshape(params[name].shape))
            seen.add(name)
    if "lm_head.weight" not in weights:  # tied: LFM2 checkpoints omit lm_head
        with torch.no_grad():
            model.lm_head.weight.copy_(model.embed_tokens.weight)
        seen.add("lm_head.weight")
    missing = sorted(n for n in params if n not in seen and ".lora_" not in n)
    if missing:
        raise CheckpointError(f"the checkpoint has no weights for {', '.join(missing[:5])}")


def example_inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(1, n + 1, dtype=torch.long).view(1, n), torch.tensor([0], dtype=torch.long)


# -- export ----------------------------------------------------------------------------------------------------
PARAMS_FILE = "params.json"
DEFAULT_CONTEXT = 2048
EMBEDDING_BITS = {"none": None, "8": 8, "4": 4}
SHARED_DATA = "model"  # -> model.ptd: the tied embedding / LM head table, stored once
# ExecuTorch's ShortConvBlock hard-codes this kernel length, so export_llm can only rebuild models that use it
EXPORT_LLM_CONV_KERNEL = 3


def params_json(c: Lfm2Config) -> dict[str, Any]:
    """ExecuTorch ``ModelArgs`` fields (export_llm's ``params.json``); ``hidden_dim`` is the SwiGLU width *after*
    LFM2's feed-forward auto-adjust (``ModelArgs`` would otherwise recompute it from ``dim`` and get it wrong)."""
    return {
        "dim": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "vocab_size": c.vocab_size,
        "hidden_dim": c.intermediate_size,
        "norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "use_hf_rope": True,  # LFM2 rotates halves (rotate_half), not interleaved pairs
        "use_qk_norm": True,
        "qk_norm_before_rope": True,
        "layer_types": list(c.layer_types),
    }


def context_length(c: Any, requested: int | None) -> int:
    """The program's context in tokens: ``--max-context`` (``requested``), default ``DEFAULT_CONTEXT`` capped by
    the model's ``max_position_embeddings``.  Raises ``UnsupportedError`` above the model's context."""
    limit = c.max_position_embeddings
    if requested is None:
        return min(DEFAULT_CONTEXT, limit)
    if requested > limit:
        raise UnsupportedError(
            f"executorch --max-context {requested} exceeds the model's context length {limit}; pass at most {limit}"
        )
    return requested


def runner_metadata(c: Lfm2Config, max_context: int) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runners read (names are theirs)."""
    out: dict[str, Any] = {
        "get_max_seq_len": max_context - 1,  # tokens per forward call (the dynamic dimension's bound)
        "get_max_context_len": max_context,
        "get_vocab_size": c.vocab_size,
        "get_n_layers": c.num_hidden_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    if c.bos_token_id is not None:
        out["get_bos_id"] = int(c.bos_token_id)
    if c.eos_token_ids:
        out["get_eos_ids"] = [int(e) for e in c.eos_token_ids]
    return out


def _base_weights(job: ExportJob) -> dict[str, np.ndarray]:
    """The checkpoint's own (unmerged) weights as float32 numpy, for separate-LoRA exports."""
    from safetensors.torch import load_file

    out: dict[str, np.ndarray] = {}
    for f in job.checkpoint.files:
        out.update({k: v.float().numpy() for k, v in load_file(str(f)).items()})
    return out


def _lora(job: ExportJob) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """(LoRA branch rank per HF projection leaf, factors per adapter name) of the plan's separate adapters.  A
    branch's rank is the largest any adapter uses on that leaf (smaller ones are zero-padded, exactly); PEFT's
    scaling is folded into B (``edgekit.adapters.factors``); the run-time scale is the program's input."""
    from ...adapters import factors
    from ...lora import open_adapter

    if not job.plan.adapters:
        raise UnsupportedError("executorch --lora-mode separate needs --adapter")
    per_name = {name: factors(open_adapter(path, job.checkpoint)) for name, path in job.plan.adapters}
    return lora_ranks(per_name.values()), per_name


def lora_ranks(all_factors: Any) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for f in all_factors:
        for module, lf in f.items():
            leaf = module.rsplit(".", 1)[-1]
            ranks[leaf] = max(ranks.get(leaf, 0), lf.rank)
    return dict(sorted(ranks.items()))


def _versions() -> dict[str, str]:
    from ...versions import versions

    return versions("executorch", "torchao")


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    options: LanguageOptions = job.plan.options
    spec = job.plan.quant
    lq = quant.linear_quant(spec, options)
    head_bits = options.lm_head_bits(spec)
    shared = options.shares_embedding(spec)
    separate = options.lora_mode == "separate"
    max_context = context_length(job.config, options.max_context)
    cfg = job.config.with_context(max_context)

    t0 = time.perf_counter()
    lora_ranks_, lora_factors = _lora(job) if separate else ({}, {})
    job.progress(f"building the ExecuTorch LFM2 graph (context {max_context}, LoRA {options.lora_mode})")
    torch.manual_seed(0)
    eager = Lfm2(cfg, lora_ranks_)
    load_weights(eager, _base_weights(job) if separate else job.weights)

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    per_linear: dict[str, quant.LinearQuant] = {}
    mixed_summary, calibration, gptq_summary = None, None, None
    if lq is not None and options.mixes(spec):
        from . import mixed

        if job.tensor_types is not None:  # a recorded assignment (the structure check's rebuild)
            per_linear = {n: mixed.linear_quant(t, options.algorithm(spec)) for n, t in job.tensor_types.items()}
        else:
            per_linear, mixed_summary, calibration = mixed.plan(job, linear_weights(job.weights), lq)
        seconds["mixed_precision"] = time.perf_counter() - t

    t = time.perf_counter()
    eager = eager.eval()
    with torch.no_grad():
        emb_bits = EMBEDDING_BITS[options.embedding_quant]
        if emb_bits is not None:
            quant.quantize_embedding(eager, "embed_tokens", emb_bits)
        if lq is not None:
            overrides = {"lm_head": lq.at_bits(head_bits)} if head_bits != lq.weight_bits else {}
            overrides.update(graph_overrides(per_linear))
            job.progress(f"quantising linear layers ({lq.describe()}, LM head int{head_bits}"
                         + (f", {len(per_linear)} of them mixed precision" if mixed_summary else "") + ")")
            quant.quantize_linears(eager, lq, overrides)
        if lq is not None and lq.algorithm == "gptq":
            t_gptq = time.perf_counter()
            gptq_summary, gptq_calibration = _gptq(job, eager, per_linear)
            calibration = _merge_calibration(calibration, gptq_calibration)
            seconds["gptq"] = time.perf_counter() - t_gptq
        if shared:
            quant.share_embedding_with_head(eager, "embed_tokens", "lm_head", head_bits)
    seconds["quantize"] = time.perf_counter() - t

    def tag(name: str) -> str | None:
        """The .ptd file a constant goes to (None: inside the .pte).  The shared table is tagged under both its
        uses (gather and LM head); the serialiser stores byte-identical data once."""
        return SHARED_DATA if ("embed_tokens" in name or "lm_head" in name) else None

    from . import adapters as adapter_inputs

    slots = eager.lora_slots
    tokens = torch.export.Dim("tokens", min=1, max=max_context - 1)
    inputs, dims = example_inputs(), ({1: tokens}, {0: 1})
    if separate:  # (scale, factors...) as the third input: adapters.branch
        lora_in = adapter_inputs.example_inputs(slots)
        inputs, dims = inputs + (lora_in,), dims + (tuple(None for _ in lora_in),)
    result = lower.lower(
        eager, inputs, dims, out_dir, ARTIFACT, runner_metadata(cfg, max_context), job.progress,
        tag if shared else None,
    )
    adapter_files = adapter_inputs.write_all(slots, lora_factors, out_dir) if separate else {}
    params_note = None
    if job.config.conv_L_cache == EXPORT_LLM_CONV_KERNEL:
        (out_dir / PARAMS_FILE).write_text(json.dumps(params_json(job.config), indent=2) + "\n")
    else:
        params_note = (
            f"no {PARAMS_FILE}: conv_L_cache={job.config.conv_L_cache}, and export_llm's LFM2 model hard-codes "
            f"{EXPORT_LLM_CONV_KERNEL} (the .pte itself does not need it)"
        )
    return {
        "file": ARTIFACT,
        "data_files": [f for f in result.files if f.endswith(".ptd")],
        "params": None if params_note else PARAMS_FILE,
        **({"params_note": params_note} if params_note else {}),
        "backend": "xnnpack",
        "versions": _versions(),
        "linear_quant": (lq.describe() + f", LM head int{head_bits}") if lq else "float32",
        "group_size": lq.group_size if lq else None,
        "embedding_quant": options.embedding_quant,
        "shared_embedding": shared,
        "lora_mode": options.lora_mode,
        "calibration": calibration,
        "mixed_precision": mixed_summary,
        **({"gptq": gptq_summary} if gptq_summary else {}),
        **({"lora_branches": lora_ranks_, "lora_inputs": [sl.to_dict() for sl in slots]} if separate else {}),
        **({"adapter_files": adapter_files} if separate else {}),
        "max_context": max_context,
        "max_seq_len": max_context - 1,
        # prefill is one forward call for any prompt up to max_seq_len tokens (no static shapes needed)
        "dynamic_shapes": True,
        "delegated_partitions": result.delegated_partitions,
        "non_delegated_ops": result.non_delegated_ops,
        "stage_seconds": {k: round(v, 2) for k, v in {**seconds, **result.seconds}.items()},
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


SPECIAL = ("model.embed_tokens.weight", "lm_head.weight")


def gptq_quants(weights: Mapping[str, np.ndarray], options: LanguageOptions, spec: Any,
                per_linear: Mapping[str, quant.LinearQuant]) -> dict[str, tuple[np.ndarray, quant.LinearQuant]]:
    """Checkpoint name -> (float32 [out, in] weight, ``LinearQuant``) of every linear the export quantises, the LM
    head included (the tied table where the checkpoint has no ``lm_head.weight``): what GPTQ writes codes for
    (none for a float export)."""
    lq = quant.linear_quant(spec, options)
    if lq is None:
        return {}
    out = {n: (weights[n], per_linear.get(n, lq)) for n in linear_weights(weights)}
    out["lm_head.weight"] = (weights.get("lm_head.weight", weights["model.embed_tokens.weight"]),
                             lq.at_bits(options.lm_head_bits(spec)))
    return {n: (w, q) for n, (w, q) in out.items() if q.fits(w.shape[1])}


def _gptq(job: ExportJob, eager: Lfm2, per_linear: Mapping[str, quant.LinearQuant]) -> tuple[dict[str, Any],
                                                                                                 dict[str, Any]]:
    """GPTQ's codes for every quantised linear of ``eager`` and the LM head (``gptq.apply``; Hessians over the
    calibration text).  Returns the manifest's ``gptq`` and ``calibration`` entries."""
    from ...calibration import job_windows
    from . import gptq

    todo = gptq_quants(job.weights, job.plan.options, job.plan.quant, per_linear)
    d = eager.shape.hidden_size
    parts = {n: [(g.removesuffix(".weight"), slice(i * d, (i + 1) * d) if i is not None else None)
                 for g, i in _dest(n)] for n in todo if n != "lm_head.weight"}
    parts["lm_head.weight"] = [("lm_head", None)]
    text, windows = job_windows(job)
    job.progress(f"GPTQ: input Hessians of {len(todo)} linears over {text.source} (float64)")
    hs = gptq.hessians(job.reference, [gptq.module_of(n) for n in todo], windows)
    job.progress("GPTQ: codes under torchao's scales")
    gptq.apply(eager, todo, {n: parts[n] for n in todo}, hs)
    return gptq.summary(sorted(todo), windows, text.sha256), {**text.summary(sum(map(len, windows))),
                                                               "method": "GPTQ input Hessians"}


def _merge_calibration(entry: dict[str, Any] | None, gptq_entry: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``calibration`` entry of an export that also scanned (``entry``) with GPTQ's added."""
    if entry is None:
        return gptq_entry
    return {**entry, "method": f"{entry.get('method')}; {gptq_entry['method']}"}


def runner_failures(root: Path, manifest: Mapping[str, Any], cfg: Any, what: str) -> list[str]:
    """``metadata.check_methods`` of the bundle's program against ``runner_metadata`` for ``cfg`` and the plan's
    ``--max-context``, and ``metadata.check_rope`` (its RoPE tables, every row of that context)."""
    max_context = context_length(cfg, (manifest["plan"].get("options") or {}).get("max_context"))
    path = root / manifest["artifact"]["file"]
    head_dim = int(cfg.hidden_size) // int(cfg.num_attention_heads)
    return [*metadata.check_methods(path, runner_metadata(cfg, max_context), what),
            *metadata.check_rope(path, float(cfg.rope_theta), head_dim, max_context)]


def file_constants(root: Path, manifest: Mapping[str, Any], checkpoint: Any) -> list[str]:
    """The metadata check (``edgekit.tensorcheck``): the program's runner methods (``runner_metadata``: context,
    vocabulary, layers, bos/eos ids) read back from the ``.pte`` and, where the bundle has one, ``params.json``,
    against what this exporter writes for ``checkpoint`` and the plan's ``--max-context``."""
    from .. import sidecars

    cfg = checkpoint.model_config
    what = f"the checkpoint {checkpoint.path.name}'s config"
    fails = runner_failures(root, manifest, cfg, what)
    if cfg.conv_L_cache == EXPORT_LLM_CONV_KERNEL:
        fails += sidecars.check_json(root / PARAMS_FILE, params_json(cfg), what)
    return fails


def linear_weights(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Checkpoint names of the [out, in] linear weights the linear quant covers (not the embedding / LM head)."""
    return [n for n, w in weights.items() if w.ndim == 2 and n not in SPECIAL]


def graph_overrides(per_linear: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint name -> config (``mixed.plan``) as ``quantize_linears`` overrides: graph module -> config.
    in_proj's three graph linears (B, C, x) take its one type: the scan measured the checkpoint's tensor, and a
    row-wise scheme quantises each of its row blocks as it would the whole."""
    out: dict[str, Any] = {}
    for hf, q in per_linear.items():
        for name, _part in _dest(hf):
            out[name.removesuffix(".weight")] = q
    return out


def file_weights(root: Path, manifest: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                 model: Any) -> Any:
    """The export's quantised weights under the checkpoint's names (``edgekit.tensorcheck``), re-derived with
    the bundle's recorded quant and options (``readback``: a ``.pte``'s XNNPACK weights are not parsed).  A
    ``--lora-mode separate`` program holds the base weights (``weights``: the base reference's, also under an
    adapter switched in, whose branches stay float in the program as in the reference).  ``model``: the float
    reference, whose input Hessians re-derive the codes of a bundle GPTQ wrote (``gptq.readback_hessians``)."""
    from ...families import Family
    from ...plan import Format
    from ...recipes import RECIPES
    from ...tensorcheck import ReadTensor
    from . import readback

    recipe = RECIPES.get(Family.LFM2, Format.EXECUTORCH)
    spec = recipe.quant(manifest["plan"]["quant"]["name"])
    options = recipe.options.from_dict(manifest["plan"].get("options") or {})
    from . import mixed

    from . import gptq

    types = (manifest.get("artifact", {}).get("mixed_precision") or {}).get("tensor_types") or {}
    per_linear = {n: mixed.linear_quant(t, options.algorithm(spec)) for n, t in types.items()}
    hessians = {}
    if model is not None:
        hessians = gptq.readback_hessians(manifest, model, options, spec,
                                          gptq_quants(weights, options, spec, per_linear))
    read = readback.read(weights, options, spec, linear_weights(weights), per_linear, hessians=hessians)
    covered = {t.source for t in read}
    read += [ReadTensor(n, n, w, "F32") for n, w in weights.items() if n not in covered]
    return read, {}
