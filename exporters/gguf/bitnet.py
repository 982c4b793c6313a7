"""BitNet b1.58 -> GGUF for llama.cpp's ``bitnet`` architecture, with the ternary weights written exactly.

What llama.cpp computes (``src/models/bitnet.cpp`` in the llama.cpp that llama-cpp-python 0.3.36 bundles):
pre-norm blocks; q/k/v with NEOX-style ("rotate-half") RoPE, the same layout as transformers, so q/k need no
permutation; ``attn_sub_norm`` before ``attn_output``; the FFN ``ffn_down(ffn_sub_norm(silu(ffn_gate x) * ffn_up x))``
with SiLU *hard-coded*; the output projection is ``token_embd`` (there is no ``output`` tensor).  Every projection
``W`` is followed by an optional one-element tensor ``<name>.scale`` that multiplies its output
(``build_lora_mm(w, cur, w_s)``: ``ggml_mul(ggml_mul_mat(w, cur), w_s)``).

So the exact encoding of W = codes * scale is: the codes themselves as the weight tensor and ``scale`` as
``<name>.scale`` (F32).  gguf-py's TQ1_0/TQ2_0 quantisers store ``d = max |x|`` per 256-wide block and
``round(x / d)``: on codes, d is 1 (or 0 for an all-zero block) and the stored trits are the codes, bit for bit.
Feeding them ``codes * scale`` instead, or re-ternarising with absmean as llama.cpp's converter does, would not be
exact (the converter's absmean of ternary * s is s * p: every scale shrinks by the non-zero fraction p).

What llama.cpp cannot express, and is refused here (UnsupportedError naming what works): squared-ReLU FFNs
(``hidden_act: relu2``, the 2B-4T model), an untied ``lm_head``, TQ rows not a multiple of 256.  It also does not
quantise activations per token: F32/F16 weights see float activations, and TQ weights meet activations quantised
to 8 bits per 256-wide block (Q8_K) — close to, but not the same as, the reference's per-token A8.

Quant names (``TERNARY_TYPES``): ``tq1_0`` (1.69 bpw), ``tq2_0`` (2.06 bpw), ``f16``/``f32`` (codes as floats,
exact, for checking).  Other matrices (``token_embd``, which is also the output): ``f32``, ``f16`` or ``q8_0``;
norms and scales are always F32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgekit.errors import CheckpointError, UnsupportedError
from edgekit.families.bitnet.config import BitNetConfig
from edgekit.families.bitnet.weights import BitNetWeights

ARCH = "bitnet"
# quant name -> GGML type of the ternary projections
TERNARY_TYPES = {"tq1_0": "TQ1_0", "tq2_0": "TQ2_0", "f16": "F16", "f32": "F32"}
# name -> GGML type of the embedding (which llama.cpp's bitnet graph also uses as the output projection)
EMBEDDING_TYPES = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}
TQ_BLOCK = 256  # QK_K: TQ1_0 / TQ2_0 blocks span 256 weights of one row
WORKING_FORMATS = "executorch, onnx"  # formats that run the squared-ReLU BitNet FFN (issue 12, items 5-6)
HF_TO_GGUF_SUFFIX = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    # gguf-py's map knows only the first BitNet release's names (inner_attn_ln, ffn_layernorm); 2B-4T and
    # transformers' BitNetForCausalLM call them attn_sub_norm / ffn_sub_norm
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "mlp.ffn_sub_norm": "ffn_sub_norm",
}


@dataclass(frozen=True)
class GGUFPlan:
    """How a BitNet model is stored: ``ternary`` in TERNARY_TYPES, ``embedding`` in EMBEDDING_TYPES."""

    ternary: str = "tq2_0"
    embedding: str = "f16"

    def __post_init__(self) -> None:
        if self.ternary not in TERNARY_TYPES:
            raise UnsupportedError(
                f"GGUF BitNet quant {self.ternary!r} is not supported; valid: {', '.join(TERNARY_TYPES)}"
            )
        if self.embedding not in EMBEDDING_TYPES:
            raise UnsupportedError(
                f"GGUF BitNet embedding type {self.embedding!r} is not supported; valid: {', '.join(EMBEDDING_TYPES)}"
            )

    @property
    def file_type(self) -> int:
        """llama.cpp's ``general.file_type`` (gguf.LlamaFileType) of the ternary tensors."""
        import gguf

        return {
            "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0,
            "tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "f32": gguf.LlamaFileType.ALL_F32,
        }[self.ternary]


