"""Typed, immutable values that describe an export: formats, quantisation specs, options and the export plan.

Strings such as ``q4_k_m`` or ``--group-size 64`` are parsed into these values at the CLI, API and manifest edges
only; exporter code receives the frozen values.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from .errors import UnsupportedError


class Format(str, enum.Enum):
    """An export format (the CLI's ``--format``, the manifest's ``format``)."""

    GGUF = "gguf"
    EXECUTORCH = "executorch"
    ONNX = "onnx"

    @classmethod
    def parse(cls, name: "str | Format") -> "Format":
        if isinstance(name, Format):
            return name
        try:
            return cls(str(name).strip().lower())
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise UnsupportedError(f"unknown format {name!r}; known formats: {known}") from None


class WeightKind(str, enum.Enum):
    FLOAT = "float"  # stored as a float type (f32/f16/bf16)
    INT = "int"  # integer codes with scales (block / group / channel)


@dataclass(frozen=True)
class QuantSpec:
    """A weight (and optionally activation) quantisation, independent of any format's naming.

    ``name`` is the user-facing name in the format's own vocabulary (llama.cpp's for GGUF, torchao's for
    ExecuTorch); each exporter translates the spec to its native form in exactly one function.
    """

    name: str
    kind: WeightKind
    weight_bits: float  # nominal bits per weight, scales not counted (Q4_0: 4; TQ1_0: 1.58)
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


def pick(quants: Mapping[str, QuantSpec], *names: str) -> dict[str, QuantSpec]:
    """The named subset of a format's quantisations, in the given order (a recipe offers the ones its family can
    use; the first listed is what ``edgekit formats`` shows first)."""
    return {n: quants[n] for n in names}


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A field of an ``Options`` dataclass: its default, CLI help text and (optionally) its valid values."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Options:
    """Base of every recipe's typed options: a frozen dataclass whose fields are the options (``option(...)``).

    ``parse`` builds it from raw values (CLI strings or API values), converting each to the field's type and
    checking its ``choices``; a subclass's ``validate(quant)`` checks combinations.  Unknown names are refused
    with the list of valid ones.  The CLI's flags are generated from these fields.
    """

    FORMAT_NAME: ClassVar[str] = "export"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], quant: QuantSpec) -> "Options":
        names = {f.name: f for f in dataclasses.fields(cls)}
        given = {k: v for k, v in raw.items() if v is not None}
        unknown = sorted(set(given) - set(names))
        if unknown:
            flags = ", ".join("--" + n.replace("_", "-") for n in names) or "none"
            raise UnsupportedError(
                f"{cls.FORMAT_NAME} export has no option {', '.join('--' + u.replace('_', '-') for u in unknown)}; "
                f"its options: {flags}"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _convert(cls.FORMAT_NAME, names[k], hints[k], v) for k, v in given.items()}
        opts = cls(**values)
        opts.validate(quant, set(given))
        return opts

    def validate(self, quant: QuantSpec, given: set[str]) -> None:
        """Combination checks of a subclass; ``given`` names the options the user set explicitly."""

    def thresholds(self, base: Any) -> Any:
        """The recipe's thresholds ``base`` for an export with these options: unchanged unless an option changes
        what the engine can match (BitNet a4.8)."""
        return base

    @classmethod
    def inapplicable(cls, quants: Iterable[str]) -> frozenset[str]:
        """Fields that ``validate`` refuses for every one of ``quants`` (a row's quants): listing them as the
        row's flags (``edgekit formats``) would offer what always fails. A mixin extends it with ``super()``."""
        return frozenset()

    @classmethod
    def flags(cls, quants: Iterable[str]) -> list[str]:
        """The option names a row with ``quants`` offers: every field but the inapplicable ones."""
        drop = cls.inapplicable(tuple(quants))
        return [f.name for f in dataclasses.fields(cls) if f.name not in drop]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Options":
        """Options as a manifest recorded them (already validated at export; unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _convert(fmt: str, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    flag = "--" + f.name.replace("_", "-")
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    base = allowed[0] if allowed else str
    try:
        if base is bool:
            out = _boolean(value)
        elif base is int and isinstance(value, float) and value != int(value):
            raise ValueError(value)
        else:
            out = base(value)
    except (TypeError, ValueError):
        raise UnsupportedError(f"{fmt} {flag} {value!r} is not valid: expected {base.__name__}") from None
    if isinstance(out, str):
        out = out.strip().lower()
    choices = f.metadata.get("choices")
    if choices is not None and out not in choices:
        raise UnsupportedError(f"{fmt} {flag} {value!r} is not valid; valid: {', '.join(map(str, choices))}")
    return out


def _boolean(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


@dataclass(frozen=True)
class NoOptions(Options):
    """A recipe without options."""


@dataclass(frozen=True)
class ExportPlan:
    """Everything that decides what an export produces.  Built by ``edgekit.export.make_plan``, which validates
    the combination against the recipe table."""

    source: Path
    family: Any  # edgekit.families.Family (imported lazily to keep this module free of the registry)
    format: Format
    quant: QuantSpec
    options: Options
    adapter: Path | None = None  # merged into the base
    adapters: tuple[tuple[str, Path], ...] = ()  # (name, directory) kept separate (--lora-mode separate)
    allow_extra_tensors: bool = False  # unused checkpoint tensors proven harmless to drop were accepted

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "adapter": str(self.adapter) if self.adapter else None,
            **({"allow_extra_tensors": True} if self.allow_extra_tensors else {}),
            **({"adapters": {n: str(p) for n, p in self.adapters}} if self.adapters else {}),
            "family": self.family.value,
            "format": self.format.value,
            "quant": self.quant.to_dict(),
            "options": self.options.to_dict(),
        }
