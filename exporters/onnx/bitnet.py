"""BitNet b1.58 -> ONNX: the decoder on ONNX Runtime's fused CPU kernels, ternary projections as ``MatMulNBits``.

Same I/O as the LFM2 pair (``lfm2.py``) and onnxruntime-genai's decoder-only models::

    input_ids [batch, seq] int64, attention_mask [batch, total] int64,
    past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]   -> present.{i}.key / .value
    logits_to_keep int64 [1] (optional, default 1; 0 = every position)  -> logits [batch, kept, vocab]

The block is transformers' ``BitNetDecoderLayer``: ``SimplifiedLayerNormalization`` (RMSNorm, the residual add
fused into ``SkipSimplifiedLayerNormalization``), q/k/v as one matmul, ``GroupQueryAttention`` (rotate-half RoPE
and the KV append inside the kernel), ``attn_sub_norm`` before ``o_proj``, gate/up as one matmul,
``down(ffn_sub_norm(act(gate) * up))`` with ``act`` SiLU or squared ReLU.

Ternary projections (W = codes x scale, one scale per tensor):

* ``fp32``: ``MatMul`` with codes x scale, float activations: the reference's ``activations="float"`` mode.
* ``int2`` / ``int4``: ``MatMulNBits`` with 2- or 4-bit symmetric blocks (stored value = code + 2 or + 8, the
  kernel's default zero point) and every block's scale = the tensor's scale, written here from the codes: the
  file holds the ternary weights exactly.  ONNX Runtime's ``MatMulNBitsQuantizer`` (``quantize.apply``) cannot
  do this: it re-derives a scale per block from max|w| and maps +-max onto -8/+7 (not exact for +1), and it has
  no 2-bit mode.  ``accuracy_level`` 4 makes the CPU kernel quantise activations to int8 per block of
  ``block_size`` inputs — finer than BitNet's per-token absmax int8, so the export sits between the A8 and the
  float reference.  ONNX Runtime 1.32's 2-bit CPU kernel has a fast path only with int8 activations
  (accuracy level 4) and blocks of at most 128; otherwise it falls back to a dequantising path ~100x slower
  (measured 28 ms vs 0.14 ms for a 2048x2048 decode step), so those combinations are refused.
  Concatenated q/k/v (and gate/up) keep exact per-row scales, since ``MatMulNBits`` has a scale per row block.

The tied embedding / LM head (a float matrix in BitNet) is quantised by ``quantize.apply`` at 8 bits (block 32,
``head_bits`` 4 for 4) and the embedding gathers from its blocks (``GatherBlockQuantized``); fp32 keeps it float.
``--bitnet-activations a4.8`` (BitNet a4.8): ONNX Runtime has no 4-bit activation kernel, so the a4.8 numerics
are written into the graph as quantise/dequantise arithmetic in front of each projection, mirroring the reference
(``reference.fake_quant``): per-token absmean int4 for q/k/v and gate/up, absmax int8 times a top-K mask
(``TopK`` + ``ScatterElements``, the same K and ties as ``torch.topk``) for o_proj, absmax int8 for down_proj.
The matmuls then run on the dequantised values (fp32: exactly the reference's arithmetic up to float rounding;
int2/int4: the kernel's own int8 block quantisation of them on top).  Speed is that of a8 plus the extra ops.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InternalError, UnsupportedError
from edgekit.families.bitnet.config import BitNetConfig
from edgekit.families.bitnet.reference import activation_modes
from edgekit.families.bitnet.weights import BitNetWeights

from .. import ExportJob
from . import ARTIFACT, DATA, attributes, builder, check, limits, quantize
from .builder import MS_DOMAIN, GraphBuilder
from .lfm2 import GENAI_CONFIG, LOGITS_TO_KEEP, SEARCH, TIED_HEAD, language_constants, present_name, runtime_entries

LM_HEAD = TIED_HEAD.weight
TERNARY_BITS = limits.TERNARY_BITS
FAST_INT2_BLOCKS = limits.FAST_INT2_BLOCKS
HEAD_BLOCK = 32


def ternary_weights(reference: Any) -> BitNetWeights:
    """The (merged) model's codes and scales: every BitNet reference builder keeps them as ``.weights``; raises
    ``InternalError`` otherwise."""
    w = getattr(reference, "weights", None)
    if not isinstance(w, BitNetWeights):
        raise InternalError("the BitNet reference has no .weights (BitNetWeights); build it with build_for_export")
    return w


def rope_tables(reference: Any, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [positions, head_dim / 2] with the reference's float32 arithmetic (positions x inv_freq)."""
    inv = np.asarray(reference.inv_freq.detach().float().numpy(), dtype=np.float32)
    freqs = np.arange(positions, dtype=np.float32)[:, None] * inv[None, :]
    # torch's float32 cos/sin of these angles, so positions agree with the reference to the last bit
    import torch

    t = torch.from_numpy(freqs)
    return t.cos().numpy(), t.sin().numpy()


