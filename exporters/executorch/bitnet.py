"""BitNet b1.58 -> ExecuTorch (XNNPACK): ``forward(tokens [1, n], input_pos [1]) -> logits [1, vocab]``.

Same program conventions as the LFM2 pair (``lfm2.py``): the KV cache in mutable buffers updated by
``llama::update_cache`` / read by ``llama::custom_sdpa``, a dynamic token dimension (prefill is one call), the
runner metadata methods, the tied embedding / LM head table stored once in ``model.ptd``.  The block is
transformers' ``BitNetDecoderLayer``: GQA attention with rotate-half RoPE, ``attn_sub_norm`` before ``o_proj``,
``down(ffn_sub_norm(act(gate(x)) * up(x)))`` with ``act`` SiLU or squared ReLU.

Ternary projections (W = codes x scale, one scale per tensor):

* ``fp32``: float weights codes x scale and float activations: the reference's ``activations="float"`` mode.
* ``8da4w``: XNNPACK's dynamically quantised GEMM (int8 activations per token, int4 weights per output channel).
  A ternary row is exactly an int4 row with scale ``scale``, but torchao's symmetric int4 rule maps max|w| to
  -8/+7 with scale max|w| / 7.5, so ``codes x scale`` would come back as {-8, 0, 7} x scale/7.5 (+1 is 7 %
  small).  The quantised tensors' integers and scales are therefore overwritten with the codes and the scale
  themselves after ``quant.quantize_linears``: the weights in the file are the ternary weights, bit for bit.
  XNNPACK's activations are asymmetric per-token int8 (a zero point, scale (max - min) / 255), close to but not
  BitNet's symmetric absmax int8 (scale max|x| / 127): that difference is what the verification measures.

The LM head (tied to the embedding, a float matrix in BitNet) is int8 per channel for 8da4w (``head_bits``), and
the embedding reads its bytes, as in the LFM2 pair.

``--lora-mode separate``: the base stays exactly ternary (the same program as without an adapter) and every
adapted projection gets a float32 LoRA branch on its *unquantised* input (before ``ActQuant`` and before
XNNPACK's int8 activations), whose factors and scale are inputs of ``forward`` (``adapters``) — what the unmerged
reference (``families.bitnet.lora.unmerged_reference``: peft's ``lora.Linear`` beside the quantised layer)
computes; no re-ternarisation, so lossless against it.

``--bitnet-activations a4.8``: XNNPACK has no 4-bit activation kernel, so each projection's input goes through
the reference's own quantise/dequantise (``reference.fake_quant``: absmean int4 for q/k/v and gate/up, absmax int8
with a top-K mask for o_proj, absmax int8 for down_proj) as portable ops before the matmul; 8da4w's kernel then
re-quantises those values to its int8 grid.  Speed is a8's plus those ops.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import InternalError, UnsupportedError
from edgekit.families.bitnet.config import BitNetConfig
from edgekit.families.bitnet.reference import activation_modes, fake_quant
from edgekit.families.bitnet.weights import BitNetWeights

from .. import ExportJob
from . import ARTIFACT, LanguageOptions, adapters, lower, quant
from .structure import file_structure, record_build  # noqa: F401  (the structure check's hooks)
from .lfm2 import (
    EMBEDDING_BITS, Lora, RMSNorm, _versions, context_length, example_inputs, lora_ranks, rotate_half_matrix,
    runner_failures, runner_metadata,
)

# registers llama::update_cache / llama::custom_sdpa for tracing
from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401

SHARED_DATA = "model"  # -> model.ptd: the tied embedding / LM head table, stored once
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_name(layer: int, leaf: str) -> str:
    block = "mlp" if leaf in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{leaf}.weight"


def _module(layer: int, leaf: str) -> str:
    """The projection's name in ``BitNet``."""
    return hf_name(layer, leaf).removeprefix("model.").removesuffix(".weight")


class ActQuant(nn.Module):
    """The activations one projection sees in the reference's mode (``reference.fake_quant``); identity for
    "float" (a8 is left to XNNPACK's own dynamic int8 quantisation)."""

    def __init__(self, mode: str = "float", topk: float | None = None) -> None:
        super().__init__()
        self.mode, self.topk = mode, topk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mode == "float" else fake_quant(x, self.mode, self.topk)


