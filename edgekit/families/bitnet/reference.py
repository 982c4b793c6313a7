"""The BitNet b1.58 reference in PyTorch: the W1.58A8 forward every BitNet export is verified against.

Built from ``weights.BitNetWeights`` (codes + scale per projection), not from transformers' modules, so that
packed and master checkpoints run the same arithmetic and the a4.8 activation mode can be added.  The layer is
transformers' ``BitNetDecoderLayer`` (``models/bitnet/modeling_bitnet.py``): Llama-like pre-norm blocks, GQA
attention with rotate-half RoPE, ``attn_sub_norm`` (RMSNorm over the concatenated heads) before ``o_proj``,
a gated FFN ``down(ffn_sub_norm(act(gate(x)) * up(x)))`` with ``act`` squared ReLU (``relu2``) or SiLU.

Every ternary projection computes, per token (row) ``x`` of its input (activation modes below)::

    s    = 127 / max(max_j |x_j|, 1e-5)                       absmax, per token
    x_q  = clamp(round(x * s), -128, 127)                     integers, as transformers' BitLinear.activation_quant
    y    = (x_q @ codes^T) * scale / s                        codes in {-1,0,1}; the matmul is exact in fp32

(Ma et al., arXiv 2402.17764, eqs. 1-3; the 1e-5 clamp and round-half-to-even are transformers' numerics.)
The integer matmul is exact in float32 while ``127 * in_features < 2**24``.  For the A8 path the final scaling is
done in the operation order of the transformers class that reads the checkpoint's layout (``TernaryLinear.stored``:
``BitLinear`` divides by ``input_scale * weight_scale``, ``AutoBitLinear`` dequantises first), because a 1-ulp
difference can flip one int8 rounding in a later layer and show up as ~1e-2 on a large logit.

``activations="a4.8"`` (BitNet a4.8, Wang, Ma, Wei, arXiv 2411.04965, section 2.1 and 3):
  * inputs to attention (q/k/v) and FFN (gate/up): 4-bit absmean, eq. 7:
    ``beta = mean|x|``, ``x_q = clamp(round(x * sqrt(7) / beta), -8, 7)``, dequantised ``x_q * beta / sqrt(7)``;
  * input to the attention output projection (o_proj): sparsify-then-quantise, eq. 1: 8-bit absmax (eq. 3) of x,
    then keep the top-K entries by |x| (K = 50 % of the features, section 3: "We set topK as 50% for the output
    projection of attention");
  * input to the FFN down projection: 8-bit absmax; the paper relies on squared ReLU's own sparsity there (> 80 %)
    rather than a top-K.  ``down_topk`` adds a top-K for models whose gate is not sparse (SiLU); default off.
  The paper writes ``beta + eps``; the same 1e-5 lower clamp as the 8-bit path is used here.

``activations="float"``: ternary weights with unquantised activations (``y = (x @ codes^T) * scale``).  Not a
BitNet training mode: it is what llama.cpp's ``bitnet`` graph computes with F32/F16 weights, i.e. the reference
"built from the file's own weights" for that engine, so engine exactness and the cost of dropping A8 can be told
apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UnsupportedError
from .config import BitNetConfig
from .weights import BitNetWeights, TernaryLinear, load

ACTIVATIONS = ("a8", "a4.8", "float")
ACT_EPS = 1e-5  # transformers' BitLinear/ActQuant: input.abs().max(...).clamp(min=1e-5)


@dataclass(frozen=True)
class A48Options:
    """BitNet a4.8's sparsification settings (arXiv 2411.04965, section 3): top-K fractions kept (0 < f <= 1)."""

    out_proj_topk: float = 0.5
    down_topk: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("out_proj_topk", self.out_proj_topk), ("down_topk", self.down_topk)):
            if value is not None and not 0.0 < value <= 1.0:
                raise UnsupportedError(f"a4.8 {name} must be a fraction in (0, 1], got {value}")


