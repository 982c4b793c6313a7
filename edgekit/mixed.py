"""Mixed precision under a byte budget: a sensitivity scan and the choice of a type per tensor.

Format-neutral.  Each exporter supplies (a) the candidate types of each weight matrix with their stored bytes
and (b) ``fake(name, weight, type) -> weight`` that quantises and dequantises one tensor with the format
library's own quantiser (GGUF: ggml's ``ggml_quantize_chunk`` + gguf-py's ``dequantize``; ExecuTorch: torchao's
config on that one linear); this module measures, on the calibration text, the KL cost of each tensor alone at
each type (PyTorch reference, every other tensor float) and picks the types that minimise the summed cost
within the budget.

- **Scan**: cost(tensor, type) = mean over calibration tokens of KL(reference || reference with that one tensor
  quantised).  Costs are assumed additive across tensors (a first-order approximation the bench measures).
  ``SCAN_METHOD = "estimate"`` (the default) runs one forward pass per tensor, at its cheapest type, and carries
  that cost to the other types by the second-order expansion of the KL: for a linear layer, KL grows with the
  output error, whose expected square is sum_j E[x_j^2] * sum_i dW_ij^2 (input channels' mean squared activation,
  gathered in the reference pass: the importance matrix), so cost(type) = cost(cheapest) * that error at type /
  that error at cheapest.  ``"exact"`` measures every type (4-6 forward passes per tensor instead of one;
  bench/RESULTS.md compares what each picks).  Tensors that are not a linear layer's weight (an embedding table)
  are always measured exactly.
- **Selection**: a multiple-choice knapsack solved greedily: every tensor starts at its cheapest type, then the
  upgrade with the largest cost saved per extra byte (on each tensor's lower convex hull) is taken while the
  budget allows.
- **Budget** (``--byte-budget``): bytes per weight of the weight matrices (``0.5625``), or their total in MB
  (``3.9MB``); default: what the format's default assignment of this quant stores.  A budget below every
  matrix at the cheapest type is refused with that minimum.

Imports only the standard library at import time; torch and numpy are imported by the functions that need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from .errors import UnsupportedError
from .plan import Options, QuantSpec, option

# calibration tokens per measurement: on the built-in model 256, 512, 1,024 and 2,048 tokens picked the same
# Q4_K_M types, and Q4_0's at 512 measured as well as at 2,048 (bench/RESULTS.md); the scan's time is linear in it
SCAN_TOKENS = 512
SCAN_METHOD = "estimate"  # or "exact": every type of every tensor measured (module docstring)


class BudgetError(UnsupportedError):
    """A byte budget that cannot be parsed or that the quant cannot meet."""


@dataclass(frozen=True)
class Budget:
    """``bytes_per_weight`` or ``total_mb`` (one is None); ``text`` as given."""

    text: str
    bytes_per_weight: float | None = None
    total_mb: float | None = None

    def bytes_for(self, weights: int) -> float:
        if self.bytes_per_weight is not None:
            return self.bytes_per_weight * weights
        return float(self.total_mb) * 1e6  # type: ignore[arg-type]


def parse_budget(text: str) -> Budget:
    """``"0.5625"`` (bytes per weight) or ``"3.9MB"`` (MB of weight matrices).  Raises ``BudgetError``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(mb|MB|Mb)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise BudgetError(f"--byte-budget {text!r}: give bytes per weight (e.g. 0.57) or megabytes (e.g. 3.9MB)")
    value = float(m.group(1))
    if m.group(2):
        return Budget(str(text), total_mb=value)
    if value > 8:
        raise BudgetError(f"--byte-budget {text}: {value} bytes per weight is more than float64; for megabytes write {value}MB")
    return Budget(str(text), bytes_per_weight=value)


