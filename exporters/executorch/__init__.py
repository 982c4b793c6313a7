"""ExecuTorch exporter: merged (or base + separate LoRA) LFM2 -> ``model.pte`` for the XNNPACK backend.

The program follows ExecuTorch's LLM runner conventions, so its own runners and demo apps run it unchanged:
``forward(tokens [1, n], input_pos [1]) -> logits [1, vocab]`` of the last position, with the KV cache and the
conv state inside, ``n`` dynamic (prefill is one call of up to ``get_max_seq_len`` tokens), and the metadata
methods ``get_bos_id``, ``get_eos_ids``, ``get_max_seq_len``, ``get_max_context_len``, ``get_vocab_size``,
``get_n_layers``, ``use_kv_cache``, ``use_sdpa_with_kv_cache``, ``enable_dynamic_shape``.  The tokenizer ships as
``tokenizer.json`` (read by ExecuTorch's HF tokenizer), and ``params.json`` (export_llm's schema) travels along.
The tied embedding / LM head table is stored once, in ``model.ptd`` (the program's data file), where the head is
float32 or int8 (``shares_embedding``).

Thresholds were measured on the built-in trained model (see README.md, "Verification results").
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from ...errors import AdapterError, UnsupportedError
from ...families import Family, lfm2
from ...plan import QuantSpec, Target, Thresholds, WeightKind
from .. import ExporterSpec, ExportJob
from .params import EXPORT_LLM_CONV_KERNEL, export_llm_can_rebuild, params_from_hf

ARTIFACT = "model.pte"
PARAMS_FILE = "params.json"
DEFAULT_CONTEXT = 2048
GROUP_SIZES = (32, 64, 128, 256)  # XNNPACK's blockwise int4 GEMM; 0 = one scale per output channel
EMBEDDING_BITS = {"none": None, "8": 8, "4": 4}
LORA_MODES = ("merged", "separate")
SHARING = ("auto", "on", "off")

QUANTS: dict[str, QuantSpec] = {
    q.name: q
    for q in (
        QuantSpec("fp32", WeightKind.FLOAT, 32, description="float32 weights and activations"),
        QuantSpec(
            "8da8w", WeightKind.INT, 8, None, activation_bits=8,
            description="int8 per-channel weights, dynamic per-token int8 activations",
        ),
        QuantSpec(
            "8da4w", WeightKind.INT, 4, 32, activation_bits=8,
            description="int4 grouped weights (group 32 by default), dynamic per-token int8 activations",
        ),
    )
}

THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_top1=0.999, max_mean_kl=1e-5, max_abs_logit=1e-3, min_greedy_prefix=32),
    "8da8w": Thresholds(min_top1=0.97, max_mean_kl=2e-3),
    "8da4w": Thresholds(min_top1=0.85, max_mean_kl=4e-2),
}

OPTIONS = {
    "group_size": f"8da4w weight group size: one of {', '.join(map(str, GROUP_SIZES))} or 0 for per-channel "
    "(default 32; 8da8w is always per-channel)",
    "embedding_quant": "token embedding table: none (default), 8 or 4 bits (weight-only, groups of 32)",
    "max_context": f"KV cache length in tokens (default min({DEFAULT_CONTEXT}, the model's context length))",
    "lora_mode": "merged (default): the adapter is folded into the weights; separate: base weights in model.pte, "
    "the float32 LoRA weights in adapter.ptd",
    "head_bits": "8da4w only: bits of the output projection (tied LM head): 4 or 8 (default 8, per channel)",
    "shared_embedding": "on: the token embedding reads the tied LM head's own table (float32 or int8), stored once "
    "in model.ptd next to model.pte; off: one self-contained model.pte holding the table twice (gather table and "
    "XNNPACK's head weights); auto (default): on for fp32 and 8da4w, off for 8da8w",
    "weight_algorithm": "affine (default, round-to-nearest scales) or hqq (torchao's HQQ scale search; slower)",
}


def _choice(options: Mapping[str, Any], key: str, valid: tuple[str, ...], default: str) -> str:
    value = str(options.get(key, default)).strip().lower()
    if value not in valid:
        raise UnsupportedError(f"executorch --{key.replace('_', '-')} {value!r} is not valid; valid: {', '.join(valid)}")
    return value


def linear_quant(quant: QuantSpec, options: Mapping[str, Any]) -> Any:
    """The plan's quant + options -> ``LinearQuant`` (None for fp32); the only place the mapping lives."""
    from .quant import ALGORITHMS, LinearQuant

    algorithm = _choice(options, "weight_algorithm", ALGORITHMS, "affine")
    group = options.get("group_size")
    if (quant.is_float or quant.weight_bits == 8) and options.get("head_bits") is not None:
        raise UnsupportedError("executorch --head-bits applies to 8da4w only")
    if quant.is_float:
        if group is not None:
            raise UnsupportedError("executorch --group-size applies to 8da4w only (fp32 has no weight groups)")
        return None
    if quant.weight_bits == 8:
        if group not in (None, 0):
            # XNNPACK's int8-weight GEMM takes one scale per output channel; grouped int8 cannot be lowered
            raise UnsupportedError("executorch 8da8w is per-channel only; drop --group-size (or pass 0)")
        return LinearQuant(8, None, algorithm)
    group = quant.group_size if group is None else int(group)
    if group != 0 and group not in GROUP_SIZES:
        raise UnsupportedError(
            f"executorch 8da4w --group-size {group} cannot be lowered to XNNPACK; valid: "
            f"{', '.join(map(str, GROUP_SIZES))}, or 0 for per-channel"
        )
    head = int(options.get("head_bits", 8))
    if head not in (4, 8):
        raise UnsupportedError(f"executorch --head-bits {head} is not valid; valid: 4, 8")
    return LinearQuant(4, group or None, algorithm, head_bits=head)


