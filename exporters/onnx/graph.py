"""The LFM2 decoder as an ONNX graph with explicit state, written directly from the merged float32 weights.

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

from typing import Any, Mapping

import numpy as np

from ...families.lfm2 import Lfm2Shape

OPSET = 21
MS_DOMAIN = "com.microsoft"
LOGITS_TO_KEEP = "logits_to_keep"
# names shared with the quantiser: the tied embedding / LM head matrix, stored once as [hidden, vocab]
LM_HEAD = "lm_head.MatMul.weight"


def state_inputs(s: Lfm2Shape) -> dict[str, list[Any]]:
    """State input name -> shape (symbolic dims as strings), in layer order."""
    out: dict[str, list[Any]] = {}
    for i, kind in enumerate(s.layer_types):
        if kind == "full_attention":
            for kv in ("key", "value"):
                out[f"past_key_values.{i}.{kv}"] = ["batch_size", s.kv_heads, "past_sequence_length", s.head_dim]
        else:
            out[f"past.{i}.conv"] = ["batch_size", s.hidden, s.conv_cache]
    return out


def present_name(past: str) -> str:
    return past.replace("past_key_values.", "present.").replace("past.", "present.")


class _Builder:
    """Accumulates nodes and initializers; every intermediate gets a unique, readable name."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._consts: dict[str, str] = {}

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", **attrs: Any) -> list[str]:
        outs = outputs or [f"{name}/out{k}" for k in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def i64(self, values: list[int]) -> str:
        key = "const/i64/" + "_".join(str(v) for v in values)
        if key not in self._consts:
            self._consts[key] = self.init(key, np.array(values, dtype=np.int64))
        return self._consts[key]


def _rope_tables(shape: Lfm2Shape) -> tuple[np.ndarray, np.ndarray]:
    # HF's default RoPE (rotate-half layout, which is GroupQueryAttention's rotary_interleaved=0)
    hd = shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    angles = np.outer(np.arange(shape.context, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build(weights: Mapping[str, np.ndarray], shape: Lfm2Shape) -> Any:
    """The float32 ModelProto (weights inside; the caller saves them as external data)."""
    from onnx import TensorProto, helper

    b = _Builder()
    w = weights
    s = shape
    eps = float(s.eps)

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
    cos, sin = _rope_tables(s)
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
            x = b.op("SimplifiedLayerNormalization", [residual, gamma], f"l{i}/operator_norm", axis=-1, epsilon=eps,
                     stash_type=1)[0]
        else:
            x, _, _, residual = b.op("SkipSimplifiedLayerNormalization", [residual, pending, gamma],
                                     f"l{i}/operator_norm", n_out=4, domain=MS_DOMAIN, epsilon=eps)
        if kind == "full_attention":
            mixed = _attention(b, w, s, i, x, seqlens_k, total_len, cos_name, sin_name, matmul)
        else:
            mixed = _short_conv(b, w, s, i, x, matmul)
        gamma = b.init(f"{p}.ffn_norm.weight", w[f"{p}.ffn_norm.weight"])
        x, _, _, residual = b.op("SkipSimplifiedLayerNormalization", [residual, mixed, gamma], f"l{i}/ffn_norm",
                                 n_out=4, domain=MS_DOMAIN, epsilon=eps)
        gate = matmul(x, f"{p}.feed_forward.w1.weight", f"{p}.feed_forward.w1")
        up = matmul(x, f"{p}.feed_forward.w3.weight", f"{p}.feed_forward.w3")
        sig = b.op("Sigmoid", [gate], f"l{i}/ffn/Sigmoid")[0]
        act = b.op("Mul", [gate, sig], f"l{i}/ffn/SiLU")[0]
        hidden = b.op("Mul", [act, up], f"l{i}/ffn/Mul")[0]
        pending = matmul(hidden, f"{p}.feed_forward.w2.weight", f"{p}.feed_forward.w2")

    gamma = b.init("model.embedding_norm.weight", w["model.embedding_norm.weight"])
    final = b.op("SkipSimplifiedLayerNormalization", [residual, pending, gamma], "final_norm", domain=MS_DOMAIN,
                 epsilon=eps)[0]
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
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", 1, s.vocab])]
    for name, dims in state_inputs(s).items():
        inputs.append(helper.make_tensor_value_info(name, f32, dims))
        out_dims = [("total_sequence_length" if d == "past_sequence_length" else d) for d in dims]
        outputs.append(helper.make_tensor_value_info(present_name(name), f32, out_dims))
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))

    graph = helper.make_graph(b.nodes, "lfm2", inputs, outputs, initializer=b.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)], producer_name="edgekit"
    )
    model.ir_version = 10  # readable by onnxruntime >= 1.16
    return model


def _attention(b: _Builder, w: Mapping[str, np.ndarray], s: Lfm2Shape, i: int, x: str, seqlens_k: str,
               total_len: str, cos: str, sin: str, matmul: Any) -> str:
    p = f"model.layers.{i}.self_attn"
    hd, nq, nkv = s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim
    # one [hidden, q+k+v] matmul instead of three: one weight stream and one kernel call per token
    qkv_w = np.concatenate([w[f"{p}.q_proj.weight"], w[f"{p}.k_proj.weight"], w[f"{p}.v_proj.weight"]], axis=0)
    qkv = b.op("MatMul", [x, b.init(f"{p}.qkv_proj.weight", qkv_w.T)], f"l{i}/attn/qkv_proj")[0]
    q, k, v = b.op("Split", [qkv, b.i64([nq, nkv, nkv])], f"l{i}/attn/Split", n_out=3, axis=-1)

    def head_norm(t: str, which: str, width: int) -> str:
        # LFM2 normalises every head separately: [B, S, n*hd] -> [B, S*n, hd] -> RMSNorm -> back
        gamma = b.init(f"{p}.{which}.weight", w[f"{p}.{which}.weight"])
        r = b.op("Reshape", [t, b.i64([0, -1, hd])], f"l{i}/attn/{which}/Reshape1")[0]
        n = b.op("SimplifiedLayerNormalization", [r, gamma], f"l{i}/attn/{which}", axis=-1, epsilon=float(s.eps),
                 stash_type=1)[0]
        return b.op("Reshape", [n, b.i64([0, -1, width])], f"l{i}/attn/{which}/Reshape2")[0]

    q = head_norm(q, "q_layernorm", nq)
    k = head_norm(k, "k_layernorm", nkv)
    attn = b.op(
        "GroupQueryAttention",
        [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len, cos, sin],
        f"l{i}/attn/GroupQueryAttention",
        outputs=[f"l{i}/attn/out", f"present.{i}.key", f"present.{i}.value"],
        domain=MS_DOMAIN,
        num_heads=s.heads,
        kv_num_heads=s.kv_heads,
        scale=float(1.0 / np.sqrt(hd)),
        do_rotary=1,
        rotary_interleaved=0,
        local_window_size=-1,
    )[0]
    return matmul(attn, f"{p}.out_proj.weight", f"{p}.out_proj")


def _short_conv(b: _Builder, w: Mapping[str, np.ndarray], s: Lfm2Shape, i: int, x: str, matmul: Any) -> str:
    p = f"model.layers.{i}.conv"
    h = s.hidden
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
        ndim=1,
        activation="none",
    )[0]
    y = b.op("Mul", [gate_c, conv], f"l{i}/conv/Mul2")[0]
    y = b.op("Transpose", [y], f"l{i}/conv/Transpose2", perm=[0, 2, 1])[0]
    return matmul(y, f"{p}.out_proj.weight", f"{p}.out_proj")
