"""LFM2's configuration as one frozen value, read from a Hugging Face ``config.json``.

Field names are the Hugging Face config's own (``hidden_size``, ``intermediate_size``, ``conv_L_cache``, ...), so
the value reads like the file it came from.  Every exporter and the manifest take their numbers from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from ...errors import CheckpointError, UnsupportedError

LAYER_TYPES = ("conv", "full_attention")
REQUIRED = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "conv_L_cache",
)


def _layer_types(config: Mapping[str, Any], n: int) -> tuple[str, ...]:
    """Per-layer mixer type; older configs list attention layers in ``full_attn_idxs`` instead.  Engines assert
    on a model without attention layer (llama.cpp's LFM2 graph aborts the process), so that is refused here."""
    types = config.get("layer_types")
    if types is None:
        idxs = config.get("full_attn_idxs")
        if idxs is None:
            raise CheckpointError("config.json: LFM2 config has neither 'layer_types' nor 'full_attn_idxs'")
        if not isinstance(idxs, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idxs):
            raise CheckpointError(f"config.json: 'full_attn_idxs' must be a list of layer indices, got {idxs!r}")
        bad = [i for i in idxs if not 0 <= i < n]
        if bad:
            raise CheckpointError(
                f"config.json: 'full_attn_idxs' {bad} out of range for num_hidden_layers {n} (valid: 0..{n - 1})"
            )
        types = ["full_attention" if i in set(idxs) else "conv" for i in range(n)]
    if (
        not isinstance(types, list) or len(types) != n
        or any(not isinstance(t, str) or t not in LAYER_TYPES for t in types)
    ):
        raise CheckpointError(f"config.json: 'layer_types' must list {n} entries from {LAYER_TYPES}, got {types!r}")
    if "full_attention" not in types:
        raise UnsupportedError(
            "config.json: this LFM2 config has no attention layer (layer_types / full_attn_idxs); LFM2 models have "
            "at least one, and llama.cpp aborts on a model without — check the config against the weights"
        )
    return tuple(types)


def _int(config: Mapping[str, Any], key: str, default: Any = None) -> int:
    """An integer config value; a bool, a string or a fraction is a wrong type (int() would accept or truncate it)."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CheckpointError(f"config.json: LFM2 {key} has the wrong type: expected an integer, got {value!r}")
    return int(value)


def _float(value: Any, key: str) -> float:
    """A finite float config value (a string, a bool or NaN/Inf is refused: it would change the computation)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"config.json: LFM2 {key} has the wrong type or value: expected a finite number, got {value!r}")
    return float(value)


