"""GPTQ codes for the Q4_0 and Q4_K tensors llama.cpp's quantiser wrote (issue 15), in place in the GGUF file.

llama.cpp's quantiser (importance matrix, mixed types) chooses every block's scales; this keeps them, bytes and
layout unchanged, and replaces only the 4-bit codes by GPTQ's (``edgekit.gptq``: Frantar et al. 2022 Algorithm 1,
input Hessians 2 X^T X / n of the float reference over the calibration text), as the ONNX export does for
``MatMulNBits`` (exporters/onnx/gptq.py).  The tied ``token_embd`` table gets the LM head's codes (the Hessian of
``lm_head``'s input): llama.cpp multiplies the output by that tensor.

Layouts (ggml-common.h, checked against gguf-py's ``quants.dequantize``):

* Q4_0, 18 bytes per 32 weights: fp16 ``d``, then 16 bytes; weight ``j < 16`` in the low nibble of byte ``j``,
  weight ``j >= 16`` in the high nibble of byte ``j - 16``; value ``d * (q - 8)``.
* Q4_K, 144 bytes per 256 weights: fp16 ``d``, fp16 ``dmin``, 12 bytes of 6-bit scales / mins of 8 sub-blocks
  of 32, 128 bytes of codes: sub-blocks ``2g`` and ``2g + 1`` in the low / high nibbles of bytes ``32g .. 32g +
  31``; value ``d * sc_s * q - dmin * m_s``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ... import gptq as core

Q4_0_BYTES, Q4_K_BYTES = 18, 144
METHOD = "GPTQ (Frantar et al. 2022) with llama.cpp's block scales (Q4_0, Q4_K)"


def q4_0_fields(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Q4_0 tensor's bytes [rows, blocks * 18] -> (d float32 [rows, blocks], codes uint8 [rows, blocks * 32])."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, Q4_0_BYTES)
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [rows, blocks, 32]
    return d, codes.reshape(rows, -1)


def q4_0_pack(raw: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``raw`` (a Q4_0 tensor's bytes) with its codes replaced by ``codes`` uint8 [rows, blocks * 32]."""
    rows = raw.shape[0]
    out = np.array(raw, dtype=np.uint8, copy=True).reshape(rows, -1, Q4_0_BYTES)
    c = codes.reshape(rows, -1, 32).astype(np.uint8)
    out[..., 2:] = (c[..., :16] & 0x0F) | ((c[..., 16:] & 0x0F) << 4)
    return out.reshape(raw.shape)


def q4_k_fields(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q4_K tensor's bytes [rows, blocks * 144] -> (scale d * sc and offset dmin * m, float32 [rows, blocks * 8]
    (one per sub-block of 32), codes uint8 [rows, blocks * 256])."""
    import gguf

    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw.reshape(-1, Q4_K_BYTES))
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
    sc, m = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])
    scale = (d * sc.astype(np.float32)).reshape(rows, -1)
    offset = (dmin * m.astype(np.float32)).reshape(rows, -1)
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return scale, offset, (qs & 0x0F).reshape(rows, -1)


def q4_k_pack(raw: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``raw`` (a Q4_K tensor's bytes) with its codes replaced by ``codes`` uint8 [rows, blocks * 256]."""
    out = np.array(raw, dtype=np.uint8, copy=True).reshape(-1, Q4_K_BYTES)
    c = codes.reshape(-1, 4, 2, 32).astype(np.uint8)
    out[:, 16:] = ((c[:, :, 0] & 0x0F) | ((c[:, :, 1] & 0x0F) << 4)).reshape(-1, 128)
    return out.reshape(raw.shape)


def codes_for(type_name: str, raw: np.ndarray, weight: np.ndarray, hessian: np.ndarray) -> np.ndarray | None:
    """GPTQ's codes of the float32 [rows, n] ``weight`` under the scales of its stored bytes ``raw``, packed back
    into the same bytes; None where the type has no GPTQ path here (or a Q4_K sub-block of scale 0 with a min)."""
    if type_name == "Q4_0":
        d, _codes = q4_0_fields(raw)
        scale = np.repeat(d, 32, axis=1)
        return q4_0_pack(raw, core.gptq_codes(weight, hessian, scale, 8.0, 15))
    if type_name == "Q4_K":
        scale, offset, _codes = q4_k_fields(raw)
        scale, shift = np.repeat(scale, 32, axis=1), -np.repeat(offset, 32, axis=1)
        return q4_k_pack(raw, core.gptq_codes(weight, hessian, scale, 0.0, 15, shift=shift))
    return None


TYPES = ("Q4_0", "Q4_K")


def apply(path: Path, weights: Mapping[str, np.ndarray], modules: Mapping[str, str], reference: Any,
          windows: list[list[int]], types: tuple[str, ...] = TYPES,
          progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Replace, in the GGUF at ``path`` (memory-mapped, written in place), the codes of every tensor stored as one
    of ``types`` that ``modules`` names (GGUF name -> the reference's ``nn.Linear`` whose input multiplies it;
    the tied table: ``lm_head``) by GPTQ's codes of its float weight ``weights[name]`` (float32 [rows, n]) under
    the file's own scales.  Returns the manifest's ``artifact.gptq`` entry."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    todo = [t for t in reader.tensors if t.tensor_type.name in types and t.name in modules and t.name in weights]
    if not todo:
        return core.summary([], windows, METHOD)
    progress(f"GPTQ: input Hessians of {len(todo)} matrices over the calibration text")
    hs = core.hessians(reference, sorted({modules[t.name] for t in todo}), windows)
    done: list[str] = []
    for t in todo:
        w = np.asarray(weights[t.name], dtype=np.float32)
        raw = t.data  # uint8 [rows, bytes per row], a view of the memory map
        if w.ndim != 2 or raw.shape[0] != w.shape[0] or modules[t.name] not in hs:
            continue
        progress(f"GPTQ: {t.name} ({t.tensor_type.name}, {len(done) + 1}/{len(todo)})")
        packed = codes_for(t.tensor_type.name, raw, w, hs[modules[t.name]])
        if packed is None:
            continue
        raw[...] = packed
        done.append(t.name)
    reader.data.flush()
    del reader
    return {**core.summary(done, windows, METHOD), "types": sorted({t.tensor_type.name for t in todo
                                                                    if t.name in done})}
