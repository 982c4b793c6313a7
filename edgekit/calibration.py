"""Calibration for low-bit quantisation: the calibration text and the importance statistics taken from it.

Format-neutral: each exporter hands ``Importance`` to its own quantiser in that library's native form (GGUF:
llama.cpp's importance matrix through ``llama_model_quantize_params.imatrix``).

- **Calibration text** (``--calibration FILE``; default ``edgekit/data/calibration.txt``: the standard library's
  ``contextlib.py``, ``queue.py`` and ``sched.py``, text of the built-in model's training distribution).  It
  must be UTF-8 text, at least ``MIN_TOKENS`` tokens long, and must share no run of ``OVERLAP_CHARS``
  characters (whitespace collapsed) with the held-out verification text (``edgekit/data/heldout.txt``): a
  quantiser tuned on the text that verifies it would grade its own homework.
- **Importance statistics**: for every ``nn.Linear`` of the PyTorch reference, the per-input-channel mean of the
  squared activation over all calibration tokens, E[x_j^2] — what llama.cpp's ``llama-imatrix`` collects
  (``in_sum2 / counts``, tools/imatrix/imatrix.cpp) and its quantisers use as per-column weights of the
  squared rounding error (ggml-quants.c, ``quantize_row_*_impl`` with ``quant_weights``).

This module imports only the standard library at import time (options are validated at plan time without
torch); torch and tokenizers are imported by the functions that need them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from .errors import UnsupportedError
from .plan import Options, QuantSpec, option

DEFAULT_NAME = "builtin:calibration.txt"
MIN_TOKENS = 1024  # two verification-size windows; llama.cpp's imatrix docs suggest far more for big models
MIN_CHARS = 2048  # checked at plan time, before a tokenizer is at hand (a token is >= 1 character)
OVERLAP_CHARS = 200
MAX_CONTROL = 0.01  # share of characters neither printable nor whitespace that a text file may hold
WINDOW = 512
BATCH = 8


class CalibrationError(UnsupportedError):
    """A calibration file that cannot be used (empty, too short, not text, or overlapping the verification text)."""


@dataclass(frozen=True)
class CalibrationText:
    """The calibration sample: ``source`` (a path, or ``DEFAULT_NAME``), its ``text`` and the sha256 of its bytes."""

    source: str
    text: str
    sha256: str

    def summary(self, tokens: int | None = None) -> dict[str, Any]:
        """The manifest's ``calibration`` entry."""
        d: dict[str, Any] = {"source": self.source, "sha256": self.sha256, "chars": len(self.text)}
        if tokens is not None:
            d["tokens"] = tokens
        return d


def default_text() -> str:
    return resources.files("edgekit").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def heldout_text() -> str:
    return resources.files("edgekit").joinpath("data/heldout.txt").read_text(encoding="utf-8")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def overlap(text: str, other: str, n: int = OVERLAP_CHARS) -> str | None:
    """The first run of ``n`` characters (whitespace collapsed) that ``text`` shares with ``other``, or None.
    Every ``n``-character window of ``other`` is hashed; ``text`` is scanned at stride 1."""
    a, b = _normalise(text), _normalise(other)
    if len(a) < n or len(b) < n:
        return None
    seen = {hash(b[i : i + n]) for i in range(len(b) - n + 1)}
    for i in range(len(a) - n + 1):
        piece = a[i : i + n]
        if hash(piece) in seen and piece in b:
            return piece
    return None


