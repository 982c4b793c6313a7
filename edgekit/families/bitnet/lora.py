"""Merging a PEFT LoRA adapter into a BitNet b1.58 model, and measuring what the merge costs.

A LoRA update ``scaling * B @ A`` is a dense float matrix: added to ternary weights the result is no longer
ternary.  The honest merge is the one BitNet training itself would do: add the update to the float *master*
weights and re-ternarise with the absmean rule (arXiv 2402.17764, eqs. 1-3).  That changes codes and scales, so
the merged model differs from the base + adapter model the user trained; ``merge_error`` measures by how much
(mean KL and top-1 agreement over a token sequence, teacher-forced), for the manifest.

PEFT's scaling (``peft/tuners/lora/layer.py``, ``update_layer``): ``lora_alpha / r``, or ``lora_alpha / sqrt(r)``
with ``use_rslora`` (Kalajdzievski, arXiv 2312.03732); ``rank_pattern`` / ``alpha_pattern`` override r and alpha per
module, matched as peft's ``get_pattern_key`` does (the key is a regex matched against the end of the module name).

Packed checkpoints have no master weights.  Their stand-in is ``weights.faithful_master`` (codes * scale / p,
p = non-zero fraction): the float matrix whose absmean ternarisation is exactly the packed model, so a zero adapter
merges to the unchanged model (``codes * scale`` would not: its absmean is scale * p, shrinking every scale).  Even
so, re-ternarising discards most of a small update, so merging into a packed-only checkpoint is refused unless the
caller accepts it explicitly (``accept_reternarisation``, the CLI's ``--accept-reternarisation``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import AdapterError
from .weights import BitNetWeights, _read_safetensors, faithful_master, ternarize

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ACCEPT_FLAG = "--accept-reternarisation"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraUpdate:
    """One adapted projection: ``delta = scaling * B @ A`` (A: float32 [r, in], B: float32 [out, r])."""

    a: np.ndarray
    b: np.ndarray
    scaling: float

    def delta(self) -> np.ndarray:
        """float32 [out, in]."""
        return (np.float32(self.scaling) * (self.b @ self.a)).astype(np.float32)


@dataclass(frozen=True)
class MergeReport:
    """Merged (re-ternarised) model vs the unmerged base + adapter model, teacher-forced over ``tokens`` positions.

    ``mean_kl``: mean over positions of KL(unmerged || merged) of the next-token distributions, nats.
    ``top1``: fraction of positions whose argmax agrees.  ``max_abs_logit``: largest |logit difference|.
    ``codes_changed``: fraction of ternary codes the merge changed; ``reternarised_from``: "master" or "packed".
    """

    mean_kl: float
    top1: float
    max_abs_logit: float
    tokens: int
    codes_changed: float
    reternarised_from: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first pattern that matches the end of ``module`` (as a regex) wins."""
    for pattern, value in patterns.items():
        if module == pattern or re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def read_adapter(adapter_dir: str | Path, weights: BitNetWeights) -> dict[str, LoraUpdate]:
    """Read a PEFT LoRA directory for ``weights``: ternary weight name -> LoraUpdate.

    Raises AdapterError (one line) for a missing/invalid file, a non-LoRA or DoRA adapter, ``fan_in_fan_out``, a
    module that is not a ternary projection of the model, or shapes that do not fit.
    """
    root = Path(adapter_dir)
    cfg_path, w_path = root / ADAPTER_CONFIG, root / ADAPTER_WEIGHTS
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{cfg_path}: {ADAPTER_CONFIG} is missing (expected a PEFT adapter directory)") from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{cfg_path}: not valid JSON ({exc})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{root}: peft_type {cfg.get('peft_type')!r} is not supported; only LORA adapters merge")
    if cfg.get("use_dora"):
        raise AdapterError(f"{root}: DoRA adapters are not supported; train a plain LoRA (use_dora=False)")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError(f"{root}: fan_in_fan_out=true is for Conv1D layers; BitNet projections are Linear")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{root}: modules_to_save {cfg['modules_to_save']} is not supported; only LoRA layers merge")
    try:
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise AdapterError(f"{cfg_path}: needs integer 'r' and numeric 'lora_alpha'") from None
    rslora = bool(cfg.get("use_rslora", False))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    if not w_path.is_file():
        raise AdapterError(f"{root}: {ADAPTER_WEIGHTS} is missing (save the adapter with safe_serialization=True)")
    try:
        raw = _read_safetensors(w_path)
    except Exception as exc:  # CheckpointError from the reader: reword as an adapter problem
        raise AdapterError(str(exc)) from None
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in raw.items():
        m = _KEY.match(key)
        if not m:
            raise AdapterError(f"{w_path}: unexpected tensor {key!r}; only lora_A / lora_B weights can be merged")
        parts.setdefault(m["module"], {})[m["ab"]] = np.asarray(arr, dtype=np.float32)
    if not parts:
        raise AdapterError(f"{w_path}: holds no LoRA tensors")
    updates: dict[str, LoraUpdate] = {}
    for module, ab in sorted(parts.items()):
        name = f"{module}.weight"
        if name not in weights.ternary:
            raise AdapterError(
                f"{root}: adapter targets {module!r}, which is not a ternary projection of this BitNet model "
                "(LoRA may target q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
            )
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{root}: {module} lacks lora_{'B' if 'A' in ab else 'A'}")
        a, b = ab["A"], ab["B"]
        out_f, in_f = weights.ternary[name].shape
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{root}: {module}: LoRA shapes A{list(a.shape)} B{list(b.shape)} do not fit the base weight "
                f"[{out_f}, {in_f}]; the adapter was trained for another base model"
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise AdapterError(f"{root}: {module}: LoRA weights hold NaN or Inf")
        rank = int(_pattern_value(rank_pattern, module, r))
        alpha_m = float(_pattern_value(alpha_pattern, module, alpha))
        if rank != a.shape[0]:
            raise AdapterError(f"{root}: {module}: rank {rank} from the config but lora_A has {a.shape[0]} rows")
        scaling = alpha_m / math.sqrt(rank) if rslora else alpha_m / rank
        updates[name] = LoraUpdate(a=a, b=b, scaling=scaling)
    return updates


