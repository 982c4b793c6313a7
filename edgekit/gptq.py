"""GPTQ's column loop and input Hessians, shared by the exporters that replace a quantiser's codes under its own
fixed scales (ONNX ``MatMulNBits``: exporters/onnx/gptq.py; GGUF Q4_0 / Q4_K: exporters/gguf/gptq.py).

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
Algorithm 1: the Hessian of the layer's squared output error H = 2 X^T X over calibration inputs, dampened by 1 %
of its mean diagonal, the upper Cholesky factor of H^-1, then column by column: quantise the column, and spread
its error, divided by the factor's diagonal, over the columns not yet quantised; lazy batch updates of 128 columns.

The quantiser is given per weight (``[out, in]`` arrays, so any block layout fits): a stored value is
``scale * (q - zero) + shift`` with an integer code ``q`` in ``0 .. qmax``; a weight ``w`` rounds to
``q = clamp(round(float32((w - shift) * (1 / scale)) + zero))``.  ONNX's symmetric blocks and ggml's Q4_0 are
``zero = 2^(bits-1)``, no shift; ggml's Q4_K sub-blocks are ``scale = d * sc``, ``zero = 0``, ``shift = -dmin * m``.

Imports numpy at import time; torch inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LAZY_BATCH = 128  # columns per lazy batch update (the paper's B)
DAMP = 0.01  # fraction of the Hessian's mean diagonal added to it (the paper's lambda)


def gptq_codes(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero: Any, qmax: int,
               shift: np.ndarray | None = None, damp: float = DAMP) -> Any:
    """GPTQ's codes (uint8 [out, in], 0 .. ``qmax``) of a float32 [out, in] ``weight`` under the fixed per-weight
    ``scale`` (float32 [out, in]), ``zero`` (code units: a number or [out, in]) and ``shift`` ([out, in] or None),
    given the input Hessian ``hessian`` [in, in] (2 X^T X / tokens over the calibration inputs).  Columns in
    order (no act-order: with fixed scales it measured no better, bench/gptq_probe.py).  A column no calibration
    token reached (zero diagonal) keeps round-to-nearest."""
    import torch

    w = torch.from_numpy(np.asarray(weight, dtype=np.float64)).clone()
    h = torch.from_numpy(np.asarray(hessian, dtype=np.float64)).clone()
    out, cols = w.shape
    col_scale = torch.from_numpy(np.array(scale, dtype=np.float32, copy=True))
    inv_scale = torch.where(col_scale != 0, 1.0 / col_scale, torch.zeros_like(col_scale))  # float32, as C kernels
    zeros = torch.from_numpy(np.broadcast_to(np.asarray(zero, dtype=np.float64), (out, cols)).copy())
    shifts = torch.from_numpy(np.zeros((out, cols)) if shift is None else np.asarray(shift, dtype=np.float64).copy())
    col_scale = col_scale.double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros((out, cols), dtype=torch.float64)
    qmax_f = float(qmax)
    for i1 in range(0, cols, LAZY_BATCH):
        i2 = min(i1 + LAZY_BATCH, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            col = w1[:, i]
            t = ((col - shifts[:, c]).float() * inv_scale[:, c]).double() + zeros[:, c]
            q = torch.clamp(torch.round(t), 0.0, qmax_f)
            codes[:, c] = q
            err = (col - ((q - zeros[:, c]) * col_scale[:, c] + shifts[:, c])) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes.numpy().astype(np.uint8)


def hessian_hooks(model: Any, names: list[str]) -> tuple[dict[Any, Any], list[Any]]:
    """Forward hooks accumulating X^T X (float64) and token counts of each named ``nn.Linear``'s input; returns
    (the sums under ``name`` and counts under ``(name, "n")``, the hooks to remove)."""
    sums: dict[Any, Any] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def hook(_m: Any, args: tuple[Any, ...], _o: Any, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            sums[(name, "n")] = sums.get((name, "n"), 0) + x.shape[0]

        hooks.append(module.register_forward_hook(hook))
    return sums, hooks


def hessians(model: Any, modules: list[str], windows: list[list[int]], batch: int = 8) -> dict[str, np.ndarray]:
    """H = 2 X^T X / tokens (float64 numpy [in, in]) of each named ``nn.Linear``'s input over ``windows``."""
    from .calibration import run_windows

    sums, hooks = hessian_hooks(model, modules)
    try:
        run_windows(model, windows, batch)
    finally:
        for h in hooks:
            h.remove()
    return {m: (2.0 * sums[m] / sums[(m, "n")]).numpy() for m in modules if m in sums}


def summary(tensors: list[str], windows: list[list[int]], method: str) -> dict[str, Any]:
    """The manifest's ``artifact.gptq`` entry."""
    return {"method": method, "tensors": sorted(tensors), "tokens": int(sum(len(w) for w in windows)),
            "damp": DAMP, "lazy_batch": LAZY_BATCH, "act_order": False}


def check_summary(entry: Any) -> None:
    """Refuse (``BundleError``) a manifest ``artifact.gptq`` entry whose settings are not the ones this code
    writes codes with (``summary``): the manifest would misstate how the bundle was made."""
    from .errors import BundleError

    want = {"damp": DAMP, "lazy_batch": LAZY_BATCH, "act_order": False}
    wrong = {k: entry.get(k) for k, v in want.items() if entry.get(k) != v}
    if wrong:
        raise BundleError(f"the manifest's artifact.gptq records {wrong}, but edgekit writes GPTQ codes with {want} "
                          "(an edited manifest?); re-export the bundle")


# storage type suffix of a tensor whose codes GPTQ wrote (``edgekit.tensorcheck`` bounds it apart from
# round-to-nearest's type: error compensation moves a weight by more than half a step)
QTYPE_SUFFIX = "_GPTQ"
