"""Reading and writing BitNet b1.58 checkpoints: ternary codes + one scale per projection, float tensors for the rest.

Two layouts exist in the wild and both are read here (torch is not needed):

* **packed** (the published 2B-4T layout, transformers' ``pack_weights`` / ``unpack_weights`` in
  ``transformers/integrations/bitnet.py``): a ``uint8`` tensor of shape ``[out / 4, in]``; row ``r`` of the packed
  tensor holds, in bits ``2i..2i+1``, the code of output row ``i * out/4 + r`` plus one (so {-1, 0, 1} is stored as
  {0, 1, 2}; the fourth bit pattern, 3, is not a ternary value).  Beside it a ``weight_scale`` of one element:
  transformers' ``BitLinear`` (``linear_class: bitlinear``) divides by it, ``AutoBitLinear`` multiplies by it.
  ``AutoBitLinear`` offline checkpoints may also hold the codes unpacked, as floats in {-1, 0, 1}.
* **master** weights (bf16/fp32, ``autobitlinear`` + ``online``), ternarised on load with the absmean rule of
  BitNet b1.58 (Ma et al., "The Era of 1-bit LLMs", arXiv 2402.17764, eqs. 1-3):
  ``gamma = mean(|W|)``, ``codes = clamp(round(W / gamma), -1, 1)``, ``W_t = gamma * codes``; as in transformers'
  ``WeightQuant``, gamma is clamped below at 1e-5 and the division is a multiplication by ``1 / gamma``.

Every projection comes out as a ``TernaryLinear``: ``codes`` int8 ``[out, in]`` in {-1, 0, 1} and ``scale`` float
such that W = codes * scale, whatever the stored convention was.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ...errors import CheckpointError, UnsupportedError
from .config import BitNetConfig

VALUES_PER_BYTE = 4  # four 2-bit fields per uint8 (transformers' VALUES_PER_ITEM)
ABSMEAN_EPS = 1e-5  # transformers' WeightQuant: weight.abs().mean().clamp_(min=1e-5)
LAYOUTS = ("packed", "unpacked", "master")
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Buffers transformers may save that carry no model information.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TernaryLinear:
    """One BitLinear weight: W = codes * scale.

    ``codes``: int8 ``[out_features, in_features]``, values in {-1, 0, 1}.  ``scale``: float (>0), the per-tensor
    absmean scale in the weight's own units (transformers' 2B-4T ``weight_scale`` is its inverse).
    ``stored``: how the checkpoint itself holds the scale, so that the reference can repeat transformers' exact
    float32 operation order: ``("divide", weight_scale)`` (BitLinear: y / (input_scale * weight_scale)),
    ``("multiply", weight_scale)`` (AutoBitLinear offline: y * weight_scale), ``("inverse", 1/gamma)``
    (AutoBitLinear online: W = codes / (1/gamma)); None when made here (then W = codes * scale).
    """

    codes: np.ndarray
    scale: float
    stored: tuple[str, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def nonzero_fraction(self) -> float:
        return float(np.count_nonzero(self.codes)) / max(1, self.codes.size)

    def dense(self) -> np.ndarray:
        """float32 ``[out, in]``: codes * scale."""
        return self.codes.astype(np.float32) * np.float32(self.scale)


@dataclass(frozen=True)
class BitNetWeights:
    """A BitNet checkpoint's weights, read and validated.

    ``ternary``: Hugging Face weight name (``model.layers.{i}.self_attn.q_proj.weight``, ...) -> TernaryLinear.
    ``floats``: every other tensor (embedding, RMSNorm weights, ``lm_head.weight`` when untied, projections listed in
    ``modules_to_not_convert``) as float32 numpy arrays.  ``master``: the float32 master weights of the ternary
    projections, only for the master layout (LoRA merges need them; packed checkpoints do not have them).
    """

    config: BitNetConfig
    layout: str  # one of LAYOUTS
    ternary: Mapping[str, TernaryLinear]
    floats: Mapping[str, np.ndarray]
    master: Mapping[str, np.ndarray] | None = field(default=None)


# --- ternary codes ------------------------------------------------------------------------------------------


def pack(codes: np.ndarray) -> np.ndarray:
    """Pack ternary codes into transformers' published layout.

    ``codes``: integer ``[out, in]`` (or ``[out]``) with values in {-1, 0, 1}, ``out`` a multiple of 4.
    Returns uint8 ``[out / 4, in]``: byte ``[r, c]`` holds ``codes[i * out/4 + r, c] + 1`` in bits ``2i..2i+1``.
    Raises CheckpointError for non-ternary values or a row count that is not a multiple of 4 (transformers'
    ``unpack_weights`` always returns ``4 * rows`` rows, so other counts cannot round-trip).
    """
    codes = np.asarray(codes)
    if codes.ndim not in (1, 2):
        raise CheckpointError(f"pack: codes must be 1-D or 2-D, got shape {codes.shape}")
    if codes.shape[0] % VALUES_PER_BYTE:
        raise CheckpointError(f"pack: {codes.shape[0]} output rows is not a multiple of {VALUES_PER_BYTE}")
    if codes.size and (codes.min() < -1 or codes.max() > 1):
        raise CheckpointError("pack: codes must be ternary (-1, 0, 1)")
    rows = codes.shape[0] // VALUES_PER_BYTE
    fields = (codes.astype(np.int16) + 1).astype(np.uint8)
    packed = np.zeros((rows, *codes.shape[1:]), dtype=np.uint8)
    for i in range(VALUES_PER_BYTE):
        packed |= fields[i * rows : (i + 1) * rows] << np.uint8(2 * i)
    return packed


def unpack(packed: np.ndarray, name: str = "weight") -> np.ndarray:
    """Unpack transformers' 2-bit layout: uint8 ``[rows, in]`` -> int8 codes ``[4 * rows, in]`` in {-1, 0, 1}.

    Raises CheckpointError if any field holds 3 (not a ternary value: the tensor is not a BitNet packed weight).
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise CheckpointError(f"{name}: packed BitNet weights must be uint8, got {packed.dtype}")
    fields = [(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(VALUES_PER_BYTE)]
    unpacked = np.concatenate(fields, axis=0)
    if unpacked.size and unpacked.max() > 2:
        bad = int(np.count_nonzero(unpacked == 3))
        raise CheckpointError(
            f"{name}: {bad} packed 2-bit fields hold 3, which is not a ternary value; not a BitNet packed weight"
        )
    return (unpacked.astype(np.int8) - np.int8(1)).astype(np.int8)


def ternarize(weight: np.ndarray, name: str = "weight") -> TernaryLinear:
    """Absmean ternarisation of a float master weight ``[out, in]`` (BitNet b1.58, arXiv 2402.17764, eqs. 1-3).

    Computed in float32 exactly as transformers' ``WeightQuant``: ``inv = 1 / max(mean|W|, 1e-5)``,
    ``codes = clamp(round(W * inv), -1, 1)`` (round half to even), ``scale = 1 / inv``.
    Raises CheckpointError for non-finite values.
    """
    w = np.asarray(weight, dtype=np.float32)
    if not np.isfinite(w).all():
        raise CheckpointError(f"{name}: master weight holds NaN or Inf")
    # accumulate in float64 and round once: the correctly rounded mean, which torch's float32 reduction also gives
    gamma = np.float32(np.abs(w).mean(dtype=np.float64))
    inv = np.float32(1.0) / max(gamma, np.float32(ABSMEAN_EPS))
    codes = np.clip(np.round(w * inv), -1, 1).astype(np.int8)
    return TernaryLinear(codes=codes, scale=float(np.float32(1.0) / inv), stored=("inverse", float(inv)))


def faithful_master(t: TernaryLinear) -> np.ndarray:
    """float32 master weights that the absmean rule maps back to exactly ``t`` (codes and scale).

    Writing ``codes * scale`` as master weights would not: its absmean is ``scale * p`` (p = fraction of non-zero
    codes), so re-ternarising shrinks every scale by p.  ``codes * scale / p`` has absmean ``scale`` and every
    non-zero entry is +-1/p with 1/p >= 1, which rounds and clamps back to +-1.
    """
    p = t.nonzero_fraction
    if p == 0.0:
        return np.zeros(t.codes.shape, dtype=np.float32)
    return t.codes.astype(np.float32) * np.float32(t.scale / p)


# --- safetensors without torch (bf16 included) --------------------------------------------------------------

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "U8": "u1", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as numpy (memory-mapped; bf16 widened to float32 exactly)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    out: dict[str, np.ndarray] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        dtype, shape = info["dtype"], tuple(info["shape"])
        if dtype == "BF16":
            # bf16 is the top half of a float32: widen by shifting the 16 bits up (exact)
            arr = (raw.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
        elif dtype in _DTYPES:
            arr = raw.view(_DTYPES[dtype])
        else:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError(f"{path}: tensor {key!r} is truncated")
        out[key] = arr.reshape(shape)
    return out


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even as torch does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def write_safetensors(path: Path, tensors: Mapping[str, tuple[np.ndarray, str]]) -> None:
    """Write ``name -> (array, dtype)`` with dtype one of F32, F16, BF16, U8, I8, with transformers' metadata."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, (arr, dtype) in tensors.items():
        if dtype == "BF16":
            blob = _to_bf16_bits(arr).tobytes()
        elif dtype in _DTYPES:
            blob = np.ascontiguousarray(arr, dtype=_DTYPES[dtype]).tobytes()
        else:
            raise UnsupportedError(f"write_safetensors: dtype {dtype} is not supported")
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)


def read_tensors(root: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""
    index = root / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({root / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
    elif (root / WEIGHTS_FILE).is_file():
        files = [root / WEIGHTS_FILE]
    else:
        raise CheckpointError(f"{root}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX}")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"{index}: lists a shard that is missing: {path.name}")
        tensors.update(_read_safetensors(path))
    return tensors


# --- loading ------------------------------------------------------------------------------------------------


def _ternary(codes: np.ndarray, tensors: Mapping[str, np.ndarray], module: str, divides: bool) -> TernaryLinear:
    value = _scale_of(tensors, module)
    scale = float(np.float32(1.0) / np.float32(value)) if divides else value
    return TernaryLinear(codes=codes, scale=scale, stored=("divide" if divides else "multiply", value))


def _scale_of(tensors: Mapping[str, np.ndarray], module: str) -> float:
    key = f"{module}.weight_scale"
    if key not in tensors:
        raise CheckpointError(f"{module}: packed/offline BitNet weight has no weight_scale ({key} is missing)")
    raw = np.asarray(tensors[key], dtype=np.float64).reshape(-1)
    if raw.size != 1:
        raise CheckpointError(f"{key}: expected one per-tensor scale, got {raw.size} values")
    value = float(raw[0])
    if not np.isfinite(value) or value <= 0:
        raise CheckpointError(f"{key}: weight_scale must be finite and positive, got {value}")
    return float(np.float32(value))


def _check_float(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "f":
        raise CheckpointError(f"{name}: expected a float tensor, got {arr.dtype}")
    out = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise CheckpointError(f"{name}: holds NaN or Inf")
    return out


def _float_shapes(config: BitNetConfig) -> dict[str, tuple[int, ...]]:
    h, ff = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (h,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        shapes[f"{p}.self_attn.attn_sub_norm.weight"] = (h,)
        shapes[f"{p}.mlp.ffn_sub_norm.weight"] = (ff,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for module in config.quantization.modules_to_not_convert:
        if module != "lm_head" and f"{module}.weight" in _all_linear_names(config):
            shapes[f"{module}.weight"] = config.linear_shape(f"{module}.weight")
    return shapes


def _all_linear_names(config: BitNetConfig) -> set[str]:
    from dataclasses import replace

    plain = replace(config, quantization=replace(config.quantization, modules_to_not_convert=()))
    return set(plain.linear_names())


def from_tensors(config: BitNetConfig, tensors: Mapping[str, np.ndarray], where: str = "checkpoint") -> BitNetWeights:
    """Validate raw tensors (Hugging Face names) against ``config`` and return codes, scales and floats.

    Raises CheckpointError for a missing or unexpected tensor, a wrong shape, a non-ternary packed field, a missing
    ``weight_scale``, non-finite values, or projections stored in more than one layout.
    """
    quant = config.quantization
    ternary: dict[str, TernaryLinear] = {}
    master: dict[str, np.ndarray] = {}
    layouts: set[str] = set()
    used: set[str] = set()
    for name in config.linear_names():
        module = name[: -len(".weight")]
        if name not in tensors:
            raise CheckpointError(f"{where}: BitNet weight {name} is missing")
        raw = tensors[name]
        used.add(name)
        out_f, in_f = config.linear_shape(name)
        if raw.dtype == np.uint8:
            if tuple(raw.shape) != (out_f // VALUES_PER_BYTE, in_f) or out_f % VALUES_PER_BYTE:
                raise CheckpointError(
                    f"{name}: packed shape {list(raw.shape)} does not fit [{out_f} / {VALUES_PER_BYTE}, {in_f}]"
                )
            if quant.master_weights:
                raise CheckpointError(f"{name}: packed uint8 weights but quantization_mode is 'online' (master weights)")
            codes = unpack(raw, name)
            ternary[name] = _ternary(codes, tensors, module, quant.scale_divides)
            used.add(f"{module}.weight_scale")
            layouts.add("packed")
            continue
        w = _check_float(name, raw)
        if tuple(w.shape) != (out_f, in_f):
            raise CheckpointError(f"{name}: shape {list(w.shape)} does not fit [{out_f}, {in_f}]")
        has_scale = f"{module}.weight_scale" in tensors
        if has_scale and not quant.master_weights:
            if not np.isin(w, (-1.0, 0.0, 1.0)).all():
                raise CheckpointError(
                    f"{name}: unpacked offline weight with a weight_scale must hold only -1, 0, 1; it is not ternary"
                )
            ternary[name] = _ternary(w.astype(np.int8), tensors, module, quant.scale_divides)
            used.add(f"{module}.weight_scale")
            layouts.add("unpacked")
        elif has_scale:
            raise CheckpointError(
                f"{name}: master weights (quantization_mode 'online') must not carry a weight_scale; the absmean "
                "scale is computed from the weights"
            )
        else:
            # No stored scale: float master weights, whatever linear_class says (transformers' bf16 master
            # checkpoints cannot be loaded into a packed BitLinear, so the tensors are the only honest guide).
            ternary[name] = ternarize(w, name)
            master[name] = w
            layouts.add("master")
    if len(layouts) > 1:
        raise CheckpointError(f"{where}: BitNet projections are stored in mixed layouts ({', '.join(sorted(layouts))})")
    floats: dict[str, np.ndarray] = {}
    for name, shape in _float_shapes(config).items():
        if name not in tensors:
            raise CheckpointError(f"{where}: BitNet weight {name} is missing")
        arr = _check_float(name, tensors[name])
        if tuple(arr.shape) != shape:
            raise CheckpointError(f"{name}: shape {list(arr.shape)} does not fit {list(shape)}")
        floats[name] = arr
        used.add(name)
    if config.tie_word_embeddings and "lm_head.weight" in tensors:
        used.add("lm_head.weight")  # a tied copy some savers write; the embedding is what the model uses
    extra = sorted(k for k in tensors if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if extra:
        more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
        raise CheckpointError(f"{where}: unexpected tensors for this BitNet config: {', '.join(extra[:3])}{more}")
    layout = layouts.pop() if layouts else "master"
    return BitNetWeights(
        config=config, layout=layout, ternary=ternary, floats=floats, master=master if layout == "master" else None
    )


def read_config(root: Path) -> BitNetConfig:
    path = root / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: config.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: config.json must be a JSON object")
    return BitNetConfig.from_hf(raw)


def load(root: str | Path) -> BitNetWeights:
    """Read a BitNet checkpoint directory (config.json + safetensors) in any layout; see the module docstring."""
    root = Path(root)
    config = read_config(root)
    return from_tensors(config, read_tensors(root), str(root))


# --- writing ------------------------------------------------------------------------------------------------


def hf_config(weights: BitNetWeights, layout: str, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` for ``weights`` written in ``layout``: ``base`` (the source config) with its
    ``quantization_config`` set to what transformers needs to load that layout."""
    cfg = dict(base or {})
    c = weights.config
    cfg.update(
        {
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "rms_norm_eps": c.rms_norm_eps,
            "hidden_act": c.hidden_act,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_ids[0] if len(c.eos_token_ids) == 1 else list(c.eos_token_ids) or None,
            "pad_token_id": c.pad_token_id,
        }
    )
    cfg.pop("rope_theta", None)
    skip = list(c.quantization.modules_to_not_convert)
    if layout == "packed":
        q = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
    elif layout == "master":
        q = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
    else:
        raise UnsupportedError(f"unknown BitNet layout {layout!r}; writable: packed, master")
    if skip:
        q["modules_to_not_convert"] = skip
    cfg["quantization_config"] = q
    return cfg


def write_checkpoint(
    weights: BitNetWeights,
    out_dir: str | Path,
    layout: str,
    *,
    base_config: Mapping[str, Any] | None = None,
    float_dtype: str = "F32",
    copy_files_from: str | Path | None = None,
) -> Path:
    """Write ``weights`` as a Hugging Face ``BitNetForCausalLM`` directory in ``layout``.

    ``packed``: uint8 codes (``pack``) + float32 ``weight_scale`` = 1 / scale, config ``bitlinear``/``offline`` —
    the 2B-4T layout, reproducing codes and scales exactly.  ``master``: float ``[out, in]`` weights, config
    ``autobitlinear``/``online``; the checkpoint's own master weights when it has them, else ``faithful_master``
    (float32 only, since rounding ``scale / p`` to bf16 would move the scale).  ``float_dtype`` (F32, BF16, F16) is
    the dtype of the non-ternary tensors and of the master weights.  Tokenizer files are copied from
    ``copy_files_from`` when given.  Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    for name, arr in weights.floats.items():
        tensors[name] = (arr, float_dtype)
    for name, t in weights.ternary.items():
        module = name[: -len(".weight")]
        if layout == "packed":
            tensors[name] = (pack(t.codes), "U8")
            tensors[f"{module}.weight_scale"] = (np.array([1.0 / np.float32(t.scale)], dtype=np.float32), "F32")
        elif layout == "master":
            if weights.master is not None:
                tensors[name] = (weights.master[name], float_dtype)
            else:
                tensors[name] = (faithful_master(t), "F32")
        else:
            raise UnsupportedError(f"unknown BitNet layout {layout!r}; writable: packed, master")
    write_safetensors(out / WEIGHTS_FILE, dict(sorted(tensors.items())))
    cfg = hf_config(weights, layout, base_config)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if copy_files_from is not None:
        copy_tokenizer(Path(copy_files_from), out)
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def copy_tokenizer(src: Path, dst: Path, names: Iterable[str] = TOKENIZER_FILES) -> None:
    import shutil

    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