def merge(
    weights: BitNetWeights, updates: Mapping[str, LoraUpdate], *, accept_reternarisation: bool = False
) -> BitNetWeights:
    """Merge on the master weights and re-ternarise (absmean): returns master-layout weights.

    ``weights``: the base model (any layout).  Packed/unpacked bases have no master weights: refused with an
    AdapterError naming ``--accept-reternarisation`` unless ``accept_reternarisation`` is true, in which case their
    ``faithful_master`` stands in.
    """
    if weights.master is None and not accept_reternarisation:
        raise AdapterError(
            f"merging a LoRA into a {weights.layout}-only BitNet checkpoint re-ternarises the merged weights from "
            f"their codes (no master weights exist), which loses most of the adapter; pass {ACCEPT_FLAG} "
            "(accept_reternarisation=True) to accept that error (it is measured and reported), or export from the "
            "bf16/fp32 master-weight checkpoint"
        )
    ternary = dict(weights.ternary)
    master: dict[str, np.ndarray] = {}
    for name, t in weights.ternary.items():
        base = weights.master[name] if weights.master is not None else faithful_master(t)
        if name in updates:
            base = base + updates[name].delta()
            ternary[name] = ternarize(base, name)
        master[name] = base
    return replace(weights, layout="master", ternary=ternary, master=master)


def _reference(weights: BitNetWeights, updates: Mapping[str, LoraUpdate] | None = None) -> Any:
    from .reference import BitNetReference, LoraDelta

    deltas = {k: LoraDelta(a=u.a, b=u.b, scaling=u.scaling) for k, u in (updates or {}).items()}
    return BitNetReference(weights, lora=deltas).eval()