def _effective_ff(config: Mapping[str, Any]) -> int:
    """The SwiGLU width after LFM2's auto-adjust (LFM2-350M: 6656 -> 4608); the rule of transformers' Lfm2MLP."""
    ff = int(config.get("block_ff_dim") or config["intermediate_size"])
    if config.get("block_auto_adjust_ff_dim", True):  # transformers' Lfm2Config default (a missing key adjusts)
        ff = int(2 * ff / 3)
        mult = config.get("block_ffn_dim_multiplier")
        if mult is not None:
            ff = int(mult * ff)
        m = int(config.get("block_multiple_of", 256))
        ff = m * ((ff + m - 1) // m)
    return ff


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


@dataclass(frozen=True)
class Lfm2Config:
    """An LFM2 model's hyperparameters (Hugging Face names).

    ``intermediate_size`` is the *effective* SwiGLU width, after ``block_auto_adjust_ff_dim``; ``layer_types``
    has one entry per layer, ``"conv"`` or ``"full_attention"``; ``max_position_embeddings`` is the context the
    exported graph covers (an exporter may lower it with ``with_context``).
    """

    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    norm_eps: float
    conv_L_cache: int  # the short convolution's kernel length
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> "Lfm2Config":
        """Validate and read ``config.json``; raises CheckpointError / UnsupportedError with one line."""
        missing = [k for k in REQUIRED if k not in config]
        if "intermediate_size" not in config and "block_ff_dim" not in config:
            missing.append("intermediate_size")
        if missing:
            raise CheckpointError(f"config.json: LFM2 config lacks {', '.join(missing)}")
        try:
            n = _int(config, "num_hidden_layers")
            hidden, heads, kv = (_int(config, k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
            params = config.get("rope_parameters") or {}
            if not isinstance(params, Mapping):
                raise CheckpointError(f"config.json: 'rope_parameters' must be an object, got {params!r}")
            value = cls(
                hidden_size=hidden,
                num_hidden_layers=n,
                layer_types=_layer_types(config, n),
                intermediate_size=_effective_ff(config),
                num_attention_heads=heads,
                num_key_value_heads=kv,
                vocab_size=_int(config, "vocab_size"),
                max_position_embeddings=_int(config, "max_position_embeddings", 128000),
                rope_theta=_float(params.get("rope_theta", config.get("rope_theta", 1_000_000.0)), "rope_theta"),
                norm_eps=_float(config.get("norm_eps", config.get("rms_norm_eps", 1e-5)), "norm_eps"),
                conv_L_cache=_int(config, "conv_L_cache"),
                bos_token_id=None if config.get("bos_token_id") is None else int(config["bos_token_id"]),
                eos_token_ids=_ids(config.get("eos_token_id")),
                pad_token_id=None if config.get("pad_token_id") is None else int(config["pad_token_id"]),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"config.json: an LFM2 value has the wrong type ({exc})") from None
        if min(hidden, heads, kv, n, value.vocab_size, value.conv_L_cache, value.intermediate_size) <= 0:
            raise CheckpointError("config.json: LFM2 sizes must be positive")
        if value.max_position_embeddings <= 0:
            raise CheckpointError("config.json: LFM2 max_position_embeddings must be positive")
        if value.rope_theta <= 0:
            raise CheckpointError(f"config.json: LFM2 rope_theta must be positive, got {value.rope_theta}")
        if value.norm_eps < 0:
            raise CheckpointError(f"config.json: LFM2 norm_eps must not be negative, got {value.norm_eps}")
        for key in ("rope_type", "type"):
            if params.get(key, "default") != "default":
                raise UnsupportedError(f"config.json: LFM2 rope_type {params[key]!r} is not supported; supported: default")
        if hidden % heads:
            raise CheckpointError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        if heads % kv:
            raise CheckpointError("config.json: num_attention_heads must be a multiple of num_key_value_heads")
        if config.get("conv_bias"):
            raise UnsupportedError("LFM2 with conv_bias=true is not supported (llama.cpp's LFM2 graph has no conv bias)")
        # transformers' Lfm2Config honours the legacy key ``tie_embedding`` as well (it overrides tie_word_embeddings)
        tie = config.get("tie_embedding", config.get("tie_word_embeddings", True))
        if not isinstance(tie, bool):
            raise CheckpointError(f"config.json: LFM2 tie_embedding / tie_word_embeddings must be true or false, got {tie!r}")
        if tie is False:
            raise UnsupportedError(
                "LFM2 with an untied LM head (tie_embedding / tie_word_embeddings false) is not supported: edgekit's "
                "LFM2 exporters use the embedding as the head; LFM2 checkpoints tie them"
            )
        return value

    tie_word_embeddings = True  # refused otherwise (see from_hf): the head is the embedding

    def tensor_rules(self) -> dict[str, Any]:
        """Hugging Face tensor name -> ``TensorRule`` (shape, float dtypes) of every weight this config needs
        (transformers' ``Lfm2ForCausalLM`` parameter names); ``lm_head.weight`` may be stored as a copy of the
        tied embedding."""
        from ...checkpoint import TensorRule

        f = TensorRule.floats
        h, ff, hd = self.hidden_size, self.intermediate_size, self.head_dim
        kv = self.num_key_value_heads * hd
        rules = {
            "model.embed_tokens.weight": f(self.vocab_size, h),
            "model.embedding_norm.weight": f(h),
            "lm_head.weight": f(self.vocab_size, h, required=False),
        }
        for i, kind in enumerate(self.layer_types):
            p = f"model.layers.{i}"
            rules.update({
                f"{p}.operator_norm.weight": f(h),
                f"{p}.ffn_norm.weight": f(h),
                f"{p}.feed_forward.w1.weight": f(ff, h),
                f"{p}.feed_forward.w3.weight": f(ff, h),
                f"{p}.feed_forward.w2.weight": f(h, ff),
            })
            if kind == "conv":
                rules.update({
                    f"{p}.conv.in_proj.weight": f(3 * h, h),
                    f"{p}.conv.conv.weight": f(h, 1, self.conv_L_cache),
                    f"{p}.conv.out_proj.weight": f(h, h),
                })
            else:
                rules.update({
                    f"{p}.self_attn.q_proj.weight": f(h, h),
                    f"{p}.self_attn.k_proj.weight": f(kv, h),
                    f"{p}.self_attn.v_proj.weight": f(kv, h),
                    f"{p}.self_attn.out_proj.weight": f(h, h),
                    f"{p}.self_attn.q_layernorm.weight": f(hd),
                    f"{p}.self_attn.k_layernorm.weight": f(hd),
                })
        return rules

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def conv_cache(self) -> int:
        """Inputs a conv layer carries to the next call (``conv_L_cache - 1``)."""
        return self.conv_L_cache - 1

    @property
    def attention_layers(self) -> int:
        return self.layer_types.count("full_attention")

    def with_context(self, positions: int) -> "Lfm2Config":
        return replace(self, max_position_embeddings=positions)

    def kv_values_per_position(self) -> int:
        """K and V values one context position holds across all attention layers (for the memory roofline)."""
        return 2 * self.attention_layers * self.num_key_value_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    def rope_tables(self, positions: int | None = None) -> tuple[Any, Any]:
        """(cos, sin) float32 [positions, head_dim / 2] of Hugging Face's default RoPE (rotate-half layout):
        angle(p, i) = p * rope_theta ** (-2i / head_dim)  (Su et al., RoFormer, eq. 15)."""
        import numpy as np

        hd = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        angles = np.outer(np.arange(positions or self.max_position_embeddings, dtype=np.float64), inv_freq)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