def check_supported(config: BitNetConfig, plan: GGUFPlan | None = None) -> None:
    """Raise UnsupportedError (naming what works) where llama.cpp's bitnet graph would compute another model."""
    if config.hidden_act != "silu":
        raise UnsupportedError(
            f"GGUF cannot run this BitNet model: llama.cpp's bitnet graph hard-codes a SiLU gate, the model uses "
            f"hidden_act={config.hidden_act!r} (squared ReLU), so the file would run but compute another model; "
            f"export it with --format {WORKING_FORMATS.replace(', ', ' or --format ')} instead"
        )
    if not config.tie_word_embeddings:
        raise UnsupportedError(
            "GGUF cannot run this BitNet model: llama.cpp's bitnet graph uses token_embd as the output projection "
            f"and has no separate lm_head; export it with --format {WORKING_FORMATS.replace(', ', ' or --format ')} instead"
        )
    if plan is not None and plan.ternary in ("tq1_0", "tq2_0"):
        for name in config.linear_names():
            in_f = config.linear_shape(name)[1]
            if in_f % TQ_BLOCK:
                raise UnsupportedError(
                    f"GGUF {plan.ternary}: {name} has rows of {in_f} weights, not a multiple of {TQ_BLOCK} "
                    "(TQ1_0/TQ2_0 block width); use --quant f16 (exact ternary codes as floats)"
                )


def tensor_name(hf_name: str) -> str:
    """llama.cpp's name of a Hugging Face BitNet weight (``model.layers.3.mlp.down_proj.weight`` ->
    ``blk.3.ffn_down.weight``)."""
    import gguf

    if hf_name == "model.embed_tokens.weight":
        return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    if hf_name == "model.norm.weight":
        return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight"
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        suffix = HF_TO_GGUF_SUFFIX.get(".".join(parts[3:-1]))
        if suffix is not None:
            return f"blk.{int(parts[2])}.{suffix}.weight"
    raise UnsupportedError(f"GGUF: no llama.cpp bitnet tensor name for {hf_name!r}")


