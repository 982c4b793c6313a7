"""GPTQ codes for the linears an ExecuTorch 8da4w export quantises with torchao (issue 15).

torchao 0.18 has no calibrated method for ``Int8DynamicActivationIntxWeightConfig``: its GPTQ takes only the
Int4WeightOnly / Int8WeightOnly / NVFP4 configs and asserts a CUDA device, and its AWQ needs a weight tensor that
supports activation pre-scaling, which ``IntxUnpackedToInt8Tensor`` does not.  So, as for ONNX and GGUF, edgekit's
own GPTQ (``edgekit.gptq``: Frantar et al. 2022, Algorithm 1) keeps the scales and zero points torchao's affine
quantiser chose and replaces only the int8 ``qdata`` (int4 codes -8..7, or int8 -128..127 for a linear the mixed
precision scan moved to int8, the LM head included) before lowering: the program keeps its layout, scales and
bytes, and the tied embedding gathers the head's GPTQ codes.

A ``.pte`` keeps its weights inside XNNPACK's serialised graph, which edgekit does not parse
(``readback``): verification re-derives the codes.  That is only sound if the codes are reproducible, so the input
Hessians come from a **float64** copy of the reference (``hessians``): another thread count or machine changes a
float32 forward's rounding, and a code on a rounding edge would flip; in float64 such a flip needs a value within
~1e-16 of an edge.  The export records the calibration text's sha256 (``artifact.gptq``); verification refuses a
text that changed since.

Imports numpy at import time; torch and torchao inside the functions.
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

import numpy as np

from ... import gptq as core
from ...errors import BundleError, InternalError

_CACHE: "weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, np.ndarray]]]" = weakref.WeakKeyDictionary()
METHOD = "GPTQ (Frantar et al. 2022) with torchao's affine scales (int8 qdata replaced before lowering)"


def module_of(hf_weight: str) -> str:
    """The reference module whose input a checkpoint linear weight sees (``lm_head`` for the tied head)."""
    return hf_weight.removesuffix(".weight")


def hessians(reference: Any, modules: Sequence[str], windows: list[list[int]]) -> dict[str, np.ndarray]:
    """``edgekit.gptq.hessians`` of ``modules`` (reference module names) over the calibration ``windows``, from a
    float64 copy of ``reference`` (reproducible codes: module docstring).  float64 numpy [in, in] each.

    Computed once per export: the result is kept for ``reference`` (``_CACHE``, weakly, not on the module, which
    the parity check deep-copies) and the next call with the same modules and windows, the export's own
    verification re-deriving the codes, takes it from there and drops it, so the memory ([in, in] float64 per
    module) is not held past that."""
    import copy
    import hashlib

    import torch

    names = tuple(sorted(set(modules)))
    key = (names, hashlib.sha256(repr([list(map(int, w)) for w in windows]).encode()).hexdigest())
    cached = _CACHE.pop(reference, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    model = copy.deepcopy(reference).double()
    with torch.no_grad():
        out = core.hessians(model, list(names), windows)
    _CACHE[reference] = (key, out)
    return out


def quantized(weight: np.ndarray, q: Any, hessian: np.ndarray | None = None) -> Any:
    """A float32 [out, in] ``weight`` quantised by torchao with ``q`` (``quant.LinearQuant``) and, given its
    input ``hessian`` [in, in], with GPTQ's codes under torchao's scales and zero points: the
    ``IntxUnpackedToInt8Tensor`` (None where ``quantize_linears`` leaves the width float)."""
    import torch
    from torch import nn

    from .quant import quantize_linears

    lin = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
        quantize_linears(lin, q)
    w = lin[0].weight
    if not hasattr(w, "qdata"):
        return None
    if hessian is not None:
        with torch.no_grad():
            w.qdata.copy_(torch.from_numpy(codes(weight, w, hessian)))
    return w


def codes(weight: np.ndarray, w: Any, hessian: np.ndarray) -> np.ndarray:
    """GPTQ's int8 qdata [out, in] of ``weight`` under the scales / zero points of torchao's quantised ``w``
    (value = scale * (qdata - zero_point), one scale per ``w.block_size`` block)."""
    bits = int(str(w.target_dtype).removeprefix("torch.int"))
    lo = -(1 << (bits - 1))
    out, cols = w.qdata.shape
    group = int(w.block_size[-1])
    scale = np.repeat(w.scale.detach().float().numpy().reshape(out, -1), group, axis=1)[:, :cols]
    zero = np.repeat(w.zero_point.detach().double().numpy().reshape(out, -1), group, axis=1)[:, :cols]
    # edgekit.gptq's codes run 0 .. qmax: shift torchao's signed range by -lo
    got = core.gptq_codes(np.asarray(weight, dtype=np.float32), hessian, scale, zero - lo, (1 << bits) - 1)
    return (got.astype(np.int16) + lo).astype(np.int8)


def apply(eager: Any, todo: Mapping[str, tuple[np.ndarray, Any]], graph_parts: Mapping[str, Sequence[tuple[str, Any]]],
          hs: Mapping[str, np.ndarray]) -> None:
    """Write GPTQ's codes into the torchao weights of ``eager`` (quantised by ``quant.quantize_linears``).
    ``todo``: checkpoint name -> (float32 [out, in] weight, its ``LinearQuant``) (``lfm2.gptq_quants``);
    ``graph_parts``: that name -> (graph module, row slice or None) pairs (a fused checkpoint linear split in the
    graph gets the rows of its whole codes, as ``readback`` derives them); ``hs``: reference module -> input
    Hessian.  Raises ``InternalError`` where a graph linear was not quantised as its checkpoint linear."""
    import torch

    for name, (weight, q) in todo.items():
        whole = quantized(weight, q, hs[module_of(name)])
        for module, rows in graph_parts[name]:
            target = eager.get_submodule(module).weight
            if whole is None or not hasattr(target, "qdata") or target.qdata.shape[1] != whole.qdata.shape[1]:
                raise InternalError(f"GPTQ: graph linear {module} was not quantised as {name} was")
            with torch.no_grad():
                target.qdata.copy_(whole.qdata[rows] if rows is not None else whole.qdata)


def summary(tensors: list[str], windows: list[list[int]], sha256: str) -> dict[str, Any]:
    """The manifest's ``artifact.gptq`` entry."""
    return {**core.summary(tensors, windows, METHOD), "calibration_sha256": sha256, "hessians": "float64"}


