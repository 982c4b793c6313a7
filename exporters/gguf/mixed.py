"""GGUF mixed precision: ggml's own quantiser for the sensitivity scan, llama.cpp's tensor-type overrides to apply it.

llama-cpp-python 0.3.x exposes per-tensor types in ``llama_model_quantize_params.tt_overrides``: a
null-terminated array of ``llama_model_tensor_override`` (a regex ``pattern`` searched in each tensor name, a
``ggml_type``) — what ``llama-quantize --tensor-type`` passes.  edgekit writes one anchored pattern per tensor.

The scan quantises one tensor with ``ggml_quantize_chunk`` from the ggml library llama-cpp-python ships (the
function ``llama_model_quantize`` itself calls, importance matrix included) and reads it back with gguf-py's
``quants.dequantize``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.errors import EdgekitError

# quant -> candidate types for its weight matrices, cheapest first: never below the quant's own base type
CANDIDATES: dict[str, tuple[str, ...]] = {
    "q4_0": ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q6_K", "Q8_0"),
    "q4_k_m": ("Q4_K", "Q5_K", "Q6_K", "Q8_0"),
    "q5_k_m": ("Q5_K", "Q6_K", "Q8_0"),
}

_GGML: Any = None


def _ggml() -> Any:
    global _GGML
    if _GGML is None:
        import llama_cpp

        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        found = sorted(lib_dir.glob("libggml-base.*")) or sorted(lib_dir.glob("libggml.*"))
        if not found:
            raise EdgekitError(f"no ggml library in {lib_dir}; reinstall llama-cpp-python")
        lib = ctypes.CDLL(str(found[0]))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.POINTER(ctypes.c_float)]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        _GGML = lib
    return _GGML


def nbytes(shape: tuple[int, ...], type_name: str) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    rows = int(np.prod(shape[:-1]))
    return rows * (shape[-1] // block) * size


def fits(shape: tuple[int, ...], type_name: str) -> bool:
    import gguf

    return shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0] == 0


def fake_quant(weight: np.ndarray, type_name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``weight`` [rows, n] float32 -> the same after ggml quantises it to ``type_name`` (with ``imatrix``
    [n] where given) and gguf-py dequantises it."""
    import gguf

    qt = gguf.GGMLQuantizationType[type_name]
    lib = _ggml()
    lib.ggml_quantize_init(int(qt))
    src = np.ascontiguousarray(weight.reshape(-1, weight.shape[-1]), dtype=np.float32)
    rows, n = src.shape
    dst = np.zeros(nbytes(src.shape, type_name), dtype=np.uint8)
    imat = None
    if imatrix is not None:
        imat_arr = np.ascontiguousarray(imatrix, dtype=np.float32)
        imat = imat_arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    written = lib.ggml_quantize_chunk(int(qt), src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                      dst.ctypes.data_as(ctypes.c_void_p), 0, rows, n, imat)
    if written != dst.size:
        raise EdgekitError(f"ggml wrote {written} bytes for a {type_name} tensor of {dst.size}")
    return gguf.quants.dequantize(dst.reshape(rows, -1), qt).reshape(weight.shape).astype(np.float32)


def overrides(types: Mapping[str, str]) -> tuple[Any, list[Any]]:
    """GGUF tensor name -> type name as llama.cpp's ``tt_overrides`` array (and the buffers it points into,
    which must outlive the quantiser call)."""
    import gguf
    import llama_cpp

    arr = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
    keep: list[Any] = [arr]
    for k, (name, t) in enumerate(sorted(types.items())):
        pattern = ("^" + name.replace(".", r"\.") + "$").encode()
        keep.append(pattern)
        arr[k].pattern = pattern
        arr[k].type = int(gguf.GGMLQuantizationType[t])
    arr[len(types)].pattern = None
    return arr, keep


def per_tensor_types(path: Path) -> dict[str, str]:
    """Tensor name -> stored type name of a GGUF file."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
