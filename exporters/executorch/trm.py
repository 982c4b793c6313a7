"""TRM -> ExecuTorch: one supervision step as a ``.pte`` for XNNPACK (state in, state out, logits, halting logits).

``forward(z_H, z_L, inputs, puzzle_identifiers) -> (z_H', z_L', logits, q_halt_logits, q_continue_logits)`` with
shapes as in ``exporters/onnx/trm.py`` and a dynamic batch up to ``--max-batch``.  The program is not the
reference traced as is but ``trm_graph.Step``, the same step rewritten from the reference's weights so that
everything after the embedding gathers is one XNNPACK delegate (see that module for what changes and why).
8da8w / 8da4w quantise every linear of that module (torchao, XNNPACK's dynamically quantised GEMMs); the norms'
mean columns, RoPE's rotation and the selection matrices are buffers, never quantised.  Constant methods:
``get_seq_len``, ``get_halt_max_steps``, ``get_max_batch``.  HRM shares this file (``hrm.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgekit.exporters import ExportJob
from edgekit.exporters.executorch import ARTIFACT, lower, quant
from edgekit.exporters.executorch.structure import file_structure, record_build  # noqa: F401  (check hooks)
from edgekit.families.trm import step


def build(reference: Any, length: int) -> Any:
    """The float32 eager step module for puzzles of ``length`` tokens (a fresh copy of the weights)."""
    from edgekit.exporters.executorch.trm_graph import Step

    return Step(reference, length).eval()


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    import torch

    options = job.plan.options
    length = step.seq_len(job.config, options.seq_len)
    t0 = time.perf_counter()
    model = build(job.reference, length)
    lq = quant.linear_quant(job.plan.quant, options)
    if lq is not None:
        job.progress(f"quantising linear layers ({lq.describe()})")
        with torch.no_grad():
            quant.quantize_linears(model, lq)
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    metadata = {
        "get_seq_len": length,
        "get_halt_max_steps": int(job.config.halt_max_steps),
        "get_max_batch": int(options.max_batch),
    }
    result = lower.lower(
        model, step.example_inputs(job.reference, length), tuple({0: batch} for _ in range(4)), out_dir, ARTIFACT,
        metadata, job.progress,
    )
    return {
        "file": ARTIFACT,
        "carry": step.write_carry(job.reference, out_dir),
        "seq_len": length,
        "max_batch": int(options.max_batch),
        "backend": "xnnpack",
        "linear_quant": lq.describe() if lq else "float32",
        "delegated_partitions": result.delegated_partitions,
        "non_delegated_ops": result.non_delegated_ops,
        "stage_seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def file_weights(root: Path, manifest: Any, weights: Any, model: Any) -> tuple[list[Any], dict[str, str]]:
    """The step program's weights under the reference's names (``edgekit.tensorcheck``), re-derived with the
    bundle's recorded quant and options as ``export`` quantises them (like the LFM2 pair's ``readback``: a
    ``.pte``'s XNNPACK weights are not parsed): every linear weight (``<module>.weight``, 2-D; ``trm_graph``
    splits q|k|v, gate|up and the halting head by rows, which per-channel and per-group quantisation keep
    identical) at the linear quant with XNNPACK's int8 per-token activations; embeddings, biases and the reset
    carry (read from ``carry_init.npz``) float32."""
    import numpy as np

    from edgekit.errors import BundleError
    from edgekit.exporters.executorch import readback
    from edgekit.families import Family
    from edgekit.plan import Format
    from edgekit.recipes import RECIPES
    from edgekit.tensorcheck import ReadTensor

    recipe = RECIPES.get(Family(manifest["family"]), Format.EXECUTORCH)
    spec = recipe.quant(manifest["plan"]["quant"]["name"])
    options = recipe.options.from_dict(manifest["plan"].get("options") or {})
    lq = quant.linear_quant(spec, options)
    carry = root / manifest["artifact"]["carry"]
    try:
        data = np.load(carry, allow_pickle=False)
        init = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{carry}: not a readable reset carry ({exc}); re-export the bundle") from None
    import torch

    out = [ReadTensor(f"{carry.name}:{k}", k, v, "F32") for k, v in init.items()]
    with torch.no_grad():  # torchao's int4 tensors dequantise to tensors that require grad otherwise
        for name, w in weights.items():
            if name in init:
                continue
            if name.endswith(".weight") and w.ndim == 2:
                out.append(readback.linear(name, name, w, lq, name.removesuffix(".weight")))
            else:
                out.append(ReadTensor(name, name, w, "F32"))
    return out, {}