def load_text(path: str | Path | None) -> CalibrationText:
    """Read and check a calibration file (None: the built-in sample).  Raises ``CalibrationError`` (one line)
    for a missing, empty, non-UTF-8 or binary file (NUL bytes, or more than ``MAX_CONTROL`` control characters),
    one shorter than ``MIN_CHARS`` characters, or one that
    shares ``OVERLAP_CHARS`` characters with the verification text."""
    if path is None:
        text = default_text()
        return CalibrationText(DEFAULT_NAME, text, hashlib.sha256(text.encode("utf-8")).hexdigest())
    p = Path(path)
    if p.is_dir():
        raise CalibrationError(f"--calibration {p} is a directory; pass a UTF-8 text file")
    if not p.is_file():
        raise CalibrationError(f"--calibration {p}: no such file; pass a UTF-8 text file")
    raw = p.read_bytes()
    if not raw.strip():
        raise CalibrationError(f"--calibration {p} is empty; pass at least {MIN_TOKENS} tokens of text like the model's own")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"--calibration {p} is not UTF-8 text (byte {exc.start}); pass a text file") from None
    if "\x00" in text:
        raise CalibrationError(f"--calibration {p} contains NUL bytes, so it is not text; pass a text file")
    control = sum(1 for c in text if not (c.isprintable() or c.isspace()))
    if control > MAX_CONTROL * len(text):
        raise CalibrationError(f"--calibration {p} is {control / len(text):.0%} control characters, so it is not text "
                               f"(at most {MAX_CONTROL:.0%}); pass a text file")
    if len(text) < MIN_CHARS:
        raise CalibrationError(
            f"--calibration {p} has {len(text)} characters; at least {MIN_TOKENS} tokens (roughly {MIN_CHARS}+ "
            "characters) are needed"
        )
    shared = overlap(text, heldout_text())
    if shared is not None:
        raise CalibrationError(
            f"--calibration {p} overlaps the verification text (e.g. {shared[:60]!r}...); calibrate on other text, "
            "never on the text that verifies the export"
        )
    return CalibrationText(str(p), text, hashlib.sha256(raw).hexdigest())