class Attention(nn.Module):
    def __init__(self, c: BitNetConfig, context: int) -> None:
        super().__init__()
        self.qkv_act, self.o_act = ActQuant(), ActQuant()
        hd = c.head_dim
        self.n_heads, self.n_kv, self.hd = c.num_attention_heads, c.num_key_value_heads, hd
        self.q_proj = nn.Linear(c.hidden_size, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv * hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, c.hidden_size, bias=False)
        self.attn_sub_norm = RMSNorm(self.n_heads * hd, c.rms_norm_eps)
        self.register_buffer("rot", rotate_half_matrix(hd), persistent=False)
        cache = (1, context, self.n_kv, hd)  # the [B, S, H, D] layout llama::custom_sdpa reads
        self.register_buffer("k_cache", torch.zeros(cache), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache), persistent=False)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + F.linear(x, self.rot) * sin

    def forward(self, x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor, lora: Lora = None) -> torch.Tensor:
        _, n, _ = x.shape
        xq = self.qkv_act(x)  # the LoRA branches read x itself (unquantised)
        q = adapters.branch(self.q_proj, x, self.q_proj(xq), lora)
        k = adapters.branch(self.k_proj, x, self.k_proj(xq), lora)
        v = adapters.branch(self.v_proj, x, self.v_proj(xq), lora)
        q = self.rope(q.view(1, n, self.n_heads, self.hd), cos, sin)
        k = self.rope(k.view(1, n, self.n_kv, self.hd), cos, sin)
        v = v.view(1, n, self.n_kv, self.hd)
        torch.ops.llama.update_cache(k, self.k_cache, pos)
        torch.ops.llama.update_cache(v, self.v_cache, pos)
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, pos, None, 0, True)
        h = self.attn_sub_norm(out.reshape(1, n, self.n_heads * self.hd))
        return adapters.branch(self.o_proj, h, self.o_proj(self.o_act(h)), lora)


class FeedForward(nn.Module):
    def __init__(self, c: BitNetConfig) -> None:
        super().__init__()
        self.relu2 = c.hidden_act == "relu2"
        self.gate_up_act, self.down_act = ActQuant(), ActQuant()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.ffn_sub_norm = RMSNorm(c.intermediate_size, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, lora: Lora = None) -> torch.Tensor:
        xq = self.gate_up_act(x)
        g = adapters.branch(self.gate_proj, x, self.gate_proj(xq), lora)
        if self.relu2:
            g = F.relu(g)
            g = g * g  # squared ReLU as a multiply: XNNPACK has no pow
        else:
            g = F.silu(g)
        h = self.ffn_sub_norm(g * adapters.branch(self.up_proj, x, self.up_proj(xq), lora))
        return adapters.branch(self.down_proj, h, self.down_proj(self.down_act(h)), lora)


class Block(nn.Module):
    def __init__(self, c: BitNetConfig, context: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, context)
        self.mlp = FeedForward(c)

    def forward(self, x, pos, cos, sin, lora: Lora = None):
        x = x + self.self_attn(self.input_layernorm(x), pos, cos, sin, lora)
        return x + self.mlp(self.post_attention_layernorm(x), lora)


class BitNet(nn.Module):
    """``lora_ranks`` (HF projection leaf -> branch rank): separate LoRA branches whose factors are a third input
    of ``forward``, (scale [1], the factors of ``self.lora_slots`` in order) — see ``adapters``."""

    def __init__(self, c: BitNetConfig, context: int, inv_freq: torch.Tensor,
                 lora_ranks: dict[str, int] | None = None) -> None:
        super().__init__()
        self.context = context
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c, context) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        # the reference's own float32 RoPE arithmetic (positions x inv_freq, then cos/sin), so angles agree bitwise
        freqs = torch.arange(context).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        linears = [(self.get_submodule(_module(i, leaf)), hf_name(i, leaf).removesuffix(".weight"), None)
                   for i in range(c.num_hidden_layers) for leaf in PROJECTIONS]
        self.lora_slots = adapters.assign_slots(linears, dict(lora_ranks or {}))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, lora: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        n = tokens.shape[1]
        pos = input_pos[0].item()
        torch._check_is_size(pos)
        torch._check(pos + n <= self.context)
        cos = self.rope_cos.narrow(0, pos, n).view(1, n, 1, -1)
        sin = self.rope_sin.narrow(0, pos, n).view(1, n, 1, -1)
        h = self.embed_tokens(tokens)
        branches = (lora[0], lora[1:]) if lora is not None else None
        for layer in self.layers:
            h = layer(h, pos, cos, sin, branches)
        return self.lm_head(self.norm(h[:, -1, :]))  # the runner samples from the last position only