@dataclass(frozen=True)
class LoraDelta:
    """An unmerged LoRA branch on one projection: ``y += scaling * (x @ A^T) @ B^T`` on the *float* input x
    (as peft's ``lora.Linear`` adds it beside the quantised base layer).  A: [r, in], B: [out, r], float32."""

    a: Any
    b: Any
    scaling: float


class BitNetOutput(NamedTuple):
    logits: torch.Tensor  # float32 [batch, tokens, vocab]
    cache: Any  # list of (key, value) per layer, each float32 [batch, kv_heads, positions, head_dim]; or None


def quantize_a8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: (integer-valued float32 codes in [-128, 127], scale [..., 1]); x ~= codes / scale."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)
    return (x * scale).round().clamp(-128, 127), scale


def quantize_a4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmean int4 (a4.8 eq. 7): (codes in [-8, 7], scale [..., 1]); x ~= codes / scale."""
    scale = math.sqrt(7.0) / x.abs().mean(dim=-1, keepdim=True).clamp(min=ACT_EPS)
    return (x * scale).round().clamp(-8, 7), scale


def topk_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """1.0 at the ``ceil(fraction * features)`` largest |x| of each token, 0.0 elsewhere (a4.8 eq. 1's M)."""
    k = max(1, math.ceil(fraction * x.shape[-1]))
    idx = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter_(-1, idx, 1.0)


def fake_quant(x: torch.Tensor, mode: str, topk: float | None = None) -> torch.Tensor:
    """The activations a projection in ``mode`` ("a8", "a4" or "float") sees, dequantised: ``codes / scale`` of
    ``quantize_a8`` / ``quantize_a4`` (times ``topk_mask`` when ``topk`` is set), float32 like ``x``.  What the
    exporters put in front of a float or int8-activation kernel to express a4.8 (no engine has 4-bit kernels)."""
    if mode == "float":
        return x
    q, s = quantize_a4(x) if mode == "a4" else quantize_a8(x)
    if topk is not None:
        q = q * topk_mask(x, topk)
    return q / s


def activation_modes(model: "BitNetReference") -> dict[str, tuple[str, float | None]]:
    """HF weight name -> (mode, top-K fraction) of every ternary projection of ``model`` (float projections are
    absent): what an exporter reproduces in front of each matmul."""
    out: dict[str, tuple[str, float | None]] = {}
    for i, layer in enumerate(model.layers):
        for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            proj = getattr(layer, leaf)
            if isinstance(proj, TernaryProjection):
                block = "mlp" if leaf in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                out[f"model.layers.{i}.{block}.{leaf}.weight"] = (proj.mode, proj.topk)
    return out


class TernaryProjection(torch.nn.Module):
    """One BitLinear: ternary codes [out, in] (held as float32 for an exact integer matmul) times one scale."""

    def __init__(
        self,
        t: TernaryLinear,
        mode: str = "a8",
        topk: float | None = None,
        lora: LoraDelta | None = None,
        master: Any = None,
    ):
        super().__init__()
        codes = torch.from_numpy(t.codes.astype("float32"))
        # transformers' own operation order for this storage convention (only for its A8 path)
        self.stored = t.stored if mode == "a8" and topk is None else None
        if master is not None and self.stored is not None and self.stored[0] == "inverse":
            # AutoBitLinear (online) ternarises the master weights with torch's float32 mean, which is not always
            # the correctly rounded one the numpy reader computes: 1 ulp of scale can flip an int8 rounding later
            # on.  Repeat transformers' WeightQuant exactly (codes agree; the scale may move by 1 ulp).
            w = torch.from_numpy(np.array(master, dtype=np.float32))
            inv = 1.0 / w.abs().mean().clamp(min=1e-5)
            codes = (w * inv).round().clamp(-1, 1)
            self.stored = ("inverse", inv)
        self.register_buffer("codes", codes, persistent=False)
        self.scale = float(t.scale)
        self.mode = mode  # "a8", "a4" or "float"
        self.topk = topk
        self.lora = lora

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return self._lora(x, F.linear(x, self.codes) * self.scale)
        q, s = quantize_a4(x) if self.mode == "a4" else quantize_a8(x)
        if self.topk is not None:
            q = q * topk_mask(x, self.topk)
        if self.stored is None:
            y = F.linear(q, self.codes) / s * self.scale
        elif self.stored[0] == "divide":  # BitLinear.post_quant_process
            y = F.linear(q, self.codes) / (self.stored[1] * s)
        elif self.stored[0] == "multiply":  # AutoBitLinear offline: ActQuant dequantises, output * weight_scale
            y = F.linear(q / s, self.codes) * self.stored[1]
        else:  # AutoBitLinear online: WeightQuant's codes / (1 / gamma), ActQuant's q / s
            y = F.linear(q / s, self.codes / self.stored[1])
        return self._lora(x, y)

    def _lora(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """peft's unmerged branch: on the unquantised input, in float."""
        if self.lora is None:
            return y
        a = torch.as_tensor(self.lora.a, dtype=torch.float32)
        b = torch.as_tensor(self.lora.b, dtype=torch.float32)
        return y + self.lora.scaling * F.linear(F.linear(x, a), b)


class FloatProjection(torch.nn.Module):
    """A projection listed in ``modules_to_not_convert``: a plain float linear layer, no activation quantisation."""

    def __init__(self, weight: Any):
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.array(weight, dtype=np.float32)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' BitNetRMSNorm in float32: weight * x / sqrt(mean(x^2) + eps)."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class BitNetReference(torch.nn.Module):
    """The W1.58A8 (or a4.8) BitNet model.  ``forward(input_ids [B, T] int64, cache=None, use_cache=False)``
    returns ``BitNetOutput(logits float32 [B, T, vocab], cache)``; ``cache`` continues a sequence."""

    def __init__(
        self,
        weights: BitNetWeights,
        activations: str = "a8",
        a48: A48Options = A48Options(),
        lora: Mapping[str, LoraDelta] | None = None,
    ):
        super().__init__()
        if activations not in ACTIVATIONS:
            raise UnsupportedError(f"BitNet activations {activations!r}; supported: {', '.join(ACTIVATIONS)}")
        cfg: BitNetConfig = weights.config
        self.config = cfg
        self.activations = activations
        lora = dict(lora or {})
        unknown = sorted(set(lora) - set(weights.ternary))
        if unknown:
            raise UnsupportedError(f"LoRA deltas for projections that are not ternary: {', '.join(unknown[:3])}")
        # copies: the readers hand out read-only memory maps of the checkpoint
        f = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.floats.items()}
        self.register_buffer("embed", f["model.embed_tokens.weight"], persistent=False)
        self.register_buffer("norm", f["model.norm.weight"], persistent=False)
        self.register_buffer("lm_head", f.get("lm_head.weight", f["model.embed_tokens.weight"]), persistent=False)
        self.layers = torch.nn.ModuleList()
        a4 = activations == "a4.8"
        base_mode = "float" if activations == "float" else "a8"
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}"
            layer = torch.nn.Module()
            for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                block = "mlp" if leaf in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                name = f"{p}.{block}.{leaf}.weight"
                if name not in weights.ternary:
                    setattr(layer, leaf, FloatProjection(weights.floats[name]))
                    continue
                mode, topk = base_mode, None
                if a4 and leaf in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
                    mode = "a4"
                elif a4 and leaf == "o_proj":
                    topk = a48.out_proj_topk
                elif a4 and leaf == "down_proj":
                    topk = a48.down_topk
                master = weights.master.get(name) if weights.master is not None else None
                setattr(layer, leaf, TernaryProjection(weights.ternary[name], mode, topk, lora.get(name), master))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                layer.register_buffer(norm, f[f"{p}.{norm}.weight"], persistent=False)
            layer.register_buffer("attn_sub_norm", f[f"{p}.self_attn.attn_sub_norm.weight"], persistent=False)
            layer.register_buffer("ffn_sub_norm", f[f"{p}.mlp.ffn_sub_norm.weight"], persistent=False)
            self.layers.append(layer)
        # transformers' default RoPE frequencies, computed the same way (float32) so positions agree bit for bit
        hd = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.head_act: Any = None

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.hidden_act == "relu2":
            return F.relu(x).square()  # transformers' ReLUSquaredActivation
        return F.silu(x)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, input_ids: torch.Tensor, cache: Any = None, use_cache: bool = False, **_: Any) -> BitNetOutput:
        cfg = self.config
        bsz, n = input_ids.shape
        past = 0 if not cache else cache[0][0].shape[2]
        cos, sin = self.rope(torch.arange(past, past + n))
        total = past + n
        # causal mask over all positions: query t (absolute past + t) sees keys <= past + t
        mask = torch.full((n, total), float("-inf")).triu(past + 1)
        h = self.embed[input_ids]
        heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        new_cache = []
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer.input_layernorm, cfg.rms_norm_eps)
            q = layer.q_proj(x).view(bsz, n, heads, hd).transpose(1, 2)
            k = layer.k_proj(x).view(bsz, n, kv_heads, hd).transpose(1, 2)
            v = layer.v_proj(x).view(bsz, n, kv_heads, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if cache:
                k = torch.cat((cache[i][0], k), dim=2)
                v = torch.cat((cache[i][1], v), dim=2)
            new_cache.append((k, v))
            rep = heads // kv_heads
            kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
            vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
            scores = torch.matmul(q, kk.transpose(2, 3)) * hd**-0.5 + mask
            attn = torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)), vv)
            attn = attn.transpose(1, 2).reshape(bsz, n, heads * hd)
            h = h + layer.o_proj(rms_norm(attn, layer.attn_sub_norm, cfg.rms_norm_eps))
            x = rms_norm(h, layer.post_attention_layernorm, cfg.rms_norm_eps)
            ff = self.act(layer.gate_proj(x)) * layer.up_proj(x)
            h = h + layer.down_proj(rms_norm(ff, layer.ffn_sub_norm, cfg.rms_norm_eps))
        h = rms_norm(h, self.norm, cfg.rms_norm_eps)
        if self.head_act is not None:  # an engine's rounding of the LM head's input (fidelity.file_reference)
            h = self.head_act(h)
        return BitNetOutput(logits=F.linear(h, self.lm_head), cache=new_cache if use_cache else None)


