"""GPTQ for ONNX ``MatMulNBits`` weights with the round-to-nearest quantiser's own scales (static groups).

Why a hand-written GPTQ: onnxruntime 1.32's ``GPTQWeightOnlyQuantConfig`` measured *worse* than round-to-nearest
on the built-in model (top-1 0.6104, mean KL 2.3e-1; on a single 256x128 MatMul twice RTN's output error on its
own calibration data, README "Calibrated 4-bit quantisation"), and torchao 0.18's GPTQ asserts a CUDA device.
This is Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
Algorithm 1: the Hessian of the layer's squared output error H = 2 X^T X over calibration inputs, dampened by 1 %
of its mean diagonal, the upper Cholesky factor of H^-1, then column by column: quantise the column, and spread
its error, divided by the factor's diagonal, over the columns not yet quantised; lazy batch updates of 128 columns.

One change from the paper: the block scales are **fixed** from the original weight by onnxruntime's symmetric
block quantiser (``quantize_matmul_4bits`` / ``_8bits``: the signed value of largest magnitude of each block maps
to code 0, scale = that value / -2^(bits-1)), so only the codes change.  The file keeps the exact layout, scales
and bytes the round-to-nearest export writes; a weight is replaced by GPTQ's codes inside the ``MatMulNBits``
node the quantiser wrote.  Columns stay in order (no act-order: with static groups it only permutes which
column quantises first, and measured no better here; ``act_order=True`` is kept for the bench).

Imports numpy at import time; torch inside ``gptq_codes``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

LAZY_BATCH = 128  # columns per lazy batch update (the paper's B)
DAMP = 0.01  # fraction of the Hessian's mean diagonal added to it (the paper's lambda)


def rtn_codes(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's symmetric block quantiser on a float32 [out, in] weight: (codes uint8 [out, in] in
    0 .. 2^bits - 1, scales float32 [out, in / block]); code - 2^(bits-1) times the block's scale decodes it."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    from .readback import unpack

    cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=bits,
                                           op_types_to_quantize=("MatMul",))
    kn = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)  # MatMul's [K, N]
    packed, scales, _zp = mnq.DefaultWeightOnlyQuantizer(cfg).qbits_block_quant(kn)
    n, k = kn.shape[1], kn.shape[0]
    k_blocks = -(-k // block)
    codes = unpack(packed.reshape(n, k_blocks, -1), bits, block).reshape(n, k_blocks * block)[:, :k]
    return np.ascontiguousarray(codes), np.asarray(scales, dtype=np.float32).reshape(n, k_blocks)


def dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Codes [out, in] and block scales [out, in / block] -> float32 [out, in], as ``MatMulNBits`` decodes them."""
    s = np.repeat(scales.astype(np.float32), block, axis=1)[:, : codes.shape[1]]
    return (codes.astype(np.float32) - np.float32(1 << (bits - 1))) * s


