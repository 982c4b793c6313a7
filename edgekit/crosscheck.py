"""An independent check of the weights an export uses: the reference (what every exporter reads and verification
compares with) rebuilt another way from the original files, compared tensor by tensor.

The reference could be wrong in ways its own verification cannot see — a tensor transformers filled with a random
initialisation, adapter keys peft dropped, a scale read from the wrong config value — because the engine is then
checked against the same wrong weights.  So, per family:

* **LFM2** (reference: transformers + peft): the raw safetensors values, plus ``scale * B @ A`` for every adapted
  module computed here from the adapter's own files (``scale = lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with
  ``use_rslora``; peft's ``LoraLayer.update_layer``), with no transformers loader and no peft involved.
* **BitNet** (reference: edgekit's own reader and merge): transformers' ``BitNetForCausalLM`` loaded as a user
  would, the adapter merged with peft's ``merge_and_unload``, then ternarised with the absmean rule (BitNet b1.58,
  arXiv 2402.17764, eqs. 1-3); codes must be identical and scales equal to float32 rounding.

A mismatch is a ``CheckpointError`` naming the tensor.  Cheap on the tiny models (one extra load).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import CheckpointError, require

RTOL, ATOL = 1e-5, 1e-6  # float32 merges: the same sum in another operation order


def cross_check(checkpoint: Any, adapter: Any, model: Any) -> None:
    """Compare ``model`` (the merged reference built from ``checkpoint`` + ``adapter``) with an independent load.
    Families other than LFM2 and BitNet (TRM/HRM: the reference reads the state dict itself) are not checked."""
    family = checkpoint.family.family.value
    if family == "lfm2":
        _check_lfm2(checkpoint, adapter, model)
    elif family == "bitnet":
        _check_bitnet(checkpoint, adapter, model)


def _lora_deltas(adapter: Any) -> dict[str, Any]:
    """Module weight name -> float32 ``scale * B @ A`` from the adapter's files."""
    from safetensors.torch import load_file

    from .lora import ADAPTER_WEIGHTS, PREFIX, _pattern_value

    cfg = adapter.config
    sd = load_file(str(adapter.path / ADAPTER_WEIGHTS))
    out = {}
    for module in adapter.modules:
        a = sd[f"{PREFIX}{module}.lora_A.weight"].float()
        b = sd[f"{PREFIX}{module}.lora_B.weight"].float()
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora", False) else alpha / r
        out[f"{module}.weight"] = (b @ a) * scale
    return out


def _mismatch(name: str, got: Any, want: Any) -> str:
    import numpy as np

    # numpy, not torch: torch's threaded kernels crawl on a loaded 2-core machine for these small tensors
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    if got.shape != want.shape:
        return f"{name}: shape {list(got.shape)} vs {list(want.shape)} in the original files"
    if not np.isfinite(got).all():
        return f"{name}: the reference holds NaN/Inf"
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        return f"{name}: max |Δ| {float(np.abs(got - want).max()):.3e} from the original files"
    return ""


def _fail(checkpoint: Any, problem: str) -> None:
    raise CheckpointError(
        f"{checkpoint.path}: the reference the export would use differs from an independent load of the original "
        f"files ({problem}); the checkpoint or adapter is not read as trained — please report this"
    )


def _check_lfm2(checkpoint: Any, adapter: Any, model: Any) -> None:
    from safetensors.torch import load_file

    ref = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    raw: dict[str, Any] = {}
    for f in checkpoint.files:
        raw.update({k: v.float() for k, v in load_file(str(f)).items()})
    deltas = _lora_deltas(adapter) if adapter is not None else {}
    for name, value in raw.items():
        if name == "lm_head.weight" and name not in ref:
            continue
        if name not in ref:
            _fail(checkpoint, f"{name} is in the files but not in the model")
        want = (value + deltas[name] if name in deltas else value).numpy()
        problem = _mismatch(name, ref[name], want)
        if problem:
            _fail(checkpoint, problem)
    lost = sorted(set(deltas) - set(raw))
    if lost:
        _fail(checkpoint, f"the adapter changes {lost[0]}, which the files do not hold")
    for name in ref:
        if name not in raw and name != "lm_head.weight":
            _fail(checkpoint, f"{name} is in the model but in none of the files (a random initialisation)")


def _absmean(w: Any) -> tuple[Any, float]:
    """Ternary codes and scale of a master weight: gamma = mean|W| (clamped at 1e-5), codes = clamp(round(W/gamma))."""
    import numpy as np

    w = np.asarray(w, dtype=np.float32)
    gamma = max(np.float32(np.abs(w).mean(dtype=np.float64)), np.float32(1e-5))
    inv = np.float32(1.0) / gamma
    return np.clip(np.round(w * inv), -1, 1).astype(np.int8), float(np.float32(1.0) / inv)


def _check_bitnet(checkpoint: Any, adapter: Any, model: Any) -> None:
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    weights = getattr(model, "weights", None)
    cfg = checkpoint.model_config
    if weights is None or not cfg.quantization.master_weights:
        return  # packed checkpoints: transformers' BitLinear keeps the codes packed; the reader is tested against it
    try:
        hf = transformers.BitNetForCausalLM.from_pretrained(str(checkpoint.path), dtype=torch.float32, local_files_only=True)
        if adapter is not None:
            peft = require("peft", "export")
            hf = peft.PeftModel.from_pretrained(hf, str(adapter.path), is_trainable=False).merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - transformers and peft raise many types
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{checkpoint.path}: transformers could not load the checkpoint ({first})") from None
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    for name, t in weights.ternary.items():
        if name not in sd:
            _fail(checkpoint, f"{name} is not in transformers' model")
        codes, scale = _absmean(sd[name])
        if codes.shape != t.codes.shape or not (codes == t.codes).all():
            n = int((codes != t.codes).sum()) if codes.shape == t.codes.shape else codes.size
            _fail(checkpoint, f"{name}: {n} ternary codes differ from transformers + peft")
        if not math.isclose(scale, t.scale, rel_tol=1e-6):
            _fail(checkpoint, f"{name}: scale {t.scale:.6g} vs {scale:.6g} from transformers + peft")
    for name, arr in weights.floats.items():
        if name in sd:
            problem = _mismatch(name, arr, sd[name])
            if problem:
                _fail(checkpoint, problem)
