"""The model-kind layer: what a language model and a solver each mean for verification, golden outputs, the
manifest's ``model``/``io`` sections and the session a bundle opens as.

One explicit table, ``KINDS``, maps each ``ModelKind`` to the module implementing it.  Every kind module exposes
the same names: ``Thresholds`` (a frozen value with ``check(metrics) -> failures``), ``metadata(checkpoint)``
and ``io(checkpoint)`` (manifest sections), ``bundle_files(checkpoint)`` (files copied into the bundle beside
the artifact), ``verify(session, reference, root, thresholds, progress) -> Report``, and ``write_golden`` /
``compare_golden`` for on-device checks.  Kind modules import numpy at most at the top; torch only inside the
functions that run the reference.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Mapping

from ..families import ModelKind

KINDS: Mapping[ModelKind, str] = {
    ModelKind.LANGUAGE: "edgekit.kinds.language",
    ModelKind.SOLVER: "edgekit.kinds.solver",
}


def behaviour(kind: ModelKind | str) -> ModuleType:
    """The module implementing ``kind``."""
    return importlib.import_module(KINDS[ModelKind(kind)])


@dataclass(frozen=True)
class Report:
    """A verification result: metrics, the thresholds they were held to, failures, and the rows of its table."""

    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (metric, measured, threshold)
    summary: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("rows")
        return {**d, "passed": self.passed}

    def table(self) -> str:
        w = max([26] + [len(a) for a, _, _ in self.rows])
        lines = [f"{'metric':<{w}} {'measured':>14}  {'threshold'}"]
        lines += [f"{a:<{w}} {b:>14}  {c}".rstrip() for a, b, c in self.rows]
        lines.append(f"{self.summary}: {'PASS' if self.passed else 'FAIL'}")
        lines += [f"  - {f}" for f in self.failures]  # what failed, in words: a table alone does not say
        return "\n".join(lines)


@dataclass(frozen=True)
class DeviceCheck:
    """Verification metrics measured on a device against golden outputs, and the failures."""

    metrics: Mapping[str, Any]
    thresholds: Mapping[str, Any]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def tensor_check_rows(m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The verify table's tensor-check rows of a report's metrics (``m["tensor_check"]``, None: no read-back):
    the verdict, then per type the worst relative RMS error and block error in quantisation steps."""
    tc = m.get("tensor_check")
    if tc is None:
        return [("tensor check", "n/a", "no read-back")]
    rows = [("tensor check", f"{tc['tensors']} tensors", "PASS" if tc["passed"] else "FAIL")]
    return rows + [(f"  {t}", f"{w['rel_rms']:.1e}" + (f" {w['block_steps']:.2f}st" if w["block_steps"] else ""),
                    "rel RMS, block") for t, w in sorted(tc["worst"].items())]
