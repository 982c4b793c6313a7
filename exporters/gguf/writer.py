"""Writing the GGUF file: architecture metadata, tensors under llama.cpp's names, and quantisation."""

from __future__ import annotations

import ctypes
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...errors import EdgekitError, UnsupportedError
from ...plan import QuantSpec

# quant name -> (tensor type edgekit writes, llama.cpp ftype that llama_model_quantize converts it to).
# K-quants need llama.cpp's own quantiser (the gguf package has no K-quant encoder), so those are written
# as F32 first and re-quantised: the same path llama.cpp's converter + llama-quantize take.
GGML_PLAN: dict[str, tuple[str, str | None]] = {
    "f32": ("F32", None),
    "f16": ("F16", None),
    "bf16": ("BF16", None),
    "q8_0": ("Q8_0", None),
    "q4_0": ("F32", "LLAMA_FTYPE_MOSTLY_Q4_0"),
    "q4_k_m": ("F32", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    "q5_k_m": ("F32", "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    "q6_k": ("F32", "LLAMA_FTYPE_MOSTLY_Q6_K"),
}
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
# llama.cpp keeps these in F32 whatever the file type (the depthwise conv kernel is [L_cache, hidden]).
KEEP_F32 = ("shortconv.conv.weight",)


def ggml_plan(spec: QuantSpec) -> tuple[Any, int | None]:
    """Translate a QuantSpec to (GGMLQuantizationType written directly, llama.cpp ftype or None)."""
    import gguf

    if spec.name not in GGML_PLAN:
        raise UnsupportedError(f"GGUF cannot store quantisation {spec.name!r}; valid: {', '.join(GGML_PLAN)}")
    direct, ftype = GGML_PLAN[spec.name]
    if ftype is None:
        return gguf.GGMLQuantizationType[direct], None
    import llama_cpp

    return gguf.GGMLQuantizationType[direct], int(getattr(llama_cpp, ftype))


def tensor_type(name: str, array: np.ndarray, wanted: Any) -> Any:
    """The type one tensor is written as: norms, the conv kernel and rows that do not fill a block stay float."""
    import gguf

    if array.ndim < 2 or name.endswith(KEEP_F32):
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if array.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16  # what llama.cpp's converter falls back to
    return wanted


def encode(array: np.ndarray, qtype: Any) -> tuple[np.ndarray, Any]:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def write_gguf(
    path: Path,
    arch: str,
    metadata_writer: Any,
    tensors: Mapping[str, np.ndarray],
    qtype: Any,
    file_type: int | None,
) -> None:
    """``metadata_writer(writer)`` adds the architecture and vocabulary keys; tensors use GGUF names."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    try:
        metadata_writer(writer)
        if file_type is not None:
            writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, array in tensors.items():
            data, raw = encode(array, tensor_type(name, array, qtype))
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def requantize(src: Path, dst: Path, ftype: int, threads: int | None = None) -> None:
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgekitError(f"llama.cpp's quantiser failed on {src} (code {rc})")


def tensor_types(path: Path) -> dict[str, int]:
    """Histogram of the tensor types actually stored in a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))
