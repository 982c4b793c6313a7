"""LFM2 -> GGUF: llama.cpp's ``lfm2`` architecture (tensor names from gguf-py's map, hyperparameter keys)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit import calibration as calibration_mod

from ...errors import BundleError, UnsupportedError
from ...gptq import QTYPE_SUFFIX, check_summary
from .. import ExportJob
from . import vocab, writer

ARCH = "lfm2"
# llama.cpp's LFM2 graph reads the depthwise conv kernel ([L_cache, hidden]) as F32 whatever the file type
KEEP_F32 = ("shortconv.conv.weight",)
# the LLaMA-3 split regex is llama.cpp's "lfm2" pre-tokenizer for this architecture
PRETOKENIZER_ALIASES = {"llama-bpe": "lfm2"}


def tensors(job: ExportJob) -> dict[str, Any]:
    """Merged HF weights under llama.cpp's LFM2 tensor names."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, job.config.num_hidden_layers)
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


def write_metadata(w: Any, cfg: Any, checkpoint_dir: Path, voc: Any) -> None:
    """llama.cpp's LFM2 hyperparameter keys and the vocabulary, from the checkpoint's config ``cfg``."""
    w.add_name(checkpoint_dir.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    # per layer: 0 marks a short-conv layer, which llama.cpp treats as recurrent
    w.add_head_count_kv([cfg.num_key_value_heads if t != "conv" else 0 for t in cfg.layer_types])
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_shortconv_l_cache(cfg.conv_L_cache)
    vocab.add_to_writer(w, checkpoint_dir, voc, cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id)


def file_constants(root: Path, manifest: Any, checkpoint: Any) -> list[str]:
    """The metadata check (``edgekit.tensorcheck``): every key this exporter writes for ``checkpoint`` (RoPE base,
    norm epsilon, head counts, context length, the vocabulary, bos/eos/add-bos), read back from the bundle's file."""
    from . import readback

    cfg = checkpoint.model_config
    voc = vocab.build_vocab(checkpoint.path / "tokenizer.json", cfg.vocab_size, PRETOKENIZER_ALIASES,
                            (manifest["plan"].get("options") or {}).get("pretokenizer"))
    return readback.check_metadata(root / manifest["artifact"]["file"], ARCH,
                                   lambda w: write_metadata(w, cfg, checkpoint.path, voc))


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    cfg = job.config
    voc = vocab.build_vocab(
        job.checkpoint.path / "tokenizer.json", cfg.vocab_size, PRETOKENIZER_ALIASES, job.plan.options.pretokenizer
    )

    def metadata(w: Any) -> None:
        write_metadata(w, cfg, job.checkpoint.path, voc)

    imatrix, calibration = None, None
    if job.plan.options.calibrates(job.plan.quant):
        stats = calibration_mod.for_job(job)
        imatrix = importance_matrix(job, stats.values)
        calibration = {**stats.summary(), "method": "llama.cpp importance matrix (llama_model_quantize_params.imatrix)"}
    mixed_summary: dict[str, Any] = {}
    mix = None
    if job.plan.options.mixes(job.plan.quant):

        def mix(defaults: Any) -> Any:
            chosen, summary = mixed_types(job, defaults, imatrix)
            mixed_summary.update(summary)
            return chosen

    artifact = writer.write(out_dir, job.plan.quant, ARCH, metadata, tensors(job), job.progress, KEEP_F32, imatrix, mix)
    gptq_summary = None
    if calibration is not None and job.plan.quant.name in GPTQ_TYPES:
        gptq_summary = apply_gptq(job, out_dir / artifact["file"], GPTQ_TYPES[job.plan.quant.name])
        calibration = {**calibration, "method": calibration["method"] + "; GPTQ input Hessians"}
    return {**artifact, "pretokenizer": voc.pretokenizer, "padded_vocab": voc.padded, "calibration": calibration,
            "mixed_precision": mixed_summary or None, "gptq": gptq_summary}


# calibrated quant -> the stored types whose codes GPTQ replaces after llama.cpp's quantiser (exporters/gguf/gptq.py;
# --no-calibration keeps llama.cpp's codes).  The built-in + LoRA default exports' own verification (cost vs float,
# top-1 / mean KL, 2,048 held-out tokens, same bytes): q4_0 0.9160 / 1.02e-2 -> 0.9233 / 8.44e-3, q4_k_m 0.9395 /
# 6.95e-3 -> 0.9399 / 6.37e-3.  Other types the mixed scan picks (Q5_0, Q5_K, Q6_K, ...) keep llama.cpp's codes.
GPTQ_TYPES: dict[str, tuple[str, ...]] = {"q4_0": ("Q4_0",), "q4_k_m": ("Q4_K",)}


def apply_gptq(job: ExportJob, path: Path, types: tuple[str, ...]) -> dict[str, Any]:
    """GPTQ codes, in place, for the ``types`` tensors of the written file that hold a linear layer's weight (the
    tied ``token_embd`` as the LM head); the manifest's ``artifact.gptq`` entry."""
    import gguf
    import torch

    from . import gptq

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, job.config.num_hidden_layers)
    linear = {n for n, m in job.reference.named_modules() if isinstance(m, torch.nn.Linear)}
    weights: dict[str, Any] = {}
    modules: dict[str, str] = {}
    for hf, array in job.weights.items():
        module = "lm_head" if hf == "model.embed_tokens.weight" else hf.removesuffix(".weight")
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if hf == "lm_head.weight" or name is None or module not in linear or getattr(array, "ndim", 0) != 2:
            continue
        weights[name], modules[name] = array, module
    text, windows = calibration_mod.job_windows(job)
    summary = gptq.apply(path, weights, modules, job.reference, windows, types, job.progress)
    return {**summary, "calibration_sha256": text.sha256}


