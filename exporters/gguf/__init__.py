"""GGUF exporter: merged model -> ``model.gguf`` that llama.cpp (and llama-cpp-python) load directly.

F32 / F16 / BF16 / Q8_0 are written by the ``gguf`` package; Q4_0 and the K-quants go through llama.cpp's own
quantiser (``llama_model_quantize``).  Thresholds were set from measurements on the built-in trained model
(see README.md, "Verification results"); they are the pass bar of ``edgekit verify``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...errors import UnsupportedError
from ...families import Family
from ...plan import QuantSpec, Target, Thresholds, WeightKind
from .. import ExporterSpec, ExportJob
from . import vocab, writer

ARTIFACT = "model.gguf"

QUANTS: dict[str, QuantSpec] = {
    q.name: q
    for q in (
        QuantSpec("f32", WeightKind.FLOAT, 32, description="float32, lossless"),
        QuantSpec("f16", WeightKind.FLOAT, 16, description="float16"),
        QuantSpec("bf16", WeightKind.FLOAT, 16, description="bfloat16"),
        QuantSpec("q8_0", WeightKind.INT, 8, 32, description="8-bit, blocks of 32, one f16 scale"),
        QuantSpec("q6_k", WeightKind.INT, 6, 16, method="k-quant", description="6-bit k-quant"),
        QuantSpec("q5_k_m", WeightKind.INT, 5, 32, method="k-quant", description="5-bit k-quant, mixed"),
        QuantSpec("q4_k_m", WeightKind.INT, 4, 32, method="k-quant", description="4-bit k-quant, mixed"),
        QuantSpec("q4_0", WeightKind.INT, 4, 32, description="4-bit, blocks of 32, one f16 scale"),
    )
}

# Measured on the built-in model + LoRA (README, "GGUF parity"): top-1 / mean KL / max |Δlogit| / greedy
# f32 1.0000 / 2.9e-12 / 4.8e-5 / 32, f16 1.0000 / 3.3e-7 / 0.010 / 32, bf16 0.9980 / 1.8e-5 / 0.073,
# q8_0 0.9888 / 3.4e-4, q6_k 0.9639 / 2.1e-3, q5_k_m 0.9473 / 4.1e-3, q4_k_m 0.9150 / 1.2e-2,
# q4_0 0.8901 / 1.7e-2.  Top-1 bars for f32/f16/q8_0/q4_k_m are the ones the product promises; the others
# and the KL bars leave ~2-5x headroom over those measurements for other (trained) models.
THRESHOLDS: dict[str, Thresholds] = {
    "f32": Thresholds(min_top1=0.995, max_mean_kl=1e-5, max_abs_logit=1e-3, min_greedy_prefix=32),
    "f16": Thresholds(min_top1=0.995, max_mean_kl=1e-5, max_abs_logit=0.05, min_greedy_prefix=16),
    "bf16": Thresholds(min_top1=0.99, max_mean_kl=2e-4),
    "q8_0": Thresholds(min_top1=0.97, max_mean_kl=2e-3),
    "q6_k": Thresholds(min_top1=0.93, max_mean_kl=6e-3),
    "q5_k_m": Thresholds(min_top1=0.90, max_mean_kl=1.2e-2),
    "q4_k_m": Thresholds(min_top1=0.85, max_mean_kl=3e-2),
    "q4_0": Thresholds(min_top1=0.85, max_mean_kl=4e-2),
}

OPTIONS = {"pretokenizer": "llama.cpp pre-tokenizer name, when it cannot be derived from tokenizer.json"}


def lfm2_tensors(job: ExportJob) -> dict[str, Any]:
    """Merged HF weights under llama.cpp's LFM2 tensor names."""
    import gguf

    meta = job.checkpoint.family.describe(job.checkpoint.config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, meta["num_layers"])
    out: dict[str, Any] = {}
    for hf_name, array in job.weights.items():
        if hf_name == "lm_head.weight":  # tied to the embedding; llama.cpp reuses token_embd
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedError(f"GGUF: no llama.cpp tensor name for {hf_name!r}")
        if "conv.conv" in hf_name:
            array = array.squeeze(1)  # [hidden, 1, L] -> [hidden, L]: llama.cpp's conv op wants 2-D
        out[name] = array
    return out


def lfm2_metadata(job: ExportJob, voc: vocab.Vocab) -> Any:
    meta = job.checkpoint.family.describe(job.checkpoint.config)

    def add(w: Any) -> None:
        w.add_name(job.checkpoint.path.name)
        w.add_context_length(meta["context_length"])
        w.add_embedding_length(meta["hidden_size"])
        w.add_block_count(meta["num_layers"])
        w.add_feed_forward_length(meta["feed_forward_size"])
        w.add_head_count(meta["num_heads"])
        # per layer: 0 marks a short-conv layer, which llama.cpp treats as recurrent
        w.add_head_count_kv([meta["num_kv_heads"] if t != "conv" else 0 for t in meta["layer_types"]])
        w.add_rope_freq_base(meta["rope_theta"])
        w.add_layer_norm_rms_eps(meta["norm_eps"])
        w.add_vocab_size(meta["vocab_size"])
        w.add_shortconv_l_cache(meta["conv_L_cache"])
        vocab.add_to_writer(w, job.checkpoint.path, voc, meta)

    return add


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    plan = job.plan
    if plan.family is not Family.LFM2:
        raise UnsupportedError(f"GGUF export of {plan.family.value} is not implemented yet")
    meta = job.checkpoint.family.describe(job.checkpoint.config)
    voc = vocab.build_vocab(
        job.checkpoint.path / "tokenizer.json", meta["vocab_size"], plan.family, plan.options.get("pretokenizer")
    )
    qtype, ftype = writer.ggml_plan(plan.quant)
    target = out_dir / ARTIFACT
    staged = out_dir / "model-f32.gguf.partial" if ftype is not None else target
    t0 = time.perf_counter()
    job.progress(f"writing GGUF tensors as {qtype.name}")
    writer.write_gguf(
        staged, "lfm2", lfm2_metadata(job, voc), lfm2_tensors(job), qtype, writer.FILE_TYPES.get(plan.quant.name)
    )
    if ftype is not None:
        job.progress(f"quantising to {plan.quant.name.upper()} with llama.cpp")
        writer.requantize(staged, target, ftype)
        staged.unlink()
    return {
        "artifact": ARTIFACT,
        "arch": "lfm2",
        "pretokenizer": voc.pretokenizer,
        "padded_vocab": voc.padded,
        "tensor_types": writer.tensor_types(target),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


EXPORTER = ExporterSpec(
    target=Target.GGUF,
    engine="llama.cpp",
    artifact=ARTIFACT,
    families=frozenset({Family.LFM2}),
    quants=QUANTS,
    default_quant="f32",
    thresholds=THRESHOLDS,
    export=export,
    options=OPTIONS,
)