def _lora(job: ExportJob) -> tuple[dict[str, int], dict[str, Any]]:
    """(branch rank per projection leaf, factors per adapter name) of the plan's separate adapters; PEFT's
    scaling folded into B (``edgekit.adapters.factors``), as ``read_adapter`` computes it for the reference."""
    from edgekit.adapters import factors
    from edgekit.lora import open_adapter

    if not job.plan.adapters:
        raise UnsupportedError("executorch --lora-mode separate needs --adapter")
    per_name = {name: factors(open_adapter(path, job.checkpoint)) for name, path in job.plan.adapters}
    return lora_ranks(per_name.values()), per_name


def ternary_weights(job: ExportJob) -> BitNetWeights:
    """The merged model's codes and scales: the reference built for export carries them as ``.weights``."""
    w = getattr(job.reference, "weights", None)
    if not isinstance(w, BitNetWeights):
        raise InternalError("the BitNet reference has no .weights (BitNetWeights); build it with build_for_export")
    return w


def load_weights(model: BitNet, w: BitNetWeights) -> dict[str, tuple[torch.Tensor, float]]:
    """Copy norms, embedding and float weights (codes x scale for ternary projections) into ``model``; returns
    module name -> (int8 codes, scale) of every ternary projection, for the exact int4 tensors."""
    c, f = w.config, w.floats
    ternary: dict[str, tuple[torch.Tensor, float]] = {}

    def put(param: torch.Tensor, array: Any) -> None:
        with torch.no_grad():
            param.copy_(torch.from_numpy(array).reshape(param.shape))

    put(model.embed_tokens.weight, f["model.embed_tokens.weight"])
    put(model.lm_head.weight, f["lm_head.weight"] if "lm_head.weight" in f else f["model.embed_tokens.weight"])
    put(model.norm.weight, f["model.norm.weight"])
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}"
        put(layer.input_layernorm.weight, f[f"{p}.input_layernorm.weight"])
        put(layer.post_attention_layernorm.weight, f[f"{p}.post_attention_layernorm.weight"])
        put(layer.self_attn.attn_sub_norm.weight, f[f"{p}.self_attn.attn_sub_norm.weight"])
        put(layer.mlp.ffn_sub_norm.weight, f[f"{p}.mlp.ffn_sub_norm.weight"])
        for leaf in PROJECTIONS:
            name = hf_name(i, leaf)
            module = f"layers.{i}.{'mlp' if 'mlp' in name else 'self_attn'}.{leaf}"
            linear = model.get_submodule(module)
            if name in w.ternary:
                t = w.ternary[name]
                put(linear.weight, t.dense())
                ternary[module] = (torch.from_numpy(t.codes.astype("int8")), float(t.scale))
            else:  # modules_to_not_convert: a plain float projection
                put(linear.weight, f[name])
    return ternary


def set_activations(model: BitNet, reference: Any) -> None:
    """Put the reference's per-projection activation modes in front of the matmuls (a4.8 only; fused inputs
    share one mode: q/k/v and gate/up)."""
    if reference.activations != "a4.8":
        return
    modes = activation_modes(reference)
    for i, layer in enumerate(model.layers):
        for act, leaf in (("qkv_act", "q_proj"), ("o_act", "o_proj"), ("gate_up_act", "gate_proj"),
                          ("down_act", "down_proj")):
            owner = layer.mlp if act in ("gate_up_act", "down_act") else layer.self_attn
            setattr(owner, act, ActQuant(*modes.get(hf_name(i, leaf), ("float", None))))