def check_names_against_gguf(config: BitNetConfig) -> None:
    """Cross-check ``tensor_name`` with gguf-py's own map for MODEL_ARCH.BITNET (every name it knows must agree)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, config.num_hidden_layers)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET]}
    for hf in [*config.linear_names(), "model.embed_tokens.weight", "model.norm.weight"]:
        ours = tensor_name(hf)
        theirs = names.get_name(hf, try_suffixes=(".weight",))
        if theirs is not None and theirs != ours:
            raise UnsupportedError(f"GGUF: gguf-py maps {hf} to {theirs}, edgekit to {ours}")
        base = ours.rsplit(".", 1)[0]
        if not any(base == a.format(bid=i) for a in allowed for i in range(config.num_hidden_layers)) and base not in allowed:
            raise UnsupportedError(f"GGUF: {ours} is not a tensor of llama.cpp's bitnet architecture")


def gguf_tensors(weights: BitNetWeights, plan: GGUFPlan) -> Iterator[tuple[str, np.ndarray, str]]:
    """(GGUF name, float32 array, GGML type name) for every tensor, in a stable order.

    Ternary projections: the codes [out, in] as float32 (exact), typed ``TERNARY_TYPES[plan.ternary]``, then
    ``<name>.scale`` float32 [1].  Norms: F32.  Embedding: ``EMBEDDING_TYPES[plan.embedding]``.  Projections kept
    in float (``modules_to_not_convert``) are written F32 without a scale.
    """
    cfg = weights.config
    yield tensor_name("model.embed_tokens.weight"), weights.floats["model.embed_tokens.weight"], EMBEDDING_TYPES[
        plan.embedding
    ]
    for hf, arr in weights.floats.items():
        if hf in ("model.embed_tokens.weight", "lm_head.weight"):
            continue
        yield tensor_name(hf), arr, "F32"
    ttype = TERNARY_TYPES[plan.ternary]
    for hf in cfg.linear_names():
        t = weights.ternary[hf]
        name = tensor_name(hf)
        yield name, t.codes.astype(np.float32), ttype
        yield name.rsplit(".", 1)[0] + ".scale", np.array([t.scale], dtype=np.float32), "F32"


def add_metadata(w: Any, weights: BitNetWeights, checkpoint_dir: Path, name: str, pretokenizer: str | None) -> dict[str, Any]:
    """Architecture keys for llama.cpp's bitnet loader, then the vocabulary (``vocab.add_to_writer``).
    Returns a small summary (pre-tokenizer, padded vocab)."""
    from edgekit.exporters.gguf import vocab

    c = weights.config
    w.add_name(name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    # no BitNet-specific pre-tokenizer aliases: 2B-4T's Llama-3 split is llama.cpp's generic "llama-bpe"
    voc = vocab.build_vocab(checkpoint_dir / "tokenizer.json", c.vocab_size, {}, pretokenizer)
    vocab.add_to_writer(w, checkpoint_dir, voc, c.bos_token_id, list(c.eos_token_ids), c.pad_token_id)
    return {"pretokenizer": voc.pretokenizer, "padded_vocab": voc.padded}


def write(
    weights: BitNetWeights,
    checkpoint_dir: str | Path,
    out_path: str | Path,
    plan: GGUFPlan = GGUFPlan(),
    *,
    name: str | None = None,
    pretokenizer: str | None = None,
) -> dict[str, Any]:
    """Write ``weights`` (tokenizer files from ``checkpoint_dir``) to ``out_path`` as a llama.cpp bitnet GGUF.

    Raises UnsupportedError where llama.cpp cannot express the model (``check_supported``).  Returns a summary:
    tensor type histogram, bytes and bits per ternary weight, seconds.
    """
    import gguf

    from edgekit.exporters.gguf import writer as gguf_writer

    check_supported(weights.config, plan)
    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    t0 = time.perf_counter()
    w = gguf.GGUFWriter(str(out_path), ARCH)
    ternary_bytes = ternary_params = 0
    try:
        summary = add_metadata(w, weights, checkpoint_dir, name or checkpoint_dir.name, pretokenizer)
        w.add_file_type(int(plan.file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for gname, arr, tname in gguf_tensors(weights, plan):
            qtype = gguf.GGMLQuantizationType[tname]
            data, raw = gguf_writer.encode(arr, qtype)
            w.add_tensor(gname, data, raw_dtype=raw)
            if gname.endswith(".weight") and arr.ndim == 2 and gname.startswith("blk."):
                ternary_bytes += data.nbytes
                ternary_params += arr.size
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    summary.update(
        {
            "artifact": out_path.name,
            "arch": ARCH,
            "tensor_types": gguf_writer.tensor_types(out_path),
            "ternary_bits_per_weight": round(8 * ternary_bytes / max(1, ternary_params), 4),
            "file_bytes": out_path.stat().st_size,
            "export_seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return summary


def read_back(path: str | Path, weights: BitNetWeights) -> dict[str, float]:
    """Tensors read back from the file vs ``weights``: raises CheckpointError unless every ternary tensor
    dequantises to exactly its codes and every scale equals the model's.  Returns the largest embedding and norm
    errors (the quantised embedding's error is within its type's step, reported, not checked)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    emb_err = norm_err = 0.0
    for hf in weights.config.linear_names():
        name = tensor_name(hf)
        t = weights.ternary[hf]
        if name not in stored:
            raise CheckpointError(f"{path}: tensor {name} is missing")
        got = gguf.quants.dequantize(stored[name].data, stored[name].tensor_type).reshape(t.codes.shape)
        if not np.array_equal(got, t.codes.astype(np.float32)):
            raise CheckpointError(f"{path}: {name} does not hold the ternary codes exactly")
        scale = np.asarray(stored[name.rsplit(".", 1)[0] + ".scale"].data, dtype=np.float32).reshape(-1)
        if scale.shape != (1,) or scale[0] != np.float32(t.scale):
            raise CheckpointError(f"{path}: {name} scale {scale} differs from {t.scale}")
    for hf, arr in weights.floats.items():
        if hf == "lm_head.weight":
            continue
        name = tensor_name(hf)
        got = gguf.quants.dequantize(stored[name].data, stored[name].tensor_type).reshape(arr.shape)
        err = float(np.abs(got - arr).max())
        if hf == "model.embed_tokens.weight":
            emb_err = err
        else:
            norm_err = max(norm_err, err)
    if norm_err != 0.0:
        raise CheckpointError(f"{path}: norm weights differ from the model by up to {norm_err}")
    return {"embedding_max_abs_error": emb_err, "norm_max_abs_error": norm_err}