def pack(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Codes uint8 [out, in] -> MatMulNBits' B uint8 [out, in / block, block * bits / 8] (lowest bits first; the
    inverse of ``readback.unpack``)."""
    n, k = codes.shape
    k_blocks = -(-k // block)
    padded = np.zeros((n, k_blocks * block), dtype=np.uint8)
    padded[:, :k] = codes
    per = 8 // bits
    vals = padded.reshape(n, k_blocks, block // per, per).astype(np.uint16)
    shifts = (np.arange(per, dtype=np.uint16) * bits)
    return (vals << shifts).sum(-1).astype(np.uint8)


def gptq_codes(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, bits: int, block: int,
               damp: float = DAMP, act_order: bool = False, dynamic: bool = False) -> Any:
    """GPTQ's codes (uint8 [out, in]) of a float32 [out, in] weight under fixed block ``scales`` [out, in / block]
    (``rtn_codes``'), given the input Hessian ``hessian`` [in, in] (2 X^T X / tokens over the calibration inputs).
    A column no calibration token reached (zero diagonal) keeps round-to-nearest."""
    import torch

    w = torch.from_numpy(np.asarray(weight, dtype=np.float64)).clone()
    h = torch.from_numpy(np.asarray(hessian, dtype=np.float64)).clone()
    out, cols = w.shape
    zp = float(1 << (bits - 1))
    qmax = float((1 << bits) - 1)
    col_scale = torch.from_numpy(np.repeat(np.asarray(scales, dtype=np.float32), block, axis=1)[:, :cols])
    inv_scale = torch.where(col_scale != 0, 1.0 / col_scale, torch.zeros_like(col_scale))  # float32, as the C++ kernel
    col_scale = col_scale.double()
    new_scales = np.array(scales, dtype=np.float32, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    col_scale, inv_scale = col_scale[:, perm], inv_scale[:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros((out, cols), dtype=torch.float64)
    for i1 in range(0, cols, LAZY_BATCH):
        i2 = min(i1 + LAZY_BATCH, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if dynamic and c % block == 0 and not act_order:
                # the block's scale from its error-updated weights, by onnxruntime's rule (signed max / -2^(b-1))
                blk = w1[:, i : i + block].float()
                idx = blk.abs().argmax(1, keepdim=True)
                s = (blk.gather(1, idx)[:, 0] / -zp).float()
                new_scales[:, c // block] = s.numpy()
                col_scale[:, c : c + block] = s.double()[:, None]
                inv_scale[:, c : c + block] = torch.where(s != 0, 1.0 / s, torch.zeros_like(s))[:, None]
            col = w1[:, i]
            q = torch.clamp(torch.round(col.float() * inv_scale[:, c]).double() + zp, 0.0, qmax)
            codes[:, c] = q
            err = (col - (q - zp) * col_scale[:, c]) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inverse = torch.argsort(perm)
    out_codes = codes[:, inverse].numpy().astype(np.uint8)
    return (out_codes, new_scales) if dynamic else out_codes


def gptq(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, bits: int, block: int,
         damp: float = DAMP, act_order: bool = False, dynamic: bool = False) -> np.ndarray:
    """``gptq_codes`` decoded: float32 [out, in]."""
    if dynamic:
        codes, scales = gptq_codes(weight, hessian, scales, bits, block, damp, act_order, dynamic=True)
        return dequantize(codes, scales, bits, block)
    return dequantize(gptq_codes(weight, hessian, scales, bits, block, damp, act_order), scales, bits, block)


def hessian_hooks(model: Any, names: list[str]) -> tuple[dict[str, Any], list[Any]]:
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


# storage type suffix of a tensor whose codes GPTQ wrote (``edgekit.tensorcheck`` bounds it apart from
# round-to-nearest's INT4 / INT8: error compensation moves a weight by more than half a step)
QTYPE_SUFFIX = "_GPTQ"


def hessians(model: Any, modules: list[str], windows: list[list[int]], batch: int = 8) -> dict[str, np.ndarray]:
    """H = 2 X^T X / tokens (float64 numpy [in, in]) of each named ``nn.Linear``'s input over ``windows``."""
    import torch

    sums, hooks = hessian_hooks(model, modules)
    try:
        by_length: dict[int, list[list[int]]] = {}
        for w in windows:
            by_length.setdefault(len(w), []).append(list(w))
        with torch.inference_mode():
            for group in by_length.values():
                for k in range(0, len(group), batch):
                    model(input_ids=torch.tensor(group[k : k + batch], dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return {m: (2.0 * sums[m] / sums[(m, "n")]).numpy() for m in modules if m in sums}


def apply(model: Any, float_weights: Mapping[str, np.ndarray], modules: Mapping[str, str], reference: Any,
          windows: list[list[int]], progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Replace the packed codes of every symmetric ``MatMulNBits`` weight of a quantised ModelProto (in place) by
    GPTQ's codes under the node's own scales.  ``float_weights``: the float graph's MatMul weight initializer
    name -> its float32 [K, N] values; ``modules``: that name -> the reference's ``nn.Linear`` whose input the
    MatMul sees (a fused q|k|v: the q projection's; the tied head: ``lm_head``); the Hessians come from
    ``reference`` (float, the whole model at once) over the calibration ``windows``.  A tied embedding's
    ``GatherBlockQuantized`` reads the same blocks, so it gets the head's GPTQ codes.  Returns the manifest's
    summary (tensors, tokens, damping, lazy batch)."""
    from onnx import helper, numpy_helper

    progress("GPTQ: input Hessians of every MatMul over the calibration text")
    hs = hessians(reference, sorted(set(modules.values())), windows)
    inits = {t.name: t for t in model.graph.initializer}
    done: list[str] = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or (len(node.input) > 3 and node.input[3]):
            continue
        weight = node.input[1].rsplit("_Q", 1)[0]
        if weight not in float_weights or weight not in modules:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block, n, k = int(attrs.get("bits", 4)), int(attrs["block_size"]), int(attrs["N"]), int(attrs["K"])
        w = np.ascontiguousarray(np.asarray(float_weights[weight], dtype=np.float32).T)  # [N, K]
        b_init = inits[node.input[1]]
        b = numpy_helper.to_array(b_init)
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, -1)
        if w.shape != (n, k) or k % block:
            continue  # a padded block: keep round-to-nearest
        progress(f"GPTQ: {weight} ({len(done) + 1})")
        codes = gptq_codes(w, hs[modules[weight]], scales, bits, block)
        b_init.CopyFrom(numpy_helper.from_array(pack(codes, bits, block).reshape(b.shape), b_init.name))
        done.append(weight)
    return {"method": "GPTQ (Frantar et al. 2022) with round-to-nearest's block scales", "tensors": sorted(done),
            "tokens": int(sum(len(w) for w in windows)), "damp": DAMP, "lazy_batch": LAZY_BATCH, "act_order": False}