def set_ternary(model: nn.Module, ternary: dict[str, tuple[torch.Tensor, float]]) -> float:
    """Overwrite the int4 per-channel tensors of the ternary projections with the codes and the scale (see the
    module docstring); returns the largest |dequantised - codes x scale| (0 when exact)."""
    worst = 0.0
    for module, (codes, scale) in ternary.items():
        w = model.get_submodule(module).weight
        for attr in ("qdata", "scale", "zero_point"):
            if not hasattr(w, attr):
                raise InternalError(f"{module}: torchao weight {type(w).__name__} has no {attr}; cannot set ternary codes")
        if tuple(w.qdata.shape) != tuple(codes.shape) or w.scale.numel() != codes.shape[0]:
            raise InternalError(f"{module}: expected int4 per-channel weights of shape {tuple(codes.shape)}")
        with torch.no_grad():
            w.qdata.copy_(codes.to(w.qdata.dtype))
            w.scale.fill_(scale)
            w.zero_point.zero_()
            expect = codes.float() * torch.tensor(scale, dtype=torch.float32)
            worst = max(worst, float((w.dequantize().float() - expect).abs().max()))
    return worst


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    options: LanguageOptions = job.plan.options
    spec = job.plan.quant
    separate = options.lora_mode == "separate"
    lq = quant.linear_quant(spec, options)
    if lq is not None and (lq.weight_bits != 4 or lq.group_size is not None):
        raise UnsupportedError(
            f"executorch BitNet keeps ternary weights exact only as int4 per output channel (8da4w, group size 0); "
            f"got {lq.describe()}"
        )
    head_bits = options.lm_head_bits(spec)
    shared = options.shares_embedding(spec)
    w = ternary_weights(job)
    cfg: BitNetConfig = w.config
    max_context = context_length(cfg, options.max_context)

    t0 = time.perf_counter()
    ranks, per_name = _lora(job) if separate else ({}, {})
    job.progress(f"building the ExecuTorch BitNet graph (context {max_context}, LoRA {options.lora_mode})")
    eager = BitNet(cfg, max_context, job.reference.inv_freq.detach().float().clone(), ranks)
    ternary = load_weights(eager, w)
    set_activations(eager, job.reference)
    eager = eager.eval()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    weight_error = 0.0
    with torch.no_grad():
        emb_bits = EMBEDDING_BITS[options.embedding_quant]
        if emb_bits is not None:
            quant.quantize_embedding(eager, "embed_tokens", emb_bits)
        if lq is not None:
            overrides = {"lm_head": lq.at_bits(head_bits)} if head_bits != lq.weight_bits else {}
            job.progress(f"quantising linear layers ({lq.describe()}, ternary codes exact, LM head int{head_bits})")
            quant.quantize_linears(eager, lq, overrides)
            weight_error = set_ternary(eager, ternary)
            if weight_error != 0.0:
                raise InternalError(f"ternary weights are not exact in int4 (max error {weight_error:g})")
        if shared:
            quant.share_embedding_with_head(eager, "embed_tokens", "lm_head", head_bits)
    seconds["quantize"] = time.perf_counter() - t

    def tag(name: str) -> str | None:
        return SHARED_DATA if ("embed_tokens" in name or "lm_head" in name) else None

    slots = eager.lora_slots
    tokens = torch.export.Dim("tokens", min=1, max=max_context - 1)
    inputs, dims = example_inputs(), ({1: tokens}, {0: 1})
    if separate:  # (scale, factors...) as the third input: adapters.branch
        lora_in = adapters.example_inputs(slots)
        inputs, dims = inputs + (lora_in,), dims + (tuple(None for _ in lora_in),)
    result = lower.lower(
        eager, inputs, dims, out_dir, ARTIFACT, runner_metadata(cfg, max_context), job.progress,
        tag if shared else None,
    )
    lora_entries: dict[str, Any] = {}
    if separate:
        lora_entries = {"lora_branches": ranks, "lora_inputs": [sl.to_dict() for sl in slots],
                        "adapter_files": adapters.write_all(slots, per_name, out_dir)}
    return {
        "file": ARTIFACT,
        "data_files": [f for f in result.files if f.endswith(".ptd")],
        "backend": "xnnpack",
        "versions": _versions(),
        "linear_quant": (
            f"ternary codes as int4 per channel (exact), int8 dynamic activations per token, LM head int{head_bits}"
            if lq else "float32 (codes x scale), float activations"
        ),
        "group_size": None,
        "ternary_weight_max_error": weight_error,
        "activations": ("a4.8 quantise/dequantise before each projection, then " if job.reference.activations ==
                        "a4.8" else "") + ("int8 per token, asymmetric (XNNPACK)" if lq else "float32"),
        "embedding_quant": options.embedding_quant,
        "shared_embedding": shared,
        "lora_mode": options.lora_mode,
        **lora_entries,
        "max_context": max_context,
        "max_seq_len": max_context - 1,
        "dynamic_shapes": True,
        "delegated_partitions": result.delegated_partitions,
        "non_delegated_ops": result.non_delegated_ops,
        "stage_seconds": {k: round(v, 2) for k, v in {**seconds, **result.seconds}.items()},
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def file_constants(root: Path, manifest: Any, checkpoint: Any) -> list[str]:
    """The metadata check (``edgekit.tensorcheck``): the program's runner methods (context, vocabulary, layers,
    bos/eos ids) against what this exporter writes for ``checkpoint`` (``lfm2.runner_failures``)."""
    return runner_failures(root, manifest, checkpoint.model_config, f"the checkpoint {checkpoint.path.name}'s config")


def file_weights(root: Path, manifest: Any, weights: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The export's weights under the checkpoint's names (``edgekit.tensorcheck``), re-derived with the bundle's
    recorded quant and options as ``export`` writes them (like the LFM2 pair's ``readback``: a ``.pte``'s XNNPACK
    weights are not parsed): each ternary projection quantised to torchao's int4 per channel, its integers and
    scale overwritten with the codes and the scale (``set_ternary``), dequantised (typed ``ternary/INT4``, must
    be exact; fp32: ``ternary/F32``); the LM head at its bits; the embedding shared with it or stored apart."""
    import numpy as np

    from edgekit.families import Family
    from edgekit.families.bitnet.fidelity import EMBED, HEAD, TERNARY_PREFIX, is_ternary
    from edgekit.plan import Format
    from edgekit.recipes import RECIPES
    from edgekit.tensorcheck import ReadTensor

    from . import readback

    recipe = RECIPES.get(Family.BITNET, Format.EXECUTORCH)
    spec = recipe.quant(manifest["plan"]["quant"]["name"])
    options = recipe.options.from_dict(manifest["plan"].get("options") or {})
    lq = quant.linear_quant(spec, options)
    out: list[ReadTensor] = []
    for name, w in weights.items():
        if name in (EMBED, HEAD):
            continue
        if w.ndim != 2:
            out.append(ReadTensor(name, name, w, "F32"))
            continue
        module = name.removesuffix(".weight")
        if not is_ternary(w):  # a projection kept float (modules_to_not_convert)
            out.append(readback.linear(name, name, w, lq, module))
            continue
        scale = float(np.abs(w).max()) if w.any() else 1.0
        codes = torch.from_numpy(np.rint(w / np.float32(scale)).astype(np.int8))
        if lq is None:
            out.append(ReadTensor(name, name, w, TERNARY_PREFIX + "F32", 0, 3, None, (module,)))
            continue
        lin = nn.Sequential(nn.Linear(w.shape[1], w.shape[0], bias=False))
        with torch.no_grad():
            lin[0].weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
        quant.quantize_linears(lin, lq)
        set_ternary(lin, {"0": (codes, scale)})
        values = lin[0].weight.dequantize().float().numpy()
        out.append(ReadTensor(name, name, values, TERNARY_PREFIX + "INT4", 0, 3, None, (module,), readback.TOKEN_ACT))
    head_q = lq.at_bits(options.lm_head_bits(spec)) if lq is not None else None
    if options.shares_embedding(spec):
        head = readback.linear(EMBED, EMBED, weights[HEAD], head_q, "lm_head")
        return out + [head], {HEAD: EMBED}
    head = readback.linear(HEAD, HEAD, weights[HEAD], head_q, "lm_head")
    bits = EMBEDDING_BITS[options.embedding_quant]
    emb = readback.embedding(EMBED, EMBED, weights[EMBED], bits) if bits is not None else ReadTensor(
        EMBED, EMBED, weights[EMBED], "F32")
    return out + [head, emb], {}