def context_length(meta: Mapping[str, Any], options: Mapping[str, Any]) -> int:
    limit = int(meta["context_length"])
    value = options.get("max_context")
    if value is None:
        return min(DEFAULT_CONTEXT, limit)
    value = int(value)
    if value > limit:
        raise UnsupportedError(
            f"executorch --max-context {value} exceeds the model's context length {limit}; pass at most {limit}"
        )
    if value < 16:
        raise UnsupportedError(f"executorch --max-context {value} is too small; pass at least 16")
    return value


def runner_metadata(meta: Mapping[str, Any], params: Mapping[str, Any], max_context: int) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runners read (names are theirs)."""
    out: dict[str, Any] = {
        "get_max_seq_len": max_context - 1,  # tokens per forward call (the dynamic dimension's bound)
        "get_max_context_len": max_context,
        "get_vocab_size": params["vocab_size"],
        "get_n_layers": params["n_layers"],
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    if meta.get("bos_id") is not None:
        out["get_bos_id"] = int(meta["bos_id"])
    if meta.get("eos_ids"):
        out["get_eos_ids"] = [int(e) for e in meta["eos_ids"]]
    return out


def _base_weights(job: ExportJob) -> dict[str, Any]:
    """The checkpoint's own (unmerged) weights as float32 numpy, for separate-LoRA exports."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in job.checkpoint.files:
        out.update({k: v.float().numpy() for k, v in load_file(str(f)).items()})
    return out


def _lora(job: ExportJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LoRA specs per module type, PEFT tensors) of the plan's adapter, for separate mode."""
    from safetensors.torch import load_file

    from . import model as M

    if job.plan.adapter is None:
        raise UnsupportedError("executorch --lora-mode separate needs --adapter")
    root = Path(job.plan.adapter)
    cfg = json.loads((root / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(f"{root}: per-module rank/alpha patterns are not supported with --lora-mode separate; use merged")
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (rank**0.5) if cfg.get("use_rslora") else alpha / rank
    tensors = {k: v.float().numpy() for k, v in load_file(str(root / "adapter_model.safetensors")).items()}
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors})
    return M.lora_modules(targets, rank, scale), tensors


def check_options(quant: str, options: Mapping[str, Any]) -> None:
    """Plan-time validation (before the reference model loads); the context bound needs the model, so
    ``context_length`` checks it at export time."""
    _choice(options, "lora_mode", LORA_MODES, "merged")
    _choice(options, "embedding_quant", tuple(EMBEDDING_BITS), "none")
    shares_embedding(options, linear_quant(QUANTS[quant], options))


