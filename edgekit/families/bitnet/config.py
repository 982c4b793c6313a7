"""BitNet b1.58's configuration as one frozen value, read from a Hugging Face ``config.json``
(``BitNetForCausalLM``, transformers 5.x ``BitNetConfig`` + ``BitNetQuantConfig``).

Field names are the Hugging Face config's own.  The ``quantization_config`` decides how the checkpoint's linear
weights are to be read (see ``weights.py``):

* ``linear_class: bitlinear`` + ``quantization_mode: offline`` — the published 2B-4T layout: packed uint8 codes
  and a ``weight_scale`` that transformers' ``BitLinear`` *divides* by (W = codes / weight_scale);
* ``linear_class: autobitlinear`` + ``offline`` — packed or unpacked codes and a ``weight_scale`` that
  ``AutoBitLinear`` *multiplies* by (W = codes * weight_scale);
* ``linear_class: autobitlinear`` + ``online`` — float master weights, ternarised on every forward with the
  absmean rule (the quantisation-aware-training layout, and the one the built-in ``bitnet-tiny`` ships).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ...errors import CheckpointError, UnsupportedError

LINEAR_CLASSES = ("bitlinear", "autobitlinear")
QUANTIZATION_MODES = ("offline", "online")
# transformers' ACT2FN names of the two gates BitNet checkpoints use: squared ReLU (2B-4T) and SiLU.
HIDDEN_ACTS = ("relu2", "silu")
REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
# The ternary (BitLinear) projections of every decoder layer, by their Hugging Face leaf names.
BITLINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


@dataclass(frozen=True)
class BitNetQuantization:
    """The checkpoint's ``quantization_config`` (``quant_method: bitnet``)."""

    linear_class: str  # "bitlinear" | "autobitlinear"
    quantization_mode: str  # "offline" (codes + weight_scale stored) | "online" (float master weights)
    modules_to_not_convert: tuple[str, ...]  # module names transformers keeps as plain nn.Linear

    @property
    def scale_divides(self) -> bool:
        """True when the stored ``weight_scale`` is the *inverse* scale: transformers' ``BitLinear`` computes
        ``y / (input_scale * weight_scale)``, ``AutoBitLinear`` computes ``y * weight_scale``."""
        return self.linear_class == "bitlinear"

    @property
    def master_weights(self) -> bool:
        """True when the checkpoint holds float master weights to be ternarised (absmean) on load."""
        return self.quantization_mode == "online"

    @classmethod
    def from_hf(cls, raw: Any) -> "BitNetQuantization":
        if raw is None:
            raise CheckpointError(
                "config.json: BitNet config has no 'quantization_config'; a BitNetForCausalLM checkpoint needs "
                "{'quant_method': 'bitnet', 'linear_class': ..., 'quantization_mode': ...} to say how its weights are stored"
            )
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"config.json: 'quantization_config' must be an object, got {type(raw).__name__}")
        method = raw.get("quant_method")
        if method != "bitnet":
            raise UnsupportedError(
                f"config.json: quantization_config.quant_method {method!r} is not supported for BitNet; expected 'bitnet'"
            )
        linear_class = raw.get("linear_class", "bitlinear")
        if linear_class not in LINEAR_CLASSES:
            raise UnsupportedError(
                f"config.json: unknown BitNet packing linear_class {linear_class!r}; known: {', '.join(LINEAR_CLASSES)}"
            )
        mode = raw.get("quantization_mode", "offline")
        if mode not in QUANTIZATION_MODES:
            raise UnsupportedError(
                f"config.json: unknown BitNet quantization_mode {mode!r}; known: {', '.join(QUANTIZATION_MODES)}"
            )
        if linear_class == "bitlinear" and mode == "online":
            # transformers ignores quantization_mode for BitLinear (always packed): a checkpoint saying otherwise
            # was written by something else, and guessing its layout would silently change the model.
            raise UnsupportedError(
                "config.json: linear_class 'bitlinear' stores packed offline weights; quantization_mode 'online' "
                "needs linear_class 'autobitlinear'"
            )
        if raw.get("use_rms_norm"):
            raise UnsupportedError(
                "config.json: BitNet quantization_config.use_rms_norm=true (an RMSNorm inside every BitLinear) is not "
                "supported; the published BitNet models use the sub-norms of the decoder layer instead"
            )
        skip = raw.get("modules_to_not_convert") or ()
        if not isinstance(skip, (list, tuple)) or not all(isinstance(s, str) for s in skip):
            raise CheckpointError("config.json: quantization_config.modules_to_not_convert must be a list of names")
        return cls(linear_class=linear_class, quantization_mode=mode, modules_to_not_convert=tuple(skip))


