"""Separate LoRA adapters for GGUF bundles: llama.cpp's LoRA adapter file, one per adapter.

The file convention is llama.cpp's (``src/llama-adapter.cpp``, ``convert_lora_to_gguf.py``): ``general.type =
adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` (float32), ``general.architecture`` equal to the base's,
and per adapted weight two tensors ``<base tensor name>.lora_a`` (numpy [r, in], ggml ne [in, r]) and ``.lora_b``
(numpy [out, r], ggml ne [r, out]).  llama.cpp's graph adds ``scale * B (A x)`` after the base matmul (and after
BitNet's per-tensor ``.scale`` multiply, ``llm_graph_context::build_lora_mm``), where ``scale = adapter_scale *
alpha / rank`` — or ``adapter_scale`` itself when alpha is 0 (BitNet's ffn_up / ffn_gate: see ``POST_SCALED``).  edgekit folds PEFT's scaling (rsLoRA and per-module
patterns included) into B and writes alpha = 0, so ``adapter_scale`` (``use_adapter(name, scale)``) is exactly the
multiplier of the adapter as trained.  Factors are stored as F32: the adapter is small and must stay exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...adapters import ADAPTER_DIR, LoraFactors, NamedAdapter, factors
from ...errors import UnsupportedError

MECHANISM = "llama.cpp LoRA adapter GGUF (llama_adapter_lora_init + llama_set_adapters_lora), applied unmerged"


def arch_of(family: str) -> str:
    if family == "bitnet":
        from .bitnet import ARCH
    else:
        from .lfm2 import ARCH
    return ARCH


def tensor_namer(family: str, n_layers: int) -> Callable[[str], str]:
    """HF module name (``model.layers.0.conv.in_proj``) -> llama.cpp's base tensor name (``blk.0.shortconv.in_proj.weight``)."""
    if family == "bitnet":
        from .bitnet import tensor_name

        return lambda module: tensor_name(module + ".weight")
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, n_layers)

    def lfm2(module: str) -> str:
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise UnsupportedError(f"GGUF: no llama.cpp tensor name for {module!r}")
        return name

    return lfm2


def write_file(path: Path, arch: str, name: str, tensors: Mapping[str, LoraFactors]) -> int:
    """Write one adapter file; ``tensors`` maps llama.cpp base tensor names to factors.  Returns its size in bytes."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    try:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: the runtime scale alone (PEFT's scaling is in B)
        for base, lf in tensors.items():
            w.add_tensor(base + ".lora_a", np.ascontiguousarray(lf.a, dtype=np.float32))
            w.add_tensor(base + ".lora_b", np.ascontiguousarray(lf.b, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return path.stat().st_size


# llama.cpp (the version llama-cpp-python 0.3.36 bundles) multiplies a BitNet projection's output by its
# per-tensor ``.scale`` at two places: ``build_lora_mm(w, cur, w_s)`` scales *before* adding the LoRA branch
# (q/k/v/o/down), but ``build_ffn`` scales ffn_up / ffn_gate *after* ``build_lora_mm(up, cur)`` has added it, so
# those two branches come out multiplied by the scale: their B is divided by it here (measured on the built-in:
# without it, llama.cpp + adapter vs the unmerged reference was 5x farther than the base vs its reference).
POST_SCALED = ("mlp.up_proj", "mlp.gate_proj")


def _post_scale_fix(family: str, checkpoint: Any, f: dict[str, LoraFactors]) -> dict[str, LoraFactors]:
    if family != "bitnet" or not any(m.endswith(POST_SCALED) for m in f):
        return f
    from ...families.bitnet.weights import load

    ternary = load(checkpoint.path).ternary
    out = dict(f)
    for m, lf in f.items():
        if m.endswith(POST_SCALED):
            out[m] = LoraFactors(lf.a, (lf.b / np.float32(ternary[m + ".weight"].scale)).astype(np.float32))
    return out


def _one(out_dir: Path, family: str, n_layers: int, named: NamedAdapter, checkpoint: Any) -> dict[str, Any]:
    namer = tensor_namer(family, n_layers)
    f = _post_scale_fix(family, checkpoint, factors(named.adapter))
    rel = f"{ADAPTER_DIR}/{named.name}.gguf"
    size = write_file(out_dir / rel, arch_of(family), named.name, {namer(m): lf for m, lf in f.items()})
    return {"file": rel, "bytes": size, "tensors": 2 * len(f), "max_rank": max(lf.rank for lf in f.values())}


def write(job: Any, named: Sequence[NamedAdapter], out_dir: Path, artifact: dict[str, Any]) -> dict[str, Any]:
    """Every adapter of a separate-mode export (the base GGUF is written by the pair file, unmerged)."""
    family = job.plan.family.value
    n_layers = job.config.num_hidden_layers
    items = {}
    for n in named:
        job.progress(f"writing llama.cpp LoRA adapter {n.name!r}")
        items[n.name] = _one(out_dir, family, n_layers, n, job.checkpoint)
    return {"mechanism": MECHANISM, "items": items}


def add_adapter(
    root: Path, manifest: Mapping[str, Any], checkpoint: Any, options: Any, named: NamedAdapter,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One more adapter file into the (staged) bundle at ``root``; llama.cpp needs nothing else."""
    return _one(root, manifest["family"], checkpoint.model_config.num_hidden_layers, named, checkpoint)
