"""Separate LoRA adapters for ONNX BitNet bundles: the ternary graph (``bitnet.py``, exact codes) plus a float
branch per fused projection, one ONNX Runtime adapter file each — the LFM2 mechanism (``adapters``).

Each fused matmul (q/k/v, o, gate/up, down) of an adapted layer gets ``y = base(x) + ((x @ A) * lora_scale) @ B``
with A the adapted modules' A factors side by side and B block-diagonal (exact), both overridable initializers
(zero: the file alone is the base model).  ``x`` is the projection's input before any quantisation — the
unquantised activations the unmerged reference (``families.bitnet.lora.unmerged_reference``) feeds its branch;
MatMulNBits quantises its own copy of ``x`` internally (``accuracy_level`` 4).  ``--bitnet-activations a4.8``
writes its activation quantisers as graph ops in front of the matmul, so the branch would read quantised values:
refused (ExecuTorch keeps a4.8 adapters separate, its branches read the input before the quantisers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ...adapters import NamedAdapter, factors, slots
from ...errors import UnsupportedError
from . import ARTIFACT
from .adapters import adapter_file, group_tensors, recorded_branches, write_branches


def groups(c: Any) -> dict[str, list[str]]:
    """Branch key (the fused matmul's node name in ``bitnet.build``) -> the HF modules it computes, in order."""
    out: dict[str, list[str]] = {}
    for i in range(c.num_hidden_layers):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        out[f"{a}.qkv_proj"] = [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"]
        out[f"{a}.o_proj"] = [f"{a}.o_proj"]
        out[f"{m}.gate_up_proj"] = [f"{m}.gate_proj", f"{m}.up_proj"]
        out[f"{m}.down_proj"] = [f"{m}.down_proj"]
    return out


def shapes(c: Any) -> dict[str, tuple[int, int]]:
    """[out, in] of every projection."""
    h, hd, ff = c.hidden_size, c.head_dim, c.intermediate_size
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    leaf = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q), "gate_proj": (ff, h),
            "up_proj": (ff, h), "down_proj": (h, ff)}
    return {m: leaf[m.rsplit(".", 1)[1]] for ms in groups(c).values() for m in ms}


def _check_activations(options: Any) -> None:
    if getattr(options, "bitnet_activations", "a8") == "a4.8":
        raise UnsupportedError(
            "onnx BitNet --bitnet-activations a4.8 cannot keep a LoRA adapter separate (its activation quantisers "
            "sit in front of the projections the branch would read); use executorch, or --lora-mode merged"
        )


def write(job: Any, named: Sequence[NamedAdapter], out_dir: Path, artifact: dict[str, Any]) -> dict[str, Any]:
    _check_activations(job.plan.options)
    c = job.config
    all_f = [factors(n.adapter) for n in named]
    have = slots(all_f)
    g, sh = groups(c), shapes(c)
    unknown = sorted(set(have) - set(sh))
    if unknown:
        raise UnsupportedError(f"onnx BitNet: no projection {unknown[0]} to give a LoRA branch")
    targets = {k: [f"{k}/out0", f"{k}/MatMulNBits/out0"] for k in g}
    job.progress(f"adding LoRA branches for {len(have)} projections to {ARTIFACT}")
    return write_branches(out_dir, named, all_f, have, lambda f: group_tensors(g, f, have, sh), targets)


def add_adapter(
    root: Path, manifest: Mapping[str, Any], checkpoint: Any, options: Any, named: NamedAdapter,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    have, f = recorded_branches(root, manifest, named)
    c = checkpoint.model_config
    return adapter_file(root, named.name, f, lambda h: group_tensors(groups(c), h, have, shapes(c)))