def token_windows(text: str, tokenizer_json: Path, bos: int | None, window: int = WINDOW,
                  source: str | None = None) -> list[list[int]]:
    """The calibration text as windows of ``window`` tokens (each starting with ``bos`` where the model has one),
    as verification feeds the held-out text.  Raises ``CalibrationError`` below ``MIN_TOKENS`` tokens."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    if len(ids) < MIN_TOKENS:
        name = f"--calibration {source}" if source else "the calibration text"
        raise CalibrationError(f"{name} has {len(ids)} tokens under the model's tokenizer; at least "
                               f"{MIN_TOKENS} are needed: pass a longer text")
    body = window - (1 if bos is not None else 0)
    return [([bos] if bos is not None else []) + ids[s : s + body] for s in range(0, len(ids) - body // 4, body)]


@dataclass(frozen=True)
class Importance:
    """Per-input-channel mean squared activation of each linear layer.

    ``values``: module name (the reference's, e.g. ``model.layers.0.conv.in_proj``) -> float32 [in_features],
    E[x_j^2] over ``tokens`` calibration tokens.  ``text``: the sample they came from."""

    values: Mapping[str, Any]
    tokens: int
    text: CalibrationText

    def summary(self) -> dict[str, Any]:
        return {**self.text.summary(self.tokens), "statistic": "mean squared input activation per channel",
                "layers": len(self.values)}


def run_windows(model: Any, windows: Sequence[Sequence[int]], batch: int = BATCH) -> None:
    """Run ``model`` (a torch causal LM taking ``input_ids``) over every window, for its forward hooks: windows of
    equal length in batches of ``batch``, one call each (5x faster on CPU than one window at a time)."""
    import torch

    by_length: dict[int, list[list[int]]] = {}
    for w in windows:
        by_length.setdefault(len(w), []).append(list(w))
    with torch.inference_mode():
        for group in by_length.values():
            for k in range(0, len(group), batch):
                model(input_ids=torch.tensor(group[k : k + batch], dtype=torch.long))


def importance(model: Any, windows: Sequence[Sequence[int]], text: CalibrationText) -> Importance:
    """Run ``model`` (a float32 torch causal LM taking ``input_ids``) over each window and collect E[x^2] per
    input channel of every ``nn.Linear`` (LoRA A/B factors excluded; merged models have none)."""
    import numpy as np
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def collect(_module: Any, inputs: tuple, _output: Any) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return collect

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in f".{name}":
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        run_windows(model, windows)
    finally:
        for h in hooks:
            h.remove()
    values = {n: (sums[n] / counts[n]).float().numpy().astype(np.float32) for n in sums}
    return Importance(values, int(sum(len(w) for w in windows)), text)


def checkpoint_windows(path: str | Path | None, checkpoint: Any) -> tuple[CalibrationText, list[list[int]]]:
    """The calibration text at ``path`` (None: the built-in sample; checked by ``load_text``) and its token windows
    (``token_windows`` with ``checkpoint``'s tokenizer and BOS)."""
    text = load_text(path)
    bos = getattr(checkpoint.model_config, "bos_token_id", None)
    return text, token_windows(text.text, checkpoint.path / "tokenizer.json", bos, source=text.source)


def job_windows(job: Any) -> tuple[CalibrationText, list[list[int]]]:
    """An export job's calibration text (``job.plan.options.calibration``) and its token windows."""
    return checkpoint_windows(job.plan.options.calibration, job.checkpoint)


def for_job(job: Any) -> Importance:
    """The importance statistics of an export job's reference over its calibration text (``job.plan.options
    .calibration``), computed once per job and kept on the reference model."""
    cached = getattr(job.reference, "edgekit_importance", None)
    if cached is not None:
        return cached
    text, windows = job_windows(job)
    job.progress(f"calibration: importance statistics over {text.source}")
    result = importance(job.reference, windows, text)
    job.reference.edgekit_importance = result
    return result


@dataclass(frozen=True)
class CalibrationOptions(Options):
    """Mixin of a format's options: ``--calibration FILE`` and ``--no-calibration``.  ``CALIBRATED`` names the
    quants whose exporter uses calibration (by default, unless ``--no-calibration``)."""

    CALIBRATED: ClassVar[tuple[str, ...]] = ()

    calibration: str | None = option(None, "calibrated quants (GGUF q4_0, q4_k_m, q5_k_m; ExecuTorch 8da4w; ONNX "
                                           "int4): UTF-8 text for the importance statistics, the sensitivity "
                                           "scan and GPTQ's Hessians, >= 1024 tokens, sharing nothing with the "
                                           "verification text (default: edgekit's built-in sample); ExecuTorch's "
                                           "verify reads it again, so keep it where it is")
    no_calibration: bool = option(False, "calibrated quants: plain round-to-nearest, no calibration, no scan")

    @classmethod
    def inapplicable(cls, quants: Iterable[str]) -> frozenset[str]:
        quants = tuple(quants)
        out = super().inapplicable(quants)
        return out if set(quants) & set(cls.CALIBRATED) else out | {"calibration", "no_calibration"}

    def __post_init__(self) -> None:
        # recorded in the manifest's plan: verification (GPTQ's re-derived codes, a program's rebuild) reads the
        # text again, from wherever it runs
        if self.calibration is not None and not Path(self.calibration).is_absolute():
            object.__setattr__(self, "calibration", str(Path(self.calibration).resolve()))

    def calibrates(self, quant: QuantSpec) -> bool:
        return quant.name in self.CALIBRATED and not self.no_calibration

    def check_calibration(self, quant: QuantSpec, given: set[str]) -> None:
        flags = sorted(k for k in ("calibration", "no_calibration") if k in given and getattr(self, k))
        if flags and quant.name not in self.CALIBRATED:
            names = ", ".join(self.CALIBRATED) or "none"
            raise UnsupportedError(
                f"{self.FORMAT_NAME} {', '.join('--' + f.replace('_', '-') for f in flags)} "
                f"{'apply' if len(flags) > 1 else 'applies'} to calibrated quants "
                f"({names}) only, not {quant.name}"
            )
        if self.calibration is not None and self.no_calibration:
            raise UnsupportedError(f"{self.FORMAT_NAME}: pass --calibration FILE or --no-calibration, not both")
        if self.calibration is not None:
            load_text(self.calibration)