def merge_error(
    base: BitNetWeights, updates: Mapping[str, LoraUpdate], merged: BitNetWeights, tokens: Sequence[int]
) -> MergeReport:
    """The error of the re-ternarised merged model against the unmerged base + adapter model (W1.58A8 base,
    float LoRA branch on the unquantised input, as peft runs it), teacher-forced over ``tokens`` (1-D ids)."""
    import torch

    ids = torch.tensor([list(tokens)], dtype=torch.long)
    with torch.inference_mode():
        want = _reference(base, updates)(ids).logits[0].double()
        got = _reference(merged)(ids).logits[0].double()
    logp, logq = torch.log_softmax(want, -1), torch.log_softmax(got, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    changed = sum(int(np.count_nonzero(merged.ternary[n].codes != base.ternary[n].codes)) for n in updates)
    total = sum(base.ternary[n].codes.size for n in updates) or 1
    return MergeReport(
        mean_kl=float(kl.mean()),
        top1=float((want.argmax(-1) == got.argmax(-1)).double().mean()),
        max_abs_logit=float((want - got).abs().max()),
        tokens=len(tokens),
        codes_changed=changed / total,
        reternarised_from="master" if base.master is not None else base.layout,
    )


def merge_adapter(
    weights: BitNetWeights,
    adapter_dir: str | Path,
    tokens: Sequence[int] | None = None,
    *,
    accept_reternarisation: bool = False,
) -> tuple[BitNetWeights, MergeReport | None]:
    """Read, merge and (when ``tokens`` are given) measure: (merged weights, report or None)."""
    updates = read_adapter(adapter_dir, weights)
    merged = merge(weights, updates, accept_reternarisation=accept_reternarisation)
    report = merge_error(weights, updates, merged, tokens) if tokens is not None else None
    return merged, report


REPORT_TOKENS = 512  # held-out tokens the merge error is measured on


def merge_for_export(model: Any, checkpoint: Any, adapter: Any, options: Any) -> tuple[Any, dict[str, Any]]:
    """The registry's merge hook: merge ``adapter`` into the reference's ternary weights (on master weights,
    re-ternarised), rebuild the reference from the merged weights, and report the error the re-ternarisation
    costs against the unmerged base + adapter (on ``REPORT_TOKENS`` held-out tokens) for the manifest."""
    from tokenizers import Tokenizer

    from edgekit.families.bitnet.reference import build_for_export
    from edgekit.kinds.language.parity import heldout_text

    tok = Tokenizer.from_file(str(checkpoint.path / "tokenizer.json"))
    tokens = tok.encode(heldout_text(), add_special_tokens=False).ids[:REPORT_TOKENS]
    merged, report = merge_adapter(
        model.weights, adapter.path, tokens,
        accept_reternarisation=bool(getattr(options, "accept_reternarisation", False)),
    )
    return build_for_export(merged, options), (report.to_dict() if report is not None else None)


def unmerged_reference(checkpoint: Any, adapter: Any, options: Any = None, scale: float = 1.0) -> Any:
    """The registry's unmerged hook: base (ternary, exact) + the adapter as a float LoRA branch on each adapted
    projection's unquantised input (peft's ``lora.Linear`` beside the quantised layer) — what an engine that
    applies the adapter at run time (llama.cpp's LoRA adapter) computes, with no re-ternarisation.  ``scale``: the
    run-time scale multiplying every branch."""
    from edgekit.families.bitnet.reference import BitNetReference, load

    weights = load(checkpoint.path)
    updates = {k: replace(u, scaling=u.scaling * float(scale)) for k, u in read_adapter(adapter.path, weights).items()}
    model = BitNetReference(
        weights, activations=getattr(options, "bitnet_activations", "a8"), lora=_deltas(updates)
    ).eval()
    model.weights = weights
    return model


def _deltas(updates: Mapping[str, LoraUpdate]) -> dict[str, Any]:
    from .reference import LoraDelta

    return {k: LoraDelta(a=u.a, b=u.b, scaling=u.scaling) for k, u in updates.items()}