def pack_nbits(codes: np.ndarray, scales: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Ternary codes [N, K] (int8) and per-row scales [N] -> MatMulNBits' B uint8 [N, K / block, block * bits / 8]
    (element j of a byte in bits ``j*bits..``, the stored value code + 2**(bits-1)) and scales [N * K / block]."""
    n, k = codes.shape
    per = 8 // bits
    q = (codes.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).reshape(n, k // block, block // per, per)
    packed = np.zeros(q.shape[:3], dtype=np.uint8)
    for j in range(per):
        packed |= q[..., j] << np.uint8(bits * j)
    return packed, np.repeat(scales.astype(np.float32)[:, None], k // block, axis=1).reshape(-1)


class Projections:
    """Writes the ternary (or float) projections: ``fp32`` MatMul on codes x scale, else exact MatMulNBits."""

    def __init__(self, b: GraphBuilder, w: BitNetWeights, bits: int | None, block: int, accuracy_level: int) -> None:
        self.b, self.w, self.bits, self.block, self.accuracy = b, w, bits, block, accuracy_level

    def __call__(self, x: str, names: list[str], name: str) -> str:
        """One matmul computing the projections ``names`` (HF weight names) side by side on input ``x``."""
        ws = self.w
        if self.bits is None or any(n not in ws.ternary for n in names):
            dense = [ws.ternary[n].dense() if n in ws.ternary else ws.floats[n] for n in names]
            return self.b.op("MatMul", [x, self.b.init(f"{name}.weight", np.concatenate(dense, axis=0).T)], name)[0]
        codes = np.concatenate([ws.ternary[n].codes for n in names], axis=0)
        scales = np.concatenate([np.full(ws.ternary[n].shape[0], ws.ternary[n].scale, np.float32) for n in names])
        n_out, k = codes.shape
        packed, sc = pack_nbits(codes, scales, self.bits, self.block)
        return self.b.op(
            "MatMulNBits",
            [x, self.b.init(f"{name}.weight_Q{self.bits}", packed), self.b.init(f"{name}.weight_scales", sc)],
            f"{name}/MatMulNBits", domain=MS_DOMAIN, K=k, N=n_out, bits=self.bits, block_size=self.block,
            accuracy_level=self.accuracy,
        )[0]


def fake_quant(b: GraphBuilder, x: str, mode: str, topk: float | None, features: int, name: str) -> str:
    """``reference.fake_quant`` as ONNX ops on ``x`` [batch, seq, features] float32 (ops in the reference's order,
    so rounding boundaries fall the same way up to float reduction order)."""
    if mode == "float":
        return x
    a4 = mode == "a4"
    absx = b.op("Abs", [x], f"{name}/Abs")[0]
    stat = b.op("ReduceMean" if a4 else "ReduceMax", [absx, b.i64([-1])], f"{name}/Reduce", keepdims=1)[0]
    stat = b.op("Max", [stat, b.init(f"{name}/eps", np.array(1e-5, np.float32))], f"{name}/Clamp")[0]
    top = np.float32(np.sqrt(np.float32(7.0))) if a4 else np.float32(127.0)
    scale = b.op("Div", [b.init(f"{name}/qmax", np.array(top, np.float32)), stat], f"{name}/Scale")[0]
    codes = b.op("Round", [b.op("Mul", [x, scale], f"{name}/Mul")[0]], f"{name}/Round")[0]
    lo, hi = (-8.0, 7.0) if a4 else (-128.0, 127.0)
    codes = b.op("Clip", [codes, b.init(f"{name}/lo", np.array(lo, np.float32)),
                          b.init(f"{name}/hi", np.array(hi, np.float32))], f"{name}/Clip")[0]
    if topk is not None:
        k = max(1, math.ceil(topk * features))
        idx = b.op("TopK", [absx, b.i64([k])], f"{name}/TopK", n_out=2, axis=-1, largest=1, sorted=1)[1]
        zeros = b.op("Mul", [x, b.init(f"{name}/zero", np.array(0.0, np.float32))], f"{name}/Zeros")[0]
        ones = b.op("Expand", [b.init(f"{name}/one", np.array(1.0, np.float32)),
                               b.op("Shape", [idx], f"{name}/IdxShape")[0]], f"{name}/Ones")[0]
        mask = b.op("ScatterElements", [zeros, idx, ones], f"{name}/Mask", axis=-1)[0]
        codes = b.op("Mul", [codes, mask], f"{name}/Sparsify")[0]
    return b.op("Div", [codes, scale], f"{name}/Dequant")[0]


def state_inputs(c: BitNetConfig) -> dict[str, list[Any]]:
    return {
        f"past_key_values.{i}.{kv}": ["batch_size", c.num_key_value_heads, "past_sequence_length", c.head_dim]
        for i in range(c.num_hidden_layers) for kv in ("key", "value")
    }


def node_rules(c: BitNetConfig) -> dict[str, attributes.NodeRule]:
    """The fused kernels' attributes for ``c`` (op_type -> rule): what ``build`` writes and the tensor check reads
    back (``file_constants``)."""
    norm, skip_norm = attributes.rms_norms(c.rms_norm_eps)
    gqa = attributes.gqa(c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_hidden_layers)
    return {r.op_type: r for r in (gqa, norm, skip_norm)}


def build(w: BitNetWeights, reference: Any, bits: int | None, block: int, accuracy_level: int,
          b: GraphBuilder | None = None) -> Any:
    """The ModelProto: ternary projections already final (MatMul float32, or exact MatMulNBits), LM head float;
    ``b``: another builder (``structure.SkeletonBuilder``: the graph without its weights, for the structure
    check)."""
    from onnx import TensorProto, helper

    c = w.config
    f = w.floats
    b = b if b is not None else GraphBuilder()
    matmul = Projections(b, w, bits, block, accuracy_level)
    modes = activation_modes(reference) if reference.activations == "a4.8" else {}

    def proj(x: str, names: list[str], name: str) -> str:
        """The projections ``names`` (one input), behind the activation quantisation the reference applies
        (fused projections share their input, hence their mode; a8 mode leaves it to the kernel)."""
        mode, topk = modes.get(names[0], ("float", None))
        features = (w.ternary[names[0]].shape[1] if names[0] in w.ternary else f[names[0]].shape[1])
        return matmul(fake_quant(b, x, mode, topk, features, f"{name}/act"), names, name)
    rules = node_rules(c)
    norm = rules["SimplifiedLayerNormalization"].attrs
    skip_norm = rules["SkipSimplifiedLayerNormalization"].attrs

    seqlens = b.op("ReduceSum", ["attention_mask", b.i64([1])], "mask/ReduceSum", keepdims=0)[0]
    seqlens = b.op("Sub", [seqlens, b.i64([1])], "mask/Sub")[0]
    seqlens_k = b.op("Cast", [seqlens], "mask/seqlens_k", to=TensorProto.INT32)[0]
    total = b.op("Shape", ["attention_mask"], "mask/Shape")[0]
    total = b.op("Gather", [total, b.init("const/i64/scalar1", np.array(1, dtype=np.int64))], "mask/Gather", axis=0)[0]
    total_len = b.op("Cast", [total], "mask/total_len", to=TensorProto.INT32)[0]
    cos, sin = rope_tables(reference, c.max_position_embeddings)
    cos_name, sin_name = b.init("cos_cache", cos), b.init("sin_cache", sin)

    head = f.get("lm_head.weight", f["model.embed_tokens.weight"])
    b.init(LM_HEAD, head.T)
    if "lm_head.weight" in f:  # untied: the embedding is a float table of its own
        residual = b.op("Gather", [b.init("model.embed_tokens.weight", f["model.embed_tokens.weight"]), "input_ids"],
                        "embed/Gather")[0]
    else:  # tied: one [hidden, vocab] matrix; the Transpose feeding the Gather is constant-folded at load
        table = b.op("Transpose", [LM_HEAD], "embed/Transpose", perm=[1, 0])[0]
        residual = b.op("Gather", [table, "input_ids"], "embed/Gather")[0]

    hd, nh, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    pending: str | None = None
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        gamma = b.init(f"{p}.input_layernorm.weight", f[f"{p}.input_layernorm.weight"])
        if pending is None:
            x = b.op("SimplifiedLayerNormalization", [residual, gamma], f"l{i}/input_layernorm", **norm)[0]
        else:
            x, _, _, residual = b.op("SkipSimplifiedLayerNormalization", [residual, pending, gamma],
                                     f"l{i}/input_layernorm", n_out=4, domain=MS_DOMAIN, **skip_norm)
        a = f"{p}.self_attn"
        qkv = proj(x, [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"], f"{a}.qkv_proj")
        q, k, v = b.op("Split", [qkv, b.i64([nh * hd, nkv * hd, nkv * hd])], f"l{i}/attn/Split", n_out=3, axis=-1)
        attn = b.op(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len, cos_name,
             sin_name],
            f"l{i}/attn/GroupQueryAttention",
            outputs=[f"l{i}/attn/out", f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN, **rules["GroupQueryAttention"].attrs,
        )[0]
        gamma = b.init(f"{a}.attn_sub_norm.weight", f[f"{a}.attn_sub_norm.weight"])
        attn = b.op("SimplifiedLayerNormalization", [attn, gamma], f"l{i}/attn_sub_norm", **norm)[0]
        mixed = proj(attn, [f"{a}.o_proj.weight"], f"{a}.o_proj")
        gamma = b.init(f"{p}.post_attention_layernorm.weight", f[f"{p}.post_attention_layernorm.weight"])
        x, _, _, residual = b.op("SkipSimplifiedLayerNormalization", [residual, mixed, gamma],
                                 f"l{i}/post_attention_layernorm", n_out=4, domain=MS_DOMAIN, **skip_norm)
        m = f"{p}.mlp"
        gate_up = proj(x, [f"{m}.gate_proj.weight", f"{m}.up_proj.weight"], f"{m}.gate_up_proj")
        ff = c.intermediate_size
        gate, up = b.op("Split", [gate_up, b.i64([ff, ff])], f"l{i}/mlp/Split", n_out=2, axis=-1)
        if c.hidden_act == "relu2":
            r = b.op("Relu", [gate], f"l{i}/mlp/Relu")[0]
            act = b.op("Mul", [r, r], f"l{i}/mlp/Square")[0]
        else:
            sig = b.op("Sigmoid", [gate], f"l{i}/mlp/Sigmoid")[0]
            act = b.op("Mul", [gate, sig], f"l{i}/mlp/SiLU")[0]
        hidden = b.op("Mul", [act, up], f"l{i}/mlp/Mul")[0]
        gamma = b.init(f"{m}.ffn_sub_norm.weight", f[f"{m}.ffn_sub_norm.weight"])
        hidden = b.op("SimplifiedLayerNormalization", [hidden, gamma], f"l{i}/ffn_sub_norm", **norm)[0]
        pending = proj(hidden, [f"{m}.down_proj.weight"], f"{m}.down_proj")

    gamma = b.init("model.norm.weight", f["model.norm.weight"])
    final = b.op("SkipSimplifiedLayerNormalization", [residual, pending, gamma], "final_norm", domain=MS_DOMAIN,
                 **skip_norm)[0]
    start = b.op("Neg", [LOGITS_TO_KEEP], "lm_head/Neg")[0]
    kept = b.op("Slice", [final, start, b.i64([2**62]), b.i64([1])], "lm_head/Slice")[0]
    b.op("MatMul", [kept, LM_HEAD], "lm_head/MatMul", outputs=["logits"])
    b.init(LOGITS_TO_KEEP, np.array([1], dtype=np.int64))

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", 1, c.vocab_size])]
    for name, dims in state_inputs(c).items():
        inputs.append(helper.make_tensor_value_info(name, f32, dims))
        out_dims = [("total_sequence_length" if d == "past_sequence_length" else d) for d in dims]
        outputs.append(helper.make_tensor_value_info(present_name(name), f32, out_dims))
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    return b.model("bitnet", inputs, outputs)


def state_manifest(c: BitNetConfig) -> dict[str, Any]:
    """Every state input is a KV cache that GroupQueryAttention appends to in place (see onnx/lfm2.py)."""
    return {
        name: {"present": present_name(name), "shape": [1, *("context" if d == "past_sequence_length" else d
                                                               for d in dims[1:])], "update": "in_place"}
        for name, dims in state_inputs(c).items()
    }


def genai_config(c: BitNetConfig) -> dict[str, Any]:
    """A decoder-only ``genai_config.json`` (onnxruntime-genai runs the graph as it is; ``llama`` is its generic
    KV-cache decoder type)."""
    eos = list(c.eos_token_ids)
    return {
        "model": {
            "bos_token_id": c.bos_token_id,
            "context_length": c.max_position_embeddings,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": ARTIFACT,
                "head_size": c.head_dim,
                "hidden_size": c.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": c.num_attention_heads,
                "num_hidden_layers": c.num_hidden_layers,
                "num_key_value_heads": c.num_key_value_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": c.pad_token_id if c.pad_token_id is not None else (eos[0] if eos else 0),
            "type": "llama",
            "vocab_size": c.vocab_size,
        },
        "search": {**SEARCH, "max_length": c.max_position_embeddings},
    }


def block_size(c: BitNetConfig, wanted: int, bits: int, accuracy_level: int) -> int:
    """The MatMulNBits block (``limits.bitnet_block_size``: checked at plan time too)."""
    return limits.bitnet_block_size(c, wanted, bits, accuracy_level)


def required_kernels(c: BitNetConfig, bits: int | None) -> dict[str, int]:
    out = {"GroupQueryAttention": c.num_hidden_layers, "SkipSimplifiedLayerNormalization": 1,
           "SimplifiedLayerNormalization": 2 * c.num_hidden_layers}
    if bits is not None:
        out["MatMulNBits"] = 4 * c.num_hidden_layers  # qkv, o, gate_up, down per layer
    return out


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    options = job.plan.options
    name = job.plan.quant.name
    if name not in ("fp32", *TERNARY_BITS):
        raise UnsupportedError(f"onnx BitNet quant {name!r}; valid: fp32, {', '.join(TERNARY_BITS)}")
    w = ternary_weights(job.reference)
    c = w.config
    bits = TERNARY_BITS.get(name)
    accuracy = int(options.accuracy_level)
    block = block_size(c, int(options.block_size), bits, accuracy) if bits else 0
    head_bits = (getattr(options, "head_bits", None) or 8) if bits else 32
    t0 = time.perf_counter()
    job.progress(f"building the ONNX BitNet graph ({'float32' if bits is None else f'ternary as {bits}-bit MatMulNBits, block {block}'})")
    model = build(w, job.reference, bits, block, accuracy)
    tied = "lm_head.weight" not in w.floats
    if bits is not None:
        job.progress(f"quantising the LM head to {head_bits} bits with onnxruntime's tools")
        # every other weight matmul is MatMulNBits already: the quantiser only finds the LM head
        q = quantize.OnnxQuant("int8", block_size=HEAD_BLOCK, accuracy_level=accuracy, head_bits=head_bits)
        model = quantize.apply(model, q, TIED_HEAD if tied else None)
    job.progress(f"writing {ARTIFACT}")
    builder.save(model, out_dir)
    del model
    (out_dir / GENAI_CONFIG).write_text(json.dumps(genai_config(c), indent=4) + "\n", encoding="utf-8")
    job.progress("checking the graph ONNX Runtime optimises it into (fused kernels)")
    # "int4": the check's rule for block-wise quants (every weight matmul in MatMulNBits) fits int2 as well
    report = check.optimized_graph(out_dir / ARTIFACT, required_kernels(c, bits), "fp32" if bits is None else "int4")
    return {
        "file": ARTIFACT,
        "external_data": DATA,
        "genai_config": GENAI_CONFIG,
        "quant": {"name": name, "ternary_bits": bits, "block_size": block or None,
                  "accuracy_level": accuracy if bits else None, "head_bits": head_bits if bits else None,
                  "ternary": "exact (codes + per-tensor scale)",
                  "activations": ("a4.8 quantise/dequantise in the graph, then " if job.reference.activations ==
                                  "a4.8" else "") + ("int8 per block in MatMulNBits" if bits else "float32")},
        "signature": check.signature(out_dir / ARTIFACT),
        "tensor_types": check.tensor_types(out_dir / ARTIFACT),
        **runtime_entries(state_manifest(c)),
        "optimized_ops": report,
        "libraries": builder.versions(),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def file_weights(root: Path, manifest: Any, weights: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The bundle's ONNX weights under the checkpoint's names (``edgekit.tensorcheck``): fused q|k|v and
    gate|up split back by rows, ternary projections (``MatMulNBits`` int2/int4 blocks or the fp32 ``MatMul``
    codes x scale) typed ``ternary/<type>`` (must be exact), the tied head (``LM_HEAD``, int8 blocks at
    int2/int4) as the embedding it also serves; MatMulNBits' int8 block quantisation of its input (accuracy level
    4) is each tensor's ``act``.  The RoPE tables are not weights: ``file_constants`` checks them."""
    from edgekit.families.bitnet.fidelity import TERNARY_PREFIX, is_ternary
    from edgekit.tensorcheck import ReadTensor

    from . import readback

    c = manifest["model"]["config"]
    heads, kv = int(c["num_attention_heads"]), int(c["num_key_value_heads"])
    head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    out: list[ReadTensor] = []
    known = set(weights)
    untied = False
    for w in readback.read(root / manifest["artifact"]["file"]):
        def entry(source: str, values: Any, module: str | None = None) -> ReadTensor:
            mods = (module,) if module else ((source.removesuffix(".weight"),) if w.matmul else ())
            if w.matmul and source in known and is_ternary(weights[source]):
                return ReadTensor(w.name, source, values, TERNARY_PREFIX + w.qtype, 0, 3, None, mods, w.act)
            return ReadTensor(w.name, source, values, w.qtype, w.block, w.levels, None, mods, w.act)

        if w.name == LM_HEAD:
            out.append(entry("model.embed_tokens.weight", w.values, "lm_head"))
        elif w.name.endswith(".self_attn.qkv_proj.weight"):
            p = w.name.removesuffix("qkv_proj.weight")
            sizes = (("q_proj", heads * head_dim), ("k_proj", kv * head_dim), ("v_proj", kv * head_dim))
            start = 0
            for part, size in sizes:
                out.append(entry(f"{p}{part}.weight", w.values[start : start + size]))
                start += size
        elif w.name.endswith(".mlp.gate_up_proj.weight"):
            p = w.name.removesuffix("gate_up_proj.weight")
            half = len(w.values) // 2
            out += [entry(f"{p}gate_proj.weight", w.values[:half]), entry(f"{p}up_proj.weight", w.values[half:])]
        elif w.name == "model.embed_tokens.weight":
            untied = True
            out.append(entry(w.name, w.values))
        elif w.name in known:
            out.append(entry(w.name, w.values))
    if untied:  # an untied head: LM_HEAD is the lm_head's own matrix
        out = [ReadTensor(t.name, "lm_head.weight", t.values, t.qtype, t.block, t.levels, None, t.modules, t.act)
               if t.name == LM_HEAD else t for t in out]
        return out, {}
    return out, {"lm_head.weight": "model.embed_tokens.weight"}


def file_structure(root: Path, manifest: Any, checkpoint: Any, model: Any) -> list[str]:
    """The structure check (``structure.check``): the file's graph against the one ``build`` makes from the
    reference ``model``'s ternary weights and activation mode (a4.8 quantisers as graph ops) with the bundle's
    recorded ternary bits, block and accuracy level; the LM head's quantisation by onnxruntime's tools is one of
    the renames ``structure`` allows.  A manifest whose ``quant`` record is unreadable is the manifest check's to
    refuse: reported here as one failure line."""
    from . import structure

    q = manifest["artifact"].get("quant") or {}
    bits = q.get("ternary_bits")
    try:
        block, accuracy = (int(q["block_size"]), int(q["accuracy_level"])) if bits else (0, 0)
        expected = build(ternary_weights(model), model, int(bits) if bits else None, block, accuracy,
                         structure.SkeletonBuilder())
    except (KeyError, TypeError, ValueError) as exc:
        return [f"structure: the manifest's artifact.quant {q!r} does not describe a BitNet ONNX export ({exc})"]
    return structure.check(root / manifest["artifact"]["file"], expected,
                           f"the checkpoint {checkpoint.path.name}'s weights", lora_branches=structure.separate(manifest))


def file_constants(root: Path, manifest: Any, checkpoint: Any) -> list[str]:
    """The non-weight values of the file checked against ``checkpoint`` (``edgekit.tensorcheck``): LFM2's
    ``language_constants`` with the config's head_dim and this file's ``node_rules`` / ``genai_config`` /
    ``state_manifest``."""
    cfg = checkpoint.model_config
    return language_constants(root, manifest, checkpoint, int(cfg.head_dim), node_rules(cfg), genai_config(cfg),
                              state_manifest(cfg))