@dataclass(frozen=True)
class Candidate:
    """One tensor's options: reference parameter ``name``, ``numel`` and type -> stored bytes (cheapest first).
    ``group``: further reference parameters the file stores fused with ``name`` in one matrix of one type (ONNX's
    q|k|v projection); the scan quantises them together, and ``numel`` / ``sizes`` count them all."""

    name: str
    numel: int
    sizes: Mapping[str, int]
    group: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The outcome: tensor -> type, the scan's costs (tensor -> type -> KL), bytes used, weights, budget."""

    types: Mapping[str, str]
    costs: Mapping[str, Mapping[str, float]]
    used_bytes: int
    weights: int
    budget_bytes: float
    default_bytes: int
    scan_method: str = "exact"

    def summary(self, budget_text: str, method: str) -> dict[str, Any]:
        return {
            "method": method,
            "statistic": "mean KL(reference || one tensor quantised) over calibration tokens",
            "scan": self.scan_method,
            "budget": budget_text,
            "budget_bytes_per_weight": round(self.budget_bytes / self.weights, 5),
            "bytes_per_weight": round(self.used_bytes / self.weights, 5),
            "default_bytes_per_weight": round(self.default_bytes / self.weights, 5),
            "tensor_types": dict(self.types),
            "scan_kl": {n: {t: float(f"{c:.3e}") for t, c in tc.items()} for n, tc in self.costs.items()},
        }


def scan_windows(windows: Sequence[Sequence[int]], tokens: int | None = None) -> list[list[int]]:
    """The first windows holding at least ``tokens`` (default ``SCAN_TOKENS``) calibration tokens."""
    tokens = SCAN_TOKENS if tokens is None else tokens
    out: list[list[int]] = []
    for w in windows:
        if sum(len(x) for x in out) >= tokens:
            break
        out.append(list(w))
    return out


def scan(
    model: Any,
    windows: Sequence[Sequence[int]],
    candidates: Sequence[Candidate],
    fake: Callable[[str, Any, str], Any],
    progress: Callable[[str], None] = lambda _m: None,
    method: str | None = None,
) -> dict[str, dict[str, float]]:
    """KL cost (nats/token) of each candidate tensor alone at each of its types.  ``model``: float32 torch causal
    LM taking ``input_ids``; ``fake(name, weight float32 numpy, type) -> float32 numpy`` of the same shape;
    ``method``: ``"estimate"`` or ``"exact"`` (default ``SCAN_METHOD``; module docstring).  Tied parameters (one
    tensor, two names) are quantised together, as a format storing them once does."""
    import numpy as np
    import torch

    method = SCAN_METHOD if method is None else method
    if method not in ("estimate", "exact"):
        raise ValueError(f"scan method {method!r}: 'estimate' or 'exact'")
    params = dict(model.named_parameters(remove_duplicate=False))
    batch = torch.tensor([list(w) for w in windows if len(w) == len(windows[0])], dtype=torch.long)

    def logprobs() -> torch.Tensor:
        with torch.inference_mode():
            out = model(input_ids=batch)
            return torch.log_softmax((out.logits if hasattr(out, "logits") else out).double(), -1)

    power = _input_power(model, [n for c in candidates for n in (c.name, *c.group)]) if method == "estimate" else {}
    try:
        base = logprobs()
    finally:
        for hook in power.pop("_hooks", []):
            hook.remove()
    p = base.exp()
    costs: dict[str, dict[str, float]] = {}
    for k, c in enumerate(candidates):
        progress(f"sensitivity scan: {c.name} ({k + 1}/{len(candidates)})")
        members = (c.name, *c.group)
        originals = {n: params[n].detach().clone() for n in members}
        ws = {n: o.numpy().astype(np.float32) for n, o in originals.items()}
        quantised = {t: {n: fake(n, ws[n], t) for n in members} for t in c.sizes}
        estimated = all(n in power for n in members)
        measured = list(c.sizes)[:1] if estimated else list(c.sizes)
        costs[c.name] = {}
        try:
            for t in measured:
                with torch.no_grad():
                    for n in members:
                        params[n].copy_(torch.from_numpy(np.ascontiguousarray(quantised[t][n], dtype=np.float32)))
                costs[c.name][t] = max((p * (base - logprobs())).sum(-1).mean().item(), 0.0)
        finally:
            with torch.no_grad():
                for n in members:
                    params[n].copy_(originals[n])
        if estimated:
            err = {t: sum(float(np.sum(((ws[n] - q[n]).astype(np.float64) ** 2).sum(0) * power[n])) for n in members)
                   for t, q in quantised.items()}
            first = measured[0]
            scale = costs[c.name][first] / err[first] if err[first] > 0 else 0.0
            costs[c.name].update({t: scale * e for t, e in err.items() if t != first})
    return costs