@dataclass(frozen=True)
class BitNetConfig:
    """A BitNet b1.58 model's hyperparameters (Hugging Face names).

    ``hidden_act`` is ``"relu2"`` (squared ReLU, the 2B-4T model) or ``"silu"``; ``rope_theta`` is the default
    (unscaled) RoPE base; ``quantization`` says how the linear weights are stored.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    hidden_act: str
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    quantization: BitNetQuantization

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> "BitNetConfig":
        """Validate and read ``config.json``; raises CheckpointError / UnsupportedError with one line."""
        missing = [k for k in REQUIRED if k not in config]
        if missing:
            raise CheckpointError(f"config.json: BitNet config lacks {', '.join(missing)}")
        quant = BitNetQuantization.from_hf(config.get("quantization_config"))
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                    "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = config.get(key)
            # int() would accept "12" and True, and truncate 12.5: each changes the model that gets built
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v)):
                raise CheckpointError(f"config.json: BitNet {key} has the wrong type: expected an integer, got {v!r}")
        if not isinstance(config.get("rope_parameters") or {}, Mapping):
            raise CheckpointError(f"config.json: BitNet rope_parameters must be an object, got {config['rope_parameters']!r}")
        for key in ("rms_norm_eps", "rope_theta"):
            v = config.get(key, (config.get("rope_parameters") or {}).get(key) if key == "rope_theta" else None)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise CheckpointError(f"config.json: BitNet {key} has the wrong type: expected a number, got {v!r}")
        tie = config.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise CheckpointError(f"config.json: BitNet tie_word_embeddings must be true or false, got {tie!r}")
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            kv = int(config.get("num_key_value_heads") or heads)
            params = config.get("rope_parameters") or {}
            rope_type = params.get("rope_type", params.get("type", "default"))
            value = cls(
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_hidden_layers=int(config["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=kv,
                head_dim=int(config.get("head_dim") or (hidden // heads if heads else 0)),
                vocab_size=int(config["vocab_size"]),
                rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
                # transformers 5 keeps theta in rope_parameters; 4.x configs have it at the top level
                rope_theta=float(params.get("rope_theta", config.get("rope_theta", 500000.0))),
                # transformers' BitNetConfig default is relu2, so a config without the key means relu2
                hidden_act=str(config.get("hidden_act", "relu2")),
                max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                bos_token_id=None if config.get("bos_token_id") is None else int(config["bos_token_id"]),
                eos_token_ids=_ids(config.get("eos_token_id")),
                pad_token_id=None if config.get("pad_token_id") is None else int(config["pad_token_id"]),
                quantization=quant,
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"config.json: a BitNet value has the wrong type ({exc})") from None
        sizes = (value.hidden_size, value.intermediate_size, value.num_hidden_layers, heads, kv, value.vocab_size)
        if min(sizes) <= 0 or value.head_dim <= 0:
            raise CheckpointError("config.json: BitNet sizes must be positive")
        if heads % kv:
            raise CheckpointError("config.json: num_attention_heads must be a multiple of num_key_value_heads")
        if value.head_dim * heads != hidden:
            # attn_sub_norm has hidden_size weights and normalises the concatenated heads, so they must agree
            raise UnsupportedError(
                f"config.json: num_attention_heads x head_dim = {heads * value.head_dim} differs from hidden_size "
                f"{hidden}; BitNet's attn_sub_norm needs them equal"
            )
        if not (value.rope_theta > 0 and value.rope_theta != float("inf")):
            raise CheckpointError(f"config.json: BitNet rope_theta must be a finite positive number, got {value.rope_theta}")
        if not (0 <= value.rms_norm_eps < float("inf")):
            raise CheckpointError(f"config.json: BitNet rms_norm_eps must be finite and not negative, got {value.rms_norm_eps}")
        if value.max_position_embeddings <= 0:
            raise CheckpointError("config.json: BitNet max_position_embeddings must be positive")
        if value.head_dim % 2:
            raise CheckpointError(f"config.json: head_dim {value.head_dim} must be even for RoPE")
        if value.hidden_act not in HIDDEN_ACTS:
            raise UnsupportedError(
                f"config.json: BitNet hidden_act {value.hidden_act!r} is not supported; supported: {', '.join(HIDDEN_ACTS)}"
            )
        if rope_type != "default":
            raise UnsupportedError(f"config.json: BitNet rope_type {rope_type!r} is not supported; supported: default")
        if config.get("attention_bias"):
            raise UnsupportedError("config.json: BitNet with attention_bias=true is not supported (published models have none)")
        return value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        d["quantization"]["modules_to_not_convert"] = list(self.quantization.modules_to_not_convert)
        return d

    def kv_values_per_position(self) -> int:
        """K and V values one context position holds across all layers (for the memory roofline)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

    def linear_names(self) -> tuple[str, ...]:
        """Hugging Face weight names of every ternary projection, layer by layer (``model.layers.{i}.*.weight``)."""
        out = []
        for i in range(self.num_hidden_layers):
            for leaf in BITLINEAR_MODULES:
                block = "self_attn" if leaf.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
                out.append(f"model.layers.{i}.{block}.{leaf}.weight")
        skip = self.quantization.modules_to_not_convert
        return tuple(n for n in out if n[: -len(".weight")] not in skip)

    def tensor_rules(self) -> dict[str, Any]:
        """Hugging Face tensor name -> ``TensorRule`` of every weight this config needs: each ternary projection as
        float ``[out, in]`` (master or unpacked codes) or packed uint8 ``[out / 4, in]``, with an optional
        one-element float ``weight_scale`` (packed/offline layouts; ``weights.from_tensors`` checks which layout
        needs it), the norms and embedding as floats, ``lm_head.weight`` when untied (or as a copy of a tied one)."""
        from ...checkpoint import FLOAT_DTYPES, TensorRule
        from .weights import VALUES_PER_BYTE, _float_shapes

        rules: dict[str, Any] = {}
        for name in self.linear_names():
            out_f, in_f = self.linear_shape(name)
            forms = [((out_f, in_f), FLOAT_DTYPES)]
            if out_f % VALUES_PER_BYTE == 0:
                forms.append(((out_f // VALUES_PER_BYTE, in_f), frozenset({"U8"})))
            rules[name] = TensorRule(forms=tuple(forms))
            if not self.quantization.master_weights:  # master weights carry no scale: one is an unexpected tensor
                scale = name[: -len(".weight")] + ".weight_scale"
                rules[scale] = TensorRule(forms=(((1,), FLOAT_DTYPES), ((), FLOAT_DTYPES)), required=False)
        for name, shape in _float_shapes(self).items():
            rules[name] = TensorRule.floats(*shape)
        if self.tie_word_embeddings:
            rules["lm_head.weight"] = TensorRule.floats(self.vocab_size, self.hidden_size, required=False)
        return rules

    def linear_shape(self, name: str) -> tuple[int, int]:
        """[out_features, in_features] of a projection by its Hugging Face weight name."""
        leaf = name.rsplit(".", 2)[-2]
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        shapes = {
            "q_proj": (q, self.hidden_size),
            "k_proj": (kv, self.hidden_size),
            "v_proj": (kv, self.hidden_size),
            "o_proj": (self.hidden_size, q),
            "gate_proj": (self.intermediate_size, self.hidden_size),
            "up_proj": (self.intermediate_size, self.hidden_size),
            "down_proj": (self.hidden_size, self.intermediate_size),
        }
        return shapes[leaf]

    def rope_tables(self, positions: int) -> tuple[Any, Any]:
        """(cos, sin) float32 [positions, head_dim / 2] of Hugging Face's default RoPE (rotate-half layout):
        angle(p, i) = p * rope_theta ** (-2i / head_dim)  (Su et al., RoFormer, eq. 15)."""
        import numpy as np

        hd = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        angles = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
