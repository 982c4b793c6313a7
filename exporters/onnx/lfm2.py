"""LFM2 -> ONNX: the decoder as an ONNX graph with explicit state, written directly from the merged float32 weights.

The graph is generated op by op (no tracing) so that it uses ONNX Runtime's fused CPU kernels from the start:
``GroupQueryAttention`` (rotary embedding and the KV cache append inside the kernel), ``CausalConvWithState``
(the short convolution and its rolling state), ``SimplifiedLayerNormalization`` /
``SkipSimplifiedLayerNormalization`` (RMSNorm, with the residual add fused).  Input, output and state names and
shapes are those of onnxruntime-genai's LFM2 builder, so the same file runs under onnxruntime-genai:

    input_ids [batch, seq] int64, attention_mask [batch, total] int64,
    past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]   -> present.{i}.key / .value
    past.{i}.conv [batch, hidden, L_cache - 1]                           -> present.{i}.conv
    logits [batch, kept, vocab]

One extra input, ``logits_to_keep`` (int64 [1], default 1), is stored as an initializer with the same name, which
makes it optional: engines that do not know it (onnxruntime-genai) get logits for the last position only, so a
512-token prefill does not multiply 512 rows by the vocabulary; 0 keeps every position (verification).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ... import calibration
from ... import gptq as core_gptq
from ...errors import InternalError
from ...families.lfm2 import Lfm2Config
from .. import ExportJob
from . import ARTIFACT, DATA, attributes, builder, check, gptq, mixed, quantize
from .builder import MS_DOMAIN, GraphBuilder
from .quantize import TiedHead

LOGITS_TO_KEEP = "logits_to_keep"
GENAI_CONFIG = "genai_config.json"
# the tied embedding / LM head matrix, stored once as [hidden, vocab]; the quantiser keeps it shared
TIED_HEAD = TiedHead(
    weight="lm_head.MatMul.weight", node="lm_head/MatMul", embed_nodes=("embed/Transpose", "embed/Gather"),
    gather="embed/Gather",
)
LM_HEAD = TIED_HEAD.weight


def state_inputs(s: Lfm2Config) -> dict[str, list[Any]]:
    """State input name -> shape (symbolic dims as strings), in layer order."""
    out: dict[str, list[Any]] = {}
    for i, kind in enumerate(s.layer_types):
        if kind == "full_attention":
            for kv in ("key", "value"):
                out[f"past_key_values.{i}.{kv}"] = ["batch_size", s.num_key_value_heads, "past_sequence_length", s.head_dim]
        else:
            out[f"past.{i}.conv"] = ["batch_size", s.hidden_size, s.conv_cache]
    return out


def present_name(past: str) -> str:
    return past.replace("past_key_values.", "present.").replace("past.", "present.")


def node_rules(s: Lfm2Config) -> dict[str, attributes.NodeRule]:
    """The fused kernels' attributes for ``s`` (op_type -> rule): what ``build`` writes and the tensor check reads
    back (``file_constants``)."""
    attn = sum(kind == "full_attention" for kind in s.layer_types)
    norm, skip_norm = attributes.rms_norms(s.norm_eps)
    conv = attributes.NodeRule("CausalConvWithState", {"ndim": 1, "activation": "none"}, len(s.layer_types) - attn)
    rules = (attributes.gqa(s.num_attention_heads, s.num_key_value_heads, s.head_dim, attn), norm, skip_norm, conv)
    return {r.op_type: r for r in rules}


def build(weights: Mapping[str, np.ndarray], shape: Lfm2Config, b: GraphBuilder | None = None) -> Any:
    """The float32 ModelProto (weights inside; the caller saves them as external data); ``b``: another builder
    (``structure.SkeletonBuilder``: the graph without its weights, for the structure check)."""
    from onnx import TensorProto, helper

    b = GraphBuilder() if b is None else b
    w = weights
    s = shape
    rules = node_rules(s)
    norm = rules["SimplifiedLayerNormalization"].attrs
    skip_norm = rules["SkipSimplifiedLayerNormalization"].attrs

    def matmul(x: str, hf_name: str, name: str) -> str:
        # HF stores Linear weights [out, in]; MatMul wants [in, out]
        return b.op("MatMul", [x, b.init(f"{name}.weight", w[hf_name].T)], name)[0]

    # attention bookkeeping shared by every attention layer (same derivation as the builder's)
    seqlens = b.op("ReduceSum", ["attention_mask", b.i64([1])], "mask/ReduceSum", keepdims=0)[0]
    seqlens = b.op("Sub", [seqlens, b.i64([1])], "mask/Sub")[0]
    seqlens_k = b.op("Cast", [seqlens], "mask/seqlens_k", to=TensorProto.INT32)[0]
    total = b.op("Shape", ["attention_mask"], "mask/Shape")[0]
    total = b.op("Gather", [total, b.init("const/i64/scalar1", np.array(1, dtype=np.int64))], "mask/Gather", axis=0)[0]
    total_len = b.op("Cast", [total], "mask/total_len", to=TensorProto.INT32)[0]
    cos, sin = s.rope_tables()
    cos_name, sin_name = b.init("cos_cache", cos), b.init("sin_cache", sin)

    # tied embedding: one [hidden, vocab] matrix; the Transpose feeding the Gather is constant-folded at load
    b.init(LM_HEAD, w["model.embed_tokens.weight"].T)
    table = b.op("Transpose", [LM_HEAD], "embed/Transpose", perm=[1, 0])[0]
    residual = b.op("Gather", [table, "input_ids"], "embed/Gather")[0]

    pending: str | None = None  # output of the previous block, not yet added to the residual
    for i, kind in enumerate(s.layer_types):
        p = f"model.layers.{i}"
        gamma = b.init(f"{p}.operator_norm.weight", w[f"{p}.operator_norm.weight"])
        if pending is None:
            x = b.op("SimplifiedLayerNormalization", [residual, gamma], f"l{i}/operator_norm", **norm)[0]
        else:
            x, _, _, residual = b.op("SkipSimplifiedLayerNormalization", [residual, pending, gamma],
                                     f"l{i}/operator_norm", n_out=4, domain=MS_DOMAIN, **skip_norm)
        if kind == "full_attention":
            mixed = _attention(b, w, s, i, x, seqlens_k, total_len, cos_name, sin_name, matmul, rules)
        else:
            mixed = _short_conv(b, w, s, i, x, matmul, rules)
        gamma = b.init(f"{p}.ffn_norm.weight", w[f"{p}.ffn_norm.weight"])
        x, _, _, residual = b.op("SkipSimplifiedLayerNormalization", [residual, mixed, gamma], f"l{i}/ffn_norm",
                                 n_out=4, domain=MS_DOMAIN, **skip_norm)
        gate = matmul(x, f"{p}.feed_forward.w1.weight", f"{p}.feed_forward.w1")
        up = matmul(x, f"{p}.feed_forward.w3.weight", f"{p}.feed_forward.w3")
        sig = b.op("Sigmoid", [gate], f"l{i}/ffn/Sigmoid")[0]
        act = b.op("Mul", [gate, sig], f"l{i}/ffn/SiLU")[0]
        hidden = b.op("Mul", [act, up], f"l{i}/ffn/Mul")[0]
        pending = matmul(hidden, f"{p}.feed_forward.w2.weight", f"{p}.feed_forward.w2")

    gamma = b.init("model.embedding_norm.weight", w["model.embedding_norm.weight"])
    final = b.op("SkipSimplifiedLayerNormalization", [residual, pending, gamma], "final_norm", domain=MS_DOMAIN,
                 **skip_norm)[0]
    # keep the last `logits_to_keep` rows (0 = all) before the LM head
    start = b.op("Neg", [LOGITS_TO_KEEP], "lm_head/Neg")[0]
    kept = b.op("Slice", [final, start, b.i64([2**62]), b.i64([1])], "lm_head/Slice")[0]
    b.op("MatMul", [kept, LM_HEAD], "lm_head/MatMul", outputs=["logits"])
    b.init(LOGITS_TO_KEEP, np.array([1], dtype=np.int64))

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    # declared with one position, as the builder declares a pruned LM head: onnxruntime-genai reads this
    # dimension to size its logits buffer (ONNX Runtime only notes the mismatch when logits_to_keep=0)
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", 1, s.vocab_size])]
    for name, dims in state_inputs(s).items():
        inputs.append(helper.make_tensor_value_info(name, f32, dims))
        out_dims = [("total_sequence_length" if d == "past_sequence_length" else d) for d in dims]
        outputs.append(helper.make_tensor_value_info(present_name(name), f32, out_dims))
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))

    return b.model("lfm2", inputs, outputs)


def _attention(b: GraphBuilder, w: Mapping[str, np.ndarray], s: Lfm2Config, i: int, x: str, seqlens_k: str,
               total_len: str, cos: str, sin: str, matmul: Any, rules: Mapping[str, attributes.NodeRule]) -> str:
    p = f"model.layers.{i}.self_attn"
    hd, nq, nkv = s.head_dim, s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    # one [hidden, q+k+v] matmul instead of three: one weight stream and one kernel call per token
    qkv_w = np.concatenate([w[f"{p}.q_proj.weight"], w[f"{p}.k_proj.weight"], w[f"{p}.v_proj.weight"]], axis=0)
    qkv = b.op("MatMul", [x, b.init(f"{p}.qkv_proj.weight", qkv_w.T)], f"l{i}/attn/qkv_proj")[0]
    q, k, v = b.op("Split", [qkv, b.i64([nq, nkv, nkv])], f"l{i}/attn/Split", n_out=3, axis=-1)

    def head_norm(t: str, which: str, width: int) -> str:
        # LFM2 normalises every head separately: [B, S, n*hd] -> [B, S*n, hd] -> RMSNorm -> back
        gamma = b.init(f"{p}.{which}.weight", w[f"{p}.{which}.weight"])
        r = b.op("Reshape", [t, b.i64([0, -1, hd])], f"l{i}/attn/{which}/Reshape1")[0]
        n = b.op("SimplifiedLayerNormalization", [r, gamma], f"l{i}/attn/{which}",
                 **rules["SimplifiedLayerNormalization"].attrs)[0]
        return b.op("Reshape", [n, b.i64([0, -1, width])], f"l{i}/attn/{which}/Reshape2")[0]

    q = head_norm(q, "q_layernorm", nq)
    k = head_norm(k, "k_layernorm", nkv)
    attn = b.op(
        "GroupQueryAttention",
        [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len, cos, sin],
        f"l{i}/attn/GroupQueryAttention",
        outputs=[f"l{i}/attn/out", f"present.{i}.key", f"present.{i}.value"],
        domain=MS_DOMAIN,
        **rules["GroupQueryAttention"].attrs,
    )[0]
    return matmul(attn, f"{p}.out_proj.weight", f"{p}.out_proj")


def _short_conv(b: GraphBuilder, w: Mapping[str, np.ndarray], s: Lfm2Config, i: int, x: str, matmul: Any,
                rules: Mapping[str, attributes.NodeRule]) -> str:
    p = f"model.layers.{i}.conv"
    h = s.hidden_size
    proj = matmul(x, f"{p}.in_proj.weight", f"{p}.in_proj")
    # CausalConvWithState works channels-first: [B, S, 3H] -> [B, 3H, S]
    proj = b.op("Transpose", [proj], f"l{i}/conv/Transpose1", perm=[0, 2, 1])[0]
    gate_b, gate_c, xs = b.op("Split", [proj, b.i64([h, h, h])], f"l{i}/conv/Split", n_out=3, axis=1)
    bx = b.op("Mul", [gate_b, xs], f"l{i}/conv/Mul1")[0]
    kernel = b.init(f"{p}.conv.weight", w[f"{p}.conv.weight"])  # [H, 1, L] depthwise
    conv = b.op(
        "CausalConvWithState",
        [bx, kernel, "", f"past.{i}.conv"],
        f"l{i}/conv/CausalConvWithState",
        outputs=[f"l{i}/conv/out", f"present.{i}.conv"],
        domain=MS_DOMAIN,
        **rules["CausalConvWithState"].attrs,
    )[0]
    y = b.op("Mul", [gate_c, conv], f"l{i}/conv/Mul2")[0]
    y = b.op("Transpose", [y], f"l{i}/conv/Transpose2", perm=[0, 2, 1])[0]
    return matmul(y, f"{p}.out_proj.weight", f"{p}.out_proj")


# decoding defaults: greedy, like edgekit's SamplingParams
SEARCH = {
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": True,
    "length_penalty": 1.0,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    # the KV buffers are allocated once at max_length and written in place by GroupQueryAttention
    "past_present_share_buffer": True,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}


def genai_config(shape: Lfm2Config) -> dict[str, Any]:
    """``genai_config.json`` as onnxruntime-genai's own LFM2 builder writes it (model type ``lfm2``, per-layer
    ``layer_types``, ``conv_cache_size``, name patterns of the state inputs and outputs)."""
    eos = list(shape.eos_token_ids)
    return {
        "model": {
            "bos_token_id": shape.bos_token_id,
            "context_length": shape.max_position_embeddings,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": ARTIFACT,
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                    "past_conv_names": "past.%d.conv",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                    "present_conv_names": "present.%d.conv",
                },
                "num_attention_heads": shape.num_attention_heads,
                "num_hidden_layers": len(shape.layer_types),
                "num_key_value_heads": shape.num_key_value_heads,
                "layer_types": list(shape.layer_types),
                "conv_cache_size": shape.conv_cache,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": shape.pad_token_id if shape.pad_token_id is not None else (eos[0] if eos else 0),
            "type": "lfm2",
            "vocab_size": shape.vocab_size,
        },
        "search": {**SEARCH, "max_length": shape.max_position_embeddings},
    }


def state_manifest(s: Lfm2Config) -> dict[str, Any]:
    """What the runtime allocates per state input, so it needs no knowledge of LFM2: the present output it
    pairs with, the shape (``"context"`` where the context length goes) and how it is updated: ``in_place``
    (one buffer bound as past and present; GroupQueryAttention appends the new KV rows into it) or ``swap``
    (two buffers, present written into the spare, swapped after each call: the conv state)."""
    out: dict[str, Any] = {}
    for name, dims in state_inputs(s).items():
        kv = name.startswith("past_key_values.")
        shape = [1, *("context" if d == "past_sequence_length" else d for d in dims[1:])]
        out[name] = {"present": present_name(name), "shape": shape, "update": "in_place" if kv else "swap"}
    return out


def required_kernels(s: Lfm2Config) -> dict[str, int]:
    """Fused kernels the optimised graph must contain (op type -> minimum count)."""
    required = {"SkipSimplifiedLayerNormalization": 1}
    if s.attention_layers:
        required["GroupQueryAttention"] = s.attention_layers
    if s.layer_types.count("conv"):
        required["CausalConvWithState"] = s.layer_types.count("conv")
    return required


def matmul_sources(model: Any, weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, ...]]:
    """MatMul weight initializer of the float graph -> the checkpoint weights it is made of, stacked by rows:
    the fused q|k|v projection three, the tied head the embedding table (the reference's one parameter)."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[str, ...]] = {}
    for node in model.graph.node:
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if w is None or w not in inits:
            continue
        if w == LM_HEAD:
            out[w] = ("model.embed_tokens.weight",)
        elif w.endswith(".qkv_proj.weight"):
            p = w.removesuffix("qkv_proj.weight")
            out[w] = (f"{p}q_proj.weight", f"{p}k_proj.weight", f"{p}v_proj.weight")
        elif w in weights:
            out[w] = (w,)
        else:
            raise InternalError(f"ONNX MatMul weight {w!r} has no checkpoint weight")
    return out


def _gptq_inputs(model: Any, job: ExportJob) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """For ``gptq.apply``: the float graph's MatMul weights ([K, N] copies) and the reference module whose input
    each MatMul sees (a fused q|k|v: the q projection's; the tied head: ``lm_head``)."""
    from onnx import numpy_helper

    sources = matmul_sources(model, job.weights)
    inits = {t.name: t for t in model.graph.initializer}
    weights = {name: numpy_helper.to_array(inits[name]).astype(np.float32) for name in sources}
    modules = {name: "lm_head" if name == LM_HEAD else src[0].removesuffix(".weight") for name, src in sources.items()}
    return weights, modules


def default_types(model: Any, q: quantize.OnnxQuant) -> dict[str, str]:
    """MatMul weight -> the type the plain export gives it: ``q``'s bits and block, the tied head ``head_bits``."""
    inits = {t.name for t in model.graph.initializer}
    return {n.input[1]: mixed.type_name(q.head_bits if n.input[1] == LM_HEAD else q.bits, q.block_size)
            for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    q = quantize.native(job.plan.quant, job.plan.options)
    cfg = job.config
    t0 = time.perf_counter()
    job.progress("building the ONNX graph (float32)")
    model = build(job.weights, cfg)
    mixed_summary, calibration_entry = None, None
    types: dict[str, tuple[int, int]] = {}
    if job.plan.options.mixes(job.plan.quant):
        sources, defaults = matmul_sources(model, job.weights), default_types(model, q)
        chosen, mixed_summary, calibration_entry = mixed.plan(job, sources, defaults)
        types = {name: mixed.parse_type(t) for name, t in chosen.items()}
    gptq_inputs = _gptq_inputs(model, job) if q.algorithm == "gptq" else None
    gptq_summary = None
    if q.name != "fp32":
        job.progress(f"quantising to {q.name} with onnxruntime's tools")
        model = quantize.apply(model, q, TIED_HEAD, types)
    if gptq_inputs is not None:
        text, windows = calibration.job_windows(job)
        gptq_summary = gptq.apply(model, *gptq_inputs, job.reference, windows, job.progress)
        gptq_summary["calibration_sha256"] = text.sha256
        if calibration_entry is None:
            calibration_entry = {**text.summary(gptq_summary["tokens"]), "method": "GPTQ input Hessians"}
        else:
            calibration_entry = {**calibration_entry, "method": calibration_entry["method"] + "; GPTQ input Hessians"}
    if mixed_summary is not None and mixed.node_types(model) != mixed_summary["tensor_types"]:
        raise InternalError("the quantised graph's MatMulNBits types differ from the mixed-precision plan")
    job.progress(f"writing {ARTIFACT}")
    builder.save(model, out_dir)
    del model
    (out_dir / GENAI_CONFIG).write_text(json.dumps(genai_config(cfg), indent=4) + "\n", encoding="utf-8")
    job.progress("checking the graph ONNX Runtime optimises it into (fused kernels)")
    report = check.optimized_graph(out_dir / ARTIFACT, required_kernels(cfg), q.name)
    return {
        "file": ARTIFACT,
        "external_data": DATA,
        "genai_config": GENAI_CONFIG,
        "quant": q.to_dict(),
        "signature": check.signature(out_dir / ARTIFACT),
        "tensor_types": check.tensor_types(out_dir / ARTIFACT),
        **runtime_entries(state_manifest(cfg)),
        "optimized_ops": report,
        "calibration": calibration_entry,
        "mixed_precision": mixed_summary,
        "gptq": gptq_summary,
        "libraries": builder.versions(),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def file_weights(root: Path, manifest: Any, sources: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The bundle's weights dequantised under the checkpoint's names (``edgekit.tensorcheck``): the fused
    q|k|v matrix split back by rows, the tied head (``LM_HEAD``) as the embedding; other float initializers
    (the RoPE tables) are not weights: ``file_constants`` checks them."""
    from ...tensorcheck import ReadTensor
    from . import readback

    c = manifest["model"]["config"]
    kv_rows = int(c["num_key_value_heads"]) * (int(c["hidden_size"]) // int(c["num_attention_heads"]))
    known = set(sources)
    # tensors whose codes GPTQ wrote: a storage type of their own, bounded apart from round-to-nearest's
    by_gptq = set((manifest["artifact"].get("gptq") or {}).get("tensors", ()))
    if by_gptq:
        core_gptq.check_summary(manifest["artifact"]["gptq"])
    out: list[ReadTensor] = []
    for w in readback.read(root / manifest["artifact"]["file"]):
        qtype = w.qtype + gptq.QTYPE_SUFFIX if w.name in by_gptq and w.qtype.startswith("INT") else w.qtype

        def entry(source: str, values: Any, rows: Any = None, module: str | None = None) -> ReadTensor:
            mods = (module,) if module else ((source.removesuffix(".weight"),) if w.matmul else ())
            return ReadTensor(w.name, source, values, qtype, w.block, w.levels, rows, mods, w.act)

        if w.name == LM_HEAD:
            out.append(entry("model.embed_tokens.weight", w.values, module="lm_head"))
        elif w.name.endswith(".self_attn.qkv_proj.weight"):
            p = w.name.removesuffix("qkv_proj.weight")
            nq, nkv = len(w.values) - 2 * kv_rows, kv_rows
            start = 0
            for part, size in (("q_proj", nq), ("k_proj", nkv), ("v_proj", nkv)):
                out.append(entry(f"{p}{part}.weight", w.values[start : start + size]))
                start += size
        elif w.name in known:
            out.append(entry(w.name, w.values))
    return out, {"lm_head.weight": "model.embed_tokens.weight"}


def runtime_entries(state: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest ``artifact`` entries the ONNX runtime wrapper sizes and feeds the session from (the KV / conv
    state shapes, ``logits_to_keep``, session options): written by the exporters, compared by ``file_constants``
    (a fifth trial set every KV state's context to 520 in a re-hashed manifest: it passed the 512-token windows
    and failed past token 520)."""
    return {"state": dict(state), "logits_to_keep": {"input": LOGITS_TO_KEEP, "default": 1, "all": 0},
            "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL"}}


def file_structure(root: Path, manifest: Any, checkpoint: Any, model: Any) -> list[str]:
    """The structure check (``structure.check``): the file's graph against the one ``build`` makes from
    ``checkpoint``'s config and the float reference ``model``'s weights (merged, by checkpoint name)."""
    from edgekit.reference import state_dict

    from . import structure

    expected = build(state_dict(model), checkpoint.model_config, structure.SkeletonBuilder())
    return structure.check(root / manifest["artifact"]["file"], expected,
                           f"the checkpoint {checkpoint.path.name}'s config", lora_branches=structure.separate(manifest))


def file_constants(root: Path, manifest: Any, checkpoint: Any) -> list[str]:
    """The non-weight values of the file checked against ``checkpoint`` (``edgekit.tensorcheck``):
    ``language_constants`` with head_dim = hidden / heads and this file's ``node_rules`` / ``genai_config`` /
    ``state_manifest``."""
    cfg = checkpoint.model_config
    return language_constants(root, manifest, checkpoint, int(cfg.hidden_size) // int(cfg.num_attention_heads),
                              node_rules(cfg), genai_config(cfg), state_manifest(cfg))


def language_constants(root: Path, manifest: Any, checkpoint: Any, head_dim: int, rules: Any,
                       genai: Mapping[str, Any], state: Mapping[str, Any]) -> list[str]:
    """The constants check of a language graph (LFM2's and BitNet's ``file_constants``): every row of the RoPE
    tables ``cos_cache`` / ``sin_cache`` against tables computed from the checkpoint's rope_theta and ``head_dim``
    for the checkpoint's context (not the editable manifest's); every attribute of the fused kernels (``rules``:
    attention scale, head counts, window, rotary layout, norm epsilons, conv); ``genai_config.json`` against
    ``genai``; the manifest's runtime entries (``runtime_entries(state)``).  One failure line per wrong value."""
    from .. import sidecars
    from . import readback

    cfg = checkpoint.model_config
    path = root / manifest["artifact"]["file"]
    what = f"the checkpoint {checkpoint.path.name}'s config"
    return [*readback.check_rope(path, float(cfg.rope_theta), head_dim, int(cfg.max_position_embeddings)),
            *attributes.check(path, rules, what),
            *sidecars.check_json(root / GENAI_CONFIG, genai, what),
            *sidecars.check_manifest(manifest["artifact"], runtime_entries(state), what, "artifact")]