def _input_power(model: Any, names: Sequence[str]) -> dict[str, Any]:
    """Forward hooks that gather, for each candidate that is a ``torch.nn.Linear``'s ``weight``, the mean squared
    input activation per input channel (float64 numpy [in], filled by the next forward pass); the hooks under
    ``"_hooks"`` (the caller removes them)."""
    import numpy as np
    import torch

    out: dict[str, Any] = {"_hooks": []}
    for name in names:
        if not name.endswith(".weight"):
            continue
        try:
            module = model.get_submodule(name[: -len(".weight")])
        except AttributeError:
            continue
        if not isinstance(module, torch.nn.Linear):
            continue
        out[name] = np.zeros(module.in_features)

        def hook(_mod: Any, args: tuple[Any, ...], _out: Any, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            out[name] += (x * x).mean(0).numpy()

        out["_hooks"].append(module.register_forward_hook(hook))
    return out


def select(candidates: Sequence[Candidate], costs: Mapping[str, Mapping[str, float]], budget_bytes: float) -> dict[str, str]:
    """Types minimising the summed cost with total bytes <= ``budget_bytes`` (greedy on each tensor's lower
    convex hull of (bytes, cost)).  Raises ``BudgetError`` when even the cheapest types exceed the budget."""
    floor = sum(min(c.sizes.values()) for c in candidates)
    weights = sum(c.numel for c in candidates)
    if floor > budget_bytes:
        raise BudgetError(
            f"--byte-budget allows {budget_bytes / weights:.4f} bytes per weight ({budget_bytes / 1e6:.3f} MB) but "
            f"this quant needs at least {floor / weights:.4f} ({floor / 1e6:.3f} MB); raise it or pick a smaller quant"
        )
    hulls: dict[str, list[tuple[int, float, str]]] = {}
    for c in candidates:
        pts = sorted((c.sizes[t], costs[c.name][t], t) for t in c.sizes)
        hull: list[tuple[int, float, str]] = []
        for pt in pts:
            if hull and pt[1] >= hull[-1][1]:
                continue  # more bytes, no less cost: never worth it
            while len(hull) >= 2:
                (b0, c0, _), (b1, c1, _) = hull[-2], hull[-1]
                if (c0 - c1) * (pt[0] - b0) <= (c0 - pt[1]) * (b1 - b0):
                    hull.pop()  # the middle point gives less per byte than going straight on
                else:
                    break
            hull.append(pt)
        hulls[c.name] = hull
    step = {n: 0 for n in hulls}
    used = float(floor)
    while True:
        best, best_gain = None, 0.0
        for n, hull in hulls.items():
            i = step[n]
            if i + 1 < len(hull):
                extra = hull[i + 1][0] - hull[i][0]
                gain = (hull[i][1] - hull[i + 1][1]) / max(extra, 1)
                if used + extra <= budget_bytes and gain > best_gain:
                    best, best_gain = n, gain
        if best is None:
            break
        i = step[best]
        used += hulls[best][i + 1][0] - hulls[best][i][0]
        step[best] = i + 1
    return {n: hulls[n][step[n]][2] for n in hulls}


def plan(
    model: Any,
    windows: Sequence[Sequence[int]],
    candidates: Sequence[Candidate],
    defaults: Mapping[str, str],
    fake: Callable[[str, Any, str], Any],
    budget: Budget | None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Plan:
    """Scan + selection.  ``defaults``: tensor -> the type the format's default assignment gives it (its bytes
    are the default budget)."""
    weights = sum(c.numel for c in candidates)
    default_bytes = sum(c.sizes[defaults[c.name]] for c in candidates)
    budget_bytes = budget.bytes_for(weights) if budget is not None else float(default_bytes)
    floor = sum(min(c.sizes.values()) for c in candidates)
    if floor > budget_bytes:
        select(candidates, {}, budget_bytes)  # raises with the minimum
    method = SCAN_METHOD
    costs = scan(model, scan_windows(windows), candidates, fake, progress, method)
    types = select(candidates, costs, budget_bytes)
    used = sum(c.sizes[types[c.name]] for c in candidates)
    return Plan(types, costs, used, weights, budget_bytes, default_bytes, method)


@dataclass(frozen=True)
class JobPlan:
    """A mixed-precision plan for one export job, in the file's own tensor names.

    ``types``: file tensor name -> chosen type; ``summary``: the manifest's ``artifact.mixed_precision`` entry
    (``Plan.summary`` + ``calibration_sha256``); ``calibration``: the manifest's ``calibration`` entry."""

    types: dict[str, str]
    summary: dict[str, Any]
    calibration: dict[str, Any]


def plan_job(
    job: Any,
    candidates: Sequence[Candidate],
    defaults: Mapping[str, str],
    fake: Callable[[str, Any, str], Any],
    method: str,
    file_names: Mapping[str, str] | None = None,
) -> JobPlan:
    """``plan`` on an export job: its reference, its calibration text (``calibration.job_windows``), its options'
    byte budget and progress.  ``file_names`` maps a candidate's (reference) name to the tensor's name in the file
    where they differ; ``method`` names the format's quantise/dequantise and how the types are applied.  Raises
    ``CalibrationError`` for a bad calibration file and ``UnsupportedError`` for a budget below the minimum."""
    from . import calibration

    options = job.plan.options
    text, windows = calibration.job_windows(job)
    result = plan(job.reference, windows, candidates, defaults, fake, options.budget(), job.progress)
    rename = dict(file_names or {})
    types = {rename.get(n, n): t for n, t in result.types.items()}
    summary = result.summary(options.byte_budget or "default", method)
    summary["tensor_types"] = types
    summary["scan_kl"] = {rename.get(n, n): v for n, v in summary["scan_kl"].items()}
    summary["calibration_sha256"] = text.sha256
    return JobPlan(types, summary, {**text.summary(sum(map(len, windows))),
                                    "method": "mixed-precision sensitivity scan (edgekit.mixed)"})


@dataclass(frozen=True)
class MixedOptions(Options):
    """Mixin of a format's options: ``--mixed-precision`` and ``--byte-budget``.  ``MIXED`` names the quants
    that have a mixed-precision assignment; ``MIXED_DEFAULT`` those that use it unless ``--mixed-precision
    false``."""

    MIXED: ClassVar[tuple[str, ...]] = ()
    MIXED_DEFAULT: ClassVar[tuple[str, ...]] = ()

    mixed_precision: bool | None = option(None, "mixed quants (true/false): keep the tensors a sensitivity scan "
                                                "on the calibration text finds most sensitive at higher "
                                                "precision, within --byte-budget")
    byte_budget: str | None = option(None, "mixed precision: bytes per weight of the weight matrices (e.g. 0.57) "
                                           "or their total in MB (e.g. 3.9MB); default: what the quant's default "
                                           "assignment stores")

    @classmethod
    def inapplicable(cls, quants: Iterable[str]) -> frozenset[str]:
        quants = tuple(quants)
        out = super().inapplicable(quants)
        return out if set(quants) & set(cls.MIXED) else out | {"mixed_precision", "byte_budget"}

    def mixes(self, quant: QuantSpec) -> bool:
        if quant.name not in self.MIXED:
            return False
        if self.mixed_precision is None:  # the scan reads the calibration text: --no-calibration is plain RTN
            return self.byte_budget is not None or (
                quant.name in self.MIXED_DEFAULT and not getattr(self, "no_calibration", False))
        return bool(self.mixed_precision)

    def budget(self) -> Budget | None:
        return parse_budget(self.byte_budget) if self.byte_budget is not None else None

    def check_mixed(self, quant: QuantSpec, given: set[str]) -> None:
        flags = sorted(k for k in ("mixed_precision", "byte_budget") if k in given and getattr(self, k) not in (None, False))
        if flags and quant.name not in self.MIXED:
            raise UnsupportedError(
                f"{self.FORMAT_NAME} {', '.join('--' + f.replace('_', '-') for f in flags)}: mixed precision "
                f"applies to {', '.join(self.MIXED) or 'no quant'} only, not {quant.name}"
            )
        if getattr(self, "no_calibration", False) and self.mixes(quant):
            raise UnsupportedError(f"{self.FORMAT_NAME} --no-calibration: the mixed-precision scan reads the "
                                   "calibration text; drop --mixed-precision / --byte-budget for plain "
                                   "round-to-nearest")
        if self.byte_budget is not None:
            if self.mixed_precision is False:
                raise UnsupportedError(f"{self.FORMAT_NAME}: --byte-budget needs mixed precision; drop --mixed-precision false")
            parse_budget(self.byte_budget)