def mixed_types(job: ExportJob, defaults: dict[str, str], imatrix: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The sensitivity scan over the weight matrices llama.cpp quantised (``defaults``: GGUF name -> type in
    the default file) and the selection under the byte budget: GGUF name -> type, and the manifest's entry."""
    import gguf

    from edgekit import mixed as mixed_mod

    from . import mixed

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, job.config.num_hidden_layers)
    source: dict[str, str] = {}
    for hf in job.weights:
        if hf != "lm_head.weight":
            name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
            if name is not None:
                source[name] = hf
    base = mixed.CANDIDATES[job.plan.quant.name]
    candidates = []
    for name, t in defaults.items():
        if t in ("F32", "F16", "BF16") or name not in source:
            continue
        shape = tuple(job.weights[source[name]].shape)
        kinds = [k for k in base if mixed.fits(shape, k)]
        if t not in kinds:
            kinds.append(t)
        sizes = dict(sorted(((k, mixed.nbytes(shape, k)) for k in kinds), key=lambda kv: kv[1]))
        candidates.append(mixed_mod.Candidate(source[name], int(np.prod(shape)), sizes))
    to_gguf = {hf: name for name, hf in source.items()}

    def fake(hf: str, w: Any, t: str) -> Any:
        return mixed.fake_quant(w, t, (imatrix or {}).get(to_gguf[hf]))

    quantised = {source[n]: t for n, t in defaults.items() if n in source and t not in ("F32", "F16", "BF16")}
    result = mixed_mod.plan_job(job, candidates, quantised, fake, "ggml quantise/dequantise per tensor; "
                                "llama_model_quantize_params.tt_overrides", to_gguf)
    chosen, summary = result.types, result.summary
    return chosen, summary


def importance_matrix(job: ExportJob, values: dict[str, Any]) -> dict[str, Any]:
    """Importance per linear (reference module names) -> llama.cpp's tensor names.  The tied LM head's entry
    goes to ``token_embd.weight``: llama.cpp's graph multiplies by that tensor for the output, so that is the
    name ``llama-imatrix`` records it under."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, job.config.num_hidden_layers)
    out: dict[str, Any] = {}
    for module, v in values.items():
        if module == "lm_head":
            out["token_embd.weight"] = v
            continue
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise UnsupportedError(f"GGUF: no llama.cpp tensor name for {module!r}")
        out[name] = v
    return out


def file_weights(root: Path, manifest: Any, sources: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The bundle's GGUF tensors dequantised under the checkpoint's names ``sources`` (``edgekit.tensorcheck``):
    the same name map as ``tensors``, inverted; the conv kernel gets its [hidden, 1, L] shape back; the tied LM
    head is served by ``token_embd`` (alias)."""
    import gguf

    from . import readback

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, int(manifest["model"]["config"]["num_hidden_layers"]))
    inverse: dict[str, str] = {}
    for hf in sources:
        if hf != "lm_head.weight":
            name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
            if name is not None:
                inverse[name] = hf

    def source_of(name: str) -> Any:
        hf = inverse.get(name)
        if hf is None:
            return None
        return hf, ((lambda a: a[:, None, :]) if "conv.conv" in hf else (lambda a: a))

    def modules_of(name: str, hf: str) -> tuple[str, ...]:
        return ("lm_head",) if name == "token_embd.weight" else (hf.removesuffix(".weight"),)

    read = readback.read(root / manifest["artifact"]["file"], source_of, modules_of)
    by_gptq = gptq_targets(manifest, model, read)
    read = [replace(t, qtype=t.qtype + QTYPE_SUFFIX) if t.name in by_gptq else t for t in read]
    return read, {"lm_head.weight": "model.embed_tokens.weight"}


def gptq_targets(manifest: Mapping[str, Any], model: Any, read: Sequence[Any]) -> set[str]:
    """The GGUF tensors whose codes the bundle's *plan* has GPTQ write (``apply_gptq``: a calibrated quant's
    ``GPTQ_TYPES`` tensors that multiply a linear layer's input, the tied table as the LM head), from the file's
    types (``read``: ``readback.read``) and the float reference ``model``.  Raises ``BundleError`` where the
    manifest's ``artifact.gptq`` lists other tensors (an edited manifest: the tensor check would hold GPTQ's codes
    to round-to-nearest's bounds, or the reverse)."""
    import torch

    from ...families import Family
    from ...plan import Format
    from ...recipes import RECIPES

    recipe = RECIPES.get(Family.LFM2, Format.GGUF)
    spec = recipe.quant(manifest["plan"]["quant"]["name"])
    options = recipe.options.from_dict(manifest["plan"].get("options") or {})
    want: set[str] = set()
    if options.calibrates(spec) and spec.name in GPTQ_TYPES:
        linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        want = {t.name for t in read if t.qtype in GPTQ_TYPES[spec.name] and t.modules and t.modules[0] in linear}
    entry = manifest["artifact"].get("gptq") or {}
    listed = set(entry.get("tensors") or ())
    if listed:
        check_summary(entry)
    if listed != want:
        diff = sorted(listed ^ want)
        raise BundleError(f"the manifest's artifact.gptq.tensors differs from the tensors the plan has GPTQ write "
                          f"({len(diff)} differ, e.g. {diff[0]}; an edited manifest?); re-export the bundle")
    return want