def readback_hessians(manifest: Mapping[str, Any], model: Any, options: Any, spec: Any,
                      todo: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The input Hessians verification needs to re-derive a bundle's GPTQ codes: of every linear in ``todo``
    (``lfm2.gptq_quants``) where the bundle's *plan* writes GPTQ codes (``options.algorithm``), from the float
    reference ``model`` over the recorded calibration text; empty where it does not.  The manifest's
    ``artifact.gptq`` must agree with the plan (which tensors, the text's sha256); otherwise, or when that text is
    gone or changed, raises ``BundleError``."""
    from ...calibration import CalibrationError, checkpoint_windows
    from ...reference import checkpoint_of

    entry = (manifest.get("artifact") or {}).get("gptq")
    if options.algorithm(spec) != "gptq":
        if entry:
            raise BundleError("the manifest's artifact.gptq says GPTQ wrote codes, but its plan writes none (an "
                              "edited manifest?); re-export the bundle")
        return {}
    if not entry or not entry.get("calibration_sha256"):
        raise BundleError("the bundle's plan writes GPTQ codes but its manifest has no artifact.gptq entry (an edited "
                          "manifest?); re-export the bundle")
    core.check_summary(entry)
    listed, want = sorted(entry.get("tensors") or ()), sorted(todo)
    if listed != want:
        diff = sorted(set(listed) ^ set(want))
        raise BundleError(f"the manifest's artifact.gptq.tensors differs from the linears the plan writes GPTQ codes "
                          f"for ({len(diff)} differ, e.g. {diff[0]}; an edited manifest?); re-export the bundle")
    checkpoint = checkpoint_of(model)
    if checkpoint is None:
        raise BundleError("verify: GPTQ codes are re-derived from the checkpoint's reference; none was loaded")
    try:
        text, windows = checkpoint_windows(options.calibration, checkpoint)
    except CalibrationError as exc:
        reason = str(exc).split(";")[0]  # the refusal without its export-time advice
        raise BundleError(f"verify: the bundle's GPTQ codes are re-derived from its calibration text, which cannot "
                          f"be read ({reason}); put that file back where the export read it, or re-export") from None
    if text.sha256 != entry["calibration_sha256"]:
        raise BundleError(f"verify: the calibration text {text.source} is not the one the bundle records (sha256 "
                          f"{text.sha256[:12]}, the manifest's {str(entry['calibration_sha256'])[:12]}): the text "
                          "changed since the export or the manifest was edited; its GPTQ codes cannot be re-derived: "
                          "restore that text or re-export")
    return hessians(model, [module_of(n) for n in want], windows)
