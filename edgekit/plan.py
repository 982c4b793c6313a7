"""Typed, immutable values that describe an export: targets, quantisation specs and the export plan.

Strings such as ``q4_k_m`` are parsed into these values at the CLI and manifest edges only.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UnsupportedError


class Target(str, enum.Enum):
    """An export format."""

    GGUF = "gguf"
    EXECUTORCH = "executorch"
    ONNX = "onnx"

    @classmethod
    def parse(cls, name: str) -> "Target":
        try:
            return cls(name.strip().lower())
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise UnsupportedError(f"unknown format {name!r}; known formats: {known}") from None


class WeightKind(str, enum.Enum):
    FLOAT = "float"  # stored as a float type (f32/f16/bf16)
    INT = "int"  # integer codes with scales (block / group / channel)


@dataclass(frozen=True)
class QuantSpec:
    """A weight (and optionally activation) quantisation, independent of any format's naming.

    ``name`` is the user-facing name in the format's own vocabulary (llama.cpp's for GGUF); each exporter
    translates the spec to its native form in exactly one function.
    """

    name: str
    kind: WeightKind
    weight_bits: float  # nominal bits per weight (e.g. 4.5 for Q4_0 incl. scales is *not* used here: 4)
    group_size: int | None = None  # weights per scale; None for float types or per-channel
    activation_bits: int | None = None  # dynamic activation quantisation, None = float activations
    method: str = "round-to-nearest"
    description: str = ""

    @property
    def is_float(self) -> bool:
        return self.kind is WeightKind.FLOAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria of the teacher-forced parity check for one quantisation of one format."""

    min_top1: float
    max_mean_kl: float
    max_abs_logit: float | None = None  # only meaningful for float exports
    min_greedy_prefix: int = 0  # greedy tokens that must equal the reference before the first divergence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportPlan:
    """Everything that decides what an export produces.  Built through ``edgekit.export.make_plan``,
    which validates the combination against the family and exporter registries."""

    source: Path
    family: "Family"  # noqa: F821 - imported lazily to avoid a cycle
    target: Target
    quant: QuantSpec
    adapter: Path | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "adapter": str(self.adapter) if self.adapter else None,
            "family": self.family.value,
            "target": self.target.value,
            "quant": self.quant.to_dict(),
            "options": dict(self.options),
        }