def export(job: Any, out_dir: Path) -> dict[str, Any]:
    """The recipe's entry point: the merged reference's ternary weights -> ``model.gguf`` at the plan's quant
    (``tq1_0``/``tq2_0`` exact ternary, or ``f16``/``f32`` codes x scale as floats)."""
    from . import ARTIFACT

    options = job.plan.options
    plan = GGUFPlan(ternary=job.plan.quant.name, embedding=options.embedding_type)
    job.progress(f"writing the bitnet GGUF (ternary tensors as {plan.ternary.upper()}, embedding {plan.embedding.upper()})")
    summary = write(job.reference.weights, job.checkpoint.path, out_dir / ARTIFACT, plan,
                    name=job.checkpoint.path.name, pretokenizer=options.pretokenizer)
    return {**summary, "file": ARTIFACT, "plan": {"ternary": plan.ternary, "embedding": plan.embedding}}


def file_constants(root: Path, manifest: Any, checkpoint: Any) -> list[str]:
    """The metadata check (``edgekit.tensorcheck``): every key ``add_metadata`` writes for ``checkpoint``, read
    back from the bundle's file."""
    from types import SimpleNamespace

    from . import readback

    pretokenizer = (manifest["plan"].get("options") or {}).get("pretokenizer")
    shim = SimpleNamespace(config=checkpoint.model_config)  # add_metadata reads only the config of the weights
    return readback.check_metadata(root / manifest["artifact"]["file"], ARCH,
                                   lambda w: add_metadata(w, shim, checkpoint.path, checkpoint.path.name, pretokenizer))


def file_weights(root: Path, manifest: Any, weights: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The bundle's GGUF tensors under the checkpoint's names (``edgekit.tensorcheck``): each ternary projection
    read back as its stored codes (TQ1_0 / TQ2_0 / F16 / F32, dequantised by gguf-py) times its ``.scale``
    tensor, typed ``ternary/<type>`` (must be exact); the embedding (``token_embd``, also the output projection:
    alias for ``lm_head.weight``) and norms as stored.  The activation quantisation per tensor is llama.cpp's
    (``readback.TYPES``: Q8_K for the TQ types, fp16 for F16, Q8_0 for a Q8_0 embedding).

    Raises ``BundleError`` when the file cannot be read."""
    import gguf

    from edgekit.errors import BundleError
    from edgekit.tensorcheck import TERNARY_PREFIX, ReadTensor

    from .readback import TYPES

    path = root / manifest["artifact"]["file"]
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a readable GGUF file ({exc}); re-export the bundle") from None
    inverse: dict[str, str] = {}
    for hf in weights:
        if hf != "lm_head.weight":
            try:
                inverse[tensor_name(hf)] = hf
            except UnsupportedError:
                continue
    stored = {t.name: t for t in reader.tensors}
    out: list[ReadTensor] = []
    for t in reader.tensors:
        base = t.name.rsplit(".", 1)[0]
        if t.name.endswith(".scale") and base + ".weight" in stored:
            continue  # read with its weight below
        qtype = t.tensor_type.name
        block, levels, act = TYPES.get(qtype, (0, 0, TYPES["F32"][2]))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        hf = inverse.get(t.name)
        if hf is None:
            out.append(ReadTensor(t.name, f"<unknown:{t.name}>", values, qtype, block, levels))
            continue
        module = ("lm_head",) if hf == "model.embed_tokens.weight" else (
            (hf.removesuffix(".weight"),) if values.ndim == 2 else ())
        scale = stored.get(base + ".scale")
        if scale is not None:  # a ternary projection: codes (exact in every type) x the F32 scale
            s = np.asarray(gguf.quants.dequantize(scale.data, scale.tensor_type), dtype=np.float32).reshape(-1)
            values = values * s[0] if s.size == 1 else np.full_like(values, np.nan)
            out.append(ReadTensor(t.name, hf, values, TERNARY_PREFIX + qtype, 0, 3, None, module, act))
        else:
            out.append(ReadTensor(t.name, hf, values, qtype, block, levels, None, module, act))
    return out, {"lm_head.weight": "model.embed_tokens.weight"}