def logits(model: BitNetReference, tokens: Sequence[int]) -> Any:
    """Teacher-forced logits, float32 numpy [len(tokens), vocab]."""
    with torch.inference_mode():
        return model(torch.tensor([list(tokens)], dtype=torch.long)).logits[0].numpy()


def build(checkpoint: Any, activations: str = "a8", a48: A48Options = A48Options()) -> BitNetReference:
    """The registry's reference builder: ``checkpoint`` is a ``Checkpoint`` (its ``.path`` is read), a directory,
    or ``BitNetWeights``; float32, eval mode.  Raises CheckpointError / UnsupportedError from the readers."""
    if isinstance(checkpoint, BitNetWeights):
        weights = checkpoint
    else:
        weights = load(getattr(checkpoint, "path", checkpoint))
    return BitNetReference(weights, activations=activations, a48=a48).eval()


def build_for_export(checkpoint: Any, options: Any = None) -> BitNetReference:
    """The registry's builder: the activation mode from the recipe's ``bitnet_activations`` option (default
    ``a8``, what BitNet b1.58 computes); the ternary weights stay reachable as ``model.weights`` for exporters."""
    weights = checkpoint if isinstance(checkpoint, BitNetWeights) else load(getattr(checkpoint, "path", checkpoint))
    model = build(weights, activations=getattr(options, "bitnet_activations", "a8"))
    model.weights = weights
    return model
