"""LFM2 (Liquid AI): gated short-convolution and GQA attention blocks, tied embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import CheckpointError, UnsupportedError
from ..plan import Target

REQUIRED_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "norm_eps",
    "conv_L_cache",
)
LAYER_TYPES = ("conv", "full_attention")


def layer_types(config: Mapping[str, Any]) -> list[str]:
    """Per-layer mixer type; older configs list attention layers in ``full_attn_idxs`` instead."""
    n = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if types is None:
        idxs = config.get("full_attn_idxs")
        if idxs is None:
            raise CheckpointError("config.json: LFM2 config has neither 'layer_types' nor 'full_attn_idxs'")
        types = ["full_attention" if i in set(idxs) else "conv" for i in range(n)]
    if len(types) != n or any(t not in LAYER_TYPES for t in types):
        raise CheckpointError(
            f"config.json: 'layer_types' must list {n} entries from {LAYER_TYPES}, got {types!r}"
        )
    return list(types)


def feed_forward_size(config: Mapping[str, Any]) -> int:
    """The SwiGLU width after LFM2's auto-adjust (e.g. LFM2-350M: 6656 -> 4608)."""
    ff = int(config.get("block_ff_dim") or config["intermediate_size"])
    if config.get("block_auto_adjust_ff_dim", False):
        ff = int(2 * ff / 3)
        mult = config.get("block_ffn_dim_multiplier")
        if mult is not None:
            ff = int(mult * ff)
        m = int(config.get("block_multiple_of", 256))
        ff = m * ((ff + m - 1) // m)
    return ff


def rope_theta(config: Mapping[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", config.get("rope_theta", 1_000_000.0)))


def validate_config(config: Mapping[str, Any]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in config and not (k == "norm_eps" and "rms_norm_eps" in config)]
    if missing:
        raise CheckpointError(f"config.json: LFM2 config lacks {', '.join(missing)}")
    if "intermediate_size" not in config and "block_ff_dim" not in config:
        raise CheckpointError("config.json: LFM2 config lacks intermediate_size / block_ff_dim")
    layer_types(config)
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    if hidden % heads:
        raise CheckpointError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if heads % int(config["num_key_value_heads"]):
        raise CheckpointError("config.json: num_attention_heads must be a multiple of num_key_value_heads")
    if config.get("conv_bias"):
        raise UnsupportedError("LFM2 with conv_bias=true is not supported (llama.cpp's LFM2 graph has no conv bias)")
    if config.get("tie_word_embeddings") is False:
        raise UnsupportedError("LFM2 with untied embeddings is not supported; LFM2 checkpoints tie them")


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    eos = config.get("eos_token_id")
    return {
        "hidden_size": int(config["hidden_size"]),
        "num_layers": int(config["num_hidden_layers"]),
        "layer_types": layer_types(config),
        "feed_forward_size": feed_forward_size(config),
        "num_heads": int(config["num_attention_heads"]),
        "num_kv_heads": int(config["num_key_value_heads"]),
        "vocab_size": int(config["vocab_size"]),
        "context_length": int(config.get("max_position_embeddings", 128000)),
        "rope_theta": rope_theta(config),
        "norm_eps": float(config.get("norm_eps", config.get("rms_norm_eps", 1e-5))),
        "conv_L_cache": int(config["conv_L_cache"]),
        "bos_id": config.get("bos_token_id"),
        "eos_ids": eos if isinstance(eos, list) else ([eos] if eos is not None else []),
        "pad_id": config.get("pad_token_id"),
    }


@dataclass(frozen=True)
class Lfm2Shape:
    """The numbers every exporter's LFM2 graph is built from (ONNX and ExecuTorch write their graphs by hand)."""

    hidden: int
    layer_types: tuple[str, ...]
    ff: int  # SwiGLU width after the auto-adjust
    heads: int
    kv_heads: int
    vocab: int
    context: int  # positions the graph's RoPE table and KV cache cover
    rope_theta: float
    eps: float
    conv_kernel: int  # conv_L_cache: the short convolution's kernel length

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Lfm2Shape":
        meta = describe(config)
        return cls(
            hidden=meta["hidden_size"],
            layer_types=tuple(meta["layer_types"]),
            ff=meta["feed_forward_size"],
            heads=meta["num_heads"],
            kv_heads=meta["num_kv_heads"],
            vocab=meta["vocab_size"],
            context=meta["context_length"],
            rope_theta=meta["rope_theta"],
            eps=meta["norm_eps"],
            conv_kernel=meta["conv_L_cache"],
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def conv_cache(self) -> int:
        """Inputs a conv layer carries to the next call (kernel length - 1)."""
        return self.conv_kernel - 1


def build_reference(checkpoint: Any):
    """The transformers model in float32 (the reference every export is checked against)."""
    from ..errors import require

    torch = require("torch", "export")
    transformers = require("transformers", "export")
    try:
        model = transformers.Lfm2ForCausalLM.from_pretrained(
            str(checkpoint.path), dtype=torch.float32, local_files_only=True
        )
    except Exception as exc:  # transformers raises many types for bad weights
        raise CheckpointError(f"{checkpoint.path}: transformers could not load the LFM2 weights: {exc}") from None
    return model.eval()


def _spec():
    from . import Family, FamilySpec, ModelKind

    return FamilySpec(
        family=Family.LFM2,
        kind=ModelKind.LANGUAGE,
        architectures=("Lfm2ForCausalLM", "LFM2ForCausalLM"),
        model_types=("lfm2",),
        targets=(Target.GGUF, Target.ONNX, Target.EXECUTORCH),
        # every linear layer: attention q/k/v/out, conv in/out projections, SwiGLU w1/w2/w3
        lora_targets=frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"}),
        validate_config=validate_config,
        build_reference=build_reference,
        describe=describe,
    )


SPEC = _spec()