def shares_embedding(options: Mapping[str, Any], lq: Any) -> bool:
    """Whether the tied table is stored once.  Only a float32 or int8 head can serve the gather (there is no int4
    gather kernel), an explicit --embedding-quant asks for a table of its own, and a separate LoRA already owns
    the one data file a bundle carries.  ``auto`` shares where it costs no measurable quality: a float32 head
    (the same values), and 8da4w's int8 head (finer than every other weight); 8da8w asks for ``on``, because its
    int8 gather table cost 0.4 point of top-1 on the built-in model (0.9741 -> 0.9702, bar 0.97)."""
    from .quant import head_bits

    mode = _choice(options, "shared_embedding", SHARING, "auto")
    if mode == "off":
        return False
    bits = head_bits(lq)
    why = None
    if bits not in (32, 8):
        why = f"the LM head is int{bits} (only a float32 or int8 head can serve the gather; pass --head-bits 8)"
    elif _choice(options, "embedding_quant", tuple(EMBEDDING_BITS), "none") != "none":
        why = "--embedding-quant asks for a table of its own"
    elif _choice(options, "lora_mode", LORA_MODES, "merged") != "merged":
        why = "--lora-mode separate keeps the adapter in the bundle's one data file"
    if why is not None:
        if mode == "on":
            raise UnsupportedError(f"executorch --shared-embedding on cannot apply: {why}")
        return False
    return mode == "on" or bits == 32 or lq.weight_bits == 4


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("executorch", "torchao"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    plan = job.plan
    if plan.family is not Family.LFM2:
        raise UnsupportedError(f"ExecuTorch export of {plan.family.value} is not implemented yet")
    options = plan.options
    lora_mode = _choice(options, "lora_mode", LORA_MODES, "merged")
    emb_key = _choice(options, "embedding_quant", tuple(EMBEDDING_BITS), "none")
    lq = linear_quant(plan.quant, options)
    shared = shares_embedding(options, lq)
    meta = lfm2.describe(job.checkpoint.config)
    params = params_from_hf(job.checkpoint.config)
    max_context = context_length(meta, options)

    import torch

    from . import lower, model as M

    t0 = time.perf_counter()
    separate = lora_mode == "separate"
    lora_specs, lora_tensors = _lora(job) if separate else ({}, {})
    job.progress(f"building the ExecuTorch LFM2 graph (context {max_context}, LoRA {lora_mode})")
    torch.manual_seed(0)
    shape = replace(lfm2.Lfm2Shape.from_config(job.checkpoint.config), context=max_context)
    eager = M.Lfm2(shape, lora_specs)
    M.load_weights(eager, _base_weights(job) if separate else job.weights)
    if separate:
        with torch.no_grad():
            for name, p in eager.named_parameters():
                if ".lora_" in name:
                    p.zero_()  # modules the adapter does not touch keep a zero branch
        M.load_lora(eager, lora_tensors)
    result = lower.lower(
        eager, out_dir, ARTIFACT, lq, EMBEDDING_BITS[emb_key],
        runner_metadata(meta, params, max_context), separate, shared, job.progress,
    )
    params_note = None
    if export_llm_can_rebuild(job.checkpoint.config):
        (out_dir / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
    else:
        params_note = (
            f"no {PARAMS_FILE}: conv_L_cache={meta['conv_L_cache']}, and export_llm's LFM2 model hard-codes "
            f"{EXPORT_LLM_CONV_KERNEL} (the .pte itself does not need it)"
        )
    data = [f for f in result.files if f.endswith(".ptd")]
    return {
        "artifact": ARTIFACT,
        "data_files": data,
        "params": None if params_note else PARAMS_FILE,
        **({"params_note": params_note} if params_note else {}),
        "backend": "xnnpack",
        "versions": _versions(),
        "linear_quant": lq.describe() if lq else "float32",
        "group_size": lq.group_size if lq else None,
        "embedding_quant": emb_key,
        "shared_embedding": shared,
        "lora_mode": lora_mode,
        "max_context": max_context,
        "max_seq_len": max_context - 1,
        # prefill is one forward call for any prompt up to max_seq_len tokens (no static shapes needed)
        "dynamic_shapes": True,
        "delegated_partitions": result.delegated_partitions,
        "non_delegated_ops": result.non_delegated_ops,
        "stage_seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


EXPORTER = ExporterSpec(
    target=Target.EXECUTORCH,
    engine="executorch",
    artifact=ARTIFACT,
    families=frozenset({Family.LFM2}),
    quants=QUANTS,
    default_quant="8da4w",
    thresholds=THRESHOLDS,
    export=export,
    options=OPTIONS,
    check_options=check_options,
)
