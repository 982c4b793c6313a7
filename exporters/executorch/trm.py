"""TRM -> ExecuTorch: one supervision step as a ``.pte`` for XNNPACK (state in, state out, logits, halting logits).

``forward(z_H, z_L, inputs, puzzle_identifiers) -> (z_H', z_L', logits, q_halt_logits, q_continue_logits)`` with
shapes as in ``exporters/onnx/trm.py`` and a dynamic batch up to ``--max-batch``.  8da8w / 8da4w quantise every
linear (torchao, XNNPACK's dynamically quantised GEMMs).  Constant methods: ``get_seq_len``,
``get_halt_max_steps``, ``get_max_batch``.  HRM shares this file (``hrm.py``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from ...families.trm import step
from .. import ExportJob
from . import ARTIFACT, lower, quant


def export(job: ExportJob, out_dir: Path) -> dict[str, Any]:
    import torch

    options = job.plan.options
    length = step.seq_len(job.config, options.seq_len)
    t0 = time.perf_counter()
    model = copy.deepcopy(job.reference).float().eval()
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
        model, step.example_inputs(model, length), tuple({0: batch} for _ in range(4)), out_dir, ARTIFACT,
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
