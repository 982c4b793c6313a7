"""The exporter registry: one module per format, one row per format in ``EXPORTERS``.

Installed as ``edgekit.exporters``.  Each exporter states the families and quantisations it supports and the
parity thresholds it must meet; heavy libraries are imported only when an export runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import UnsupportedError
from ..families import Family
from ..plan import ExportPlan, QuantSpec, Target, Thresholds


@dataclass(frozen=True)
class ExportJob:
    """What an exporter gets: the validated plan, the source checkpoint and the merged float32 weights."""

    plan: ExportPlan
    checkpoint: Checkpoint
    weights: Mapping[str, np.ndarray]
    progress: Callable[[str], None] = print


@dataclass(frozen=True)
class ExporterSpec:
    target: Target
    engine: str  # key of the runtime registry that runs this format
    artifact: str  # main file name inside the bundle
    families: frozenset[Family]
    quants: Mapping[str, QuantSpec]
    default_quant: str
    thresholds: Mapping[str, Thresholds]
    export: Callable[[ExportJob, Path], dict[str, Any]]  # writes into the bundle dir; returns manifest info
    options: Mapping[str, str] = field(default_factory=dict)  # option name -> help text
    # (quant name, options): raises UnsupportedError for bad values, before any work is done (result unused)
    check_options: Callable[[str, Mapping[str, Any]], object] | None = None

    def quant(self, name: str | None) -> QuantSpec:
        key = (name or self.default_quant).strip().lower()
        if key not in self.quants:
            raise UnsupportedError(
                f"unknown quantisation {name!r} for {self.target.value}; valid: {', '.join(self.quants)}"
            )
        return self.quants[key]


def _registry() -> dict[Target, ExporterSpec]:
    from . import executorch, gguf, onnx

    table: dict[Target, ExporterSpec] = {}
    for spec in (gguf.EXPORTER, onnx.EXPORTER, executorch.EXPORTER):
        if spec.target in table:
            raise RuntimeError(f"two exporters registered for {spec.target.value}")
        table[spec.target] = spec
    return table


EXPORTERS: Mapping[Target, ExporterSpec] = _registry()


def get(target: Target) -> ExporterSpec:
    try:
        return EXPORTERS[target]
    except KeyError:
        known = ", ".join(t.value for t in EXPORTERS)
        raise UnsupportedError(f"format {target.value!r} has no exporter yet; available: {known}") from None
