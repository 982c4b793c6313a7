"""Exporters, one folder per format (installed as ``edgekit.exporters``).

Each format folder holds only that format's mechanics — ``gguf/`` the GGUF writer, its quant types and the
tokenizer section; ``onnx/`` graph-building helpers, ONNX Runtime's quantisers and the fused-kernel check;
``executorch/`` quantisation by a module-name -> config map, export, lowering and serialisation — plus one file
per (family, format) pair, ``<format>/<family>.py``, which the recipe table (``edgekit.recipes``) points at.
A pair file exposes ``export(job, out_dir) -> dict`` (the manifest's ``artifact`` section, with ``file`` naming
the main artifact).  The format folder's ``__init__`` declares the format's quantisations and option types and
imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..checkpoint import Checkpoint
from ..plan import ExportPlan


@dataclass(frozen=True)
class ExportJob:
    """What a pair's ``export`` gets.

    ``plan`` (validated; ``plan.options`` is the recipe's typed ``Options``), ``checkpoint`` (its
    ``model_config`` is the family's frozen config), ``reference`` (the merged float32 torch model, eval mode),
    ``weights`` (its state dict as float32 numpy arrays, keyed by the checkpoint's own tensor names) and
    ``progress`` (one line per stage); ``tensor_types`` (checkpoint name -> type name, as a manifest's
    ``mixed_precision.tensor_types`` records them): a mixed-precision assignment to use instead of running the
    scan (the ExecuTorch structure check's rebuild of a bundle's program).
    """

    plan: ExportPlan
    checkpoint: Checkpoint
    reference: Any
    weights: Mapping[str, np.ndarray]
    progress: Callable[[str], None] = print
    tensor_types: Mapping[str, str] | None = None

    @property
    def config(self) -> Any:
        return self.checkpoint.model_config
