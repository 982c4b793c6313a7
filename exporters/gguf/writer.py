"""Writing the GGUF file: architecture metadata, tensors under llama.cpp's names, and quantisation."""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ...errors import EdgekitError, UnsupportedError
from ...plan import QuantSpec

from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as FT

# quant name -> (tensor type edgekit writes, file type recorded in the header, llama.cpp file type that
# llama_model_quantize converts the file to or None).  K-quants need llama.cpp's own quantiser (the gguf package
# has no K-quant encoder), so those are written as F32 first and re-quantised: the same path llama.cpp's
# converter + llama-quantize take.
GGML_PLAN: dict[str, tuple[Q, FT, FT | None]] = {
    "f32": (Q.F32, FT.ALL_F32, None),
    "f16": (Q.F16, FT.MOSTLY_F16, None),
    "bf16": (Q.BF16, FT.MOSTLY_BF16, None),
    "q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0, None),
    "tq1_0": (Q.TQ1_0, FT.MOSTLY_TQ1_0, None),
    "tq2_0": (Q.TQ2_0, FT.MOSTLY_TQ2_0, None),
    "q4_0": (Q.F32, FT.ALL_F32, FT.MOSTLY_Q4_0),
    "q4_k_m": (Q.F32, FT.ALL_F32, FT.MOSTLY_Q4_K_M),
    "q5_k_m": (Q.F32, FT.ALL_F32, FT.MOSTLY_Q5_K_M),
    "q6_k": (Q.F32, FT.ALL_F32, FT.MOSTLY_Q6_K),
}


def ggml_plan(spec: QuantSpec) -> tuple[Q, FT, FT | None]:
    """Translate a QuantSpec to (tensor type written directly, header file type, llama.cpp file type or None)."""
    if spec.name not in GGML_PLAN:
        raise UnsupportedError(f"GGUF cannot store quantisation {spec.name!r}; valid: {', '.join(GGML_PLAN)}")
    return GGML_PLAN[spec.name]


def tensor_type(name: str, array: np.ndarray, wanted: Any, keep_f32: tuple[str, ...] = ()) -> Any:
    """The type one tensor is written as: norms, names ending in ``keep_f32`` (tensors llama.cpp's graph reads
    as F32 whatever the file type) and rows that do not fill a block stay float."""
    import gguf

    if array.ndim < 2 or name.endswith(keep_f32):
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
    qtype: Q,
    file_type: FT,
    keep_f32: tuple[str, ...] = (),
) -> None:
    """``metadata_writer(writer)`` adds the architecture and vocabulary keys; tensors use GGUF names."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    try:
        metadata_writer(writer)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, array in tensors.items():
            data, raw = encode(array, tensor_type(name, array, qtype, keep_f32))
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def write(
    out_dir: Path,
    spec: QuantSpec,
    arch: str,
    metadata_writer: Callable[[Any], None],
    tensors: Mapping[str, np.ndarray],
    progress: Callable[[str], None],
    keep_f32: tuple[str, ...] = (),
    imatrix: Mapping[str, np.ndarray] | None = None,
    mix: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Write ``model.gguf`` into ``out_dir`` at quantisation ``spec``; returns the manifest's artifact section.

    Types the ``gguf`` package encodes are written directly; the others are written as F32 to a staging file
    and converted by llama.cpp's quantiser (the staging file is removed), with ``imatrix`` (GGUF tensor name ->
    float32 [n_per_row] mean squared input activation) as its importance matrix where given.  ``mix`` (mixed
    precision): given the default file's tensor -> type, returns tensor -> type overrides; the file is then
    quantised again with them (``mixed.overrides``)."""
    from . import ARTIFACT

    qtype, file_type, ftype = ggml_plan(spec)
    target = out_dir / ARTIFACT
    staged = out_dir / "model-f32.gguf.partial" if ftype is not None else target
    t0 = time.perf_counter()
    progress(f"writing GGUF tensors as {qtype.name}")
    write_gguf(staged, arch, metadata_writer, tensors, qtype, file_type, keep_f32)
    if ftype is not None:
        progress(f"quantising to {spec.name.upper()} with llama.cpp" + (" and an importance matrix" if imatrix else ""))
        requantize(staged, target, ftype, imatrix=imatrix)
        if mix is not None:
            from . import mixed

            chosen = mix(mixed.per_tensor_types(target))
            progress(f"quantising again with {len(chosen)} tensor types from the sensitivity scan")
            requantize(staged, target, ftype, imatrix=imatrix, types=chosen)
        staged.unlink()
    fallbacks = k_quant_fallbacks(target) if spec.method == "k-quant" else {}
    if fallbacks:
        progress(f"note: llama.cpp stored {len(fallbacks)} matrices whose rows are not a multiple of 256 weights in "
                 f"{'/'.join(sorted(set(fallbacks.values())))} instead of a k-quant (the manifest's "
                 "artifact.k_quant_fallbacks lists them)")
    return {
        "file": ARTIFACT,
        "arch": arch,
        "k_quant_fallbacks": fallbacks or None,
        "tensor_types": tensor_types(target),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def requantize(
    src: Path,
    dst: Path,
    ftype: FT,
    threads: int | None = None,
    imatrix: Mapping[str, np.ndarray] | None = None,
    types: Mapping[str, str] | None = None,
) -> None:
    """Convert ``src`` to file type ``ftype`` at ``dst`` with llama.cpp's ``llama_model_quantize``.

    ``imatrix``: GGUF tensor name -> float32 [n_per_row] importance per input column (mean squared activation),
    handed over as llama.h's null-terminated ``llama_model_imatrix_data`` array — the same values
    ``llama-quantize --imatrix`` passes after reading an imatrix file (``in_sum2 / counts``).  Tensors without an
    entry are quantised unweighted, as llama.cpp does.  ``types``: GGUF tensor name -> ggml type name, passed as
    ``tt_overrides`` (``mixed.overrides``).  Raises ``EdgekitError`` when llama.cpp fails."""
    import llama_cpp

    from edgekit.runtimes.llamacpp import install_log_filter

    install_log_filter(llama_cpp)  # llama.cpp logs every tensor (and warns for each of a mixed assignment)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = threads or os.cpu_count() or 1
    keep: list[Any] = []  # the buffers must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for k, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            if not np.all(np.isfinite(arr)):
                raise EdgekitError(f"importance matrix for {name} has non-finite values; check the calibration text")
            keep.append(arr)
            entries[k].name = name.encode()
            entries[k].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[k].size = arr.size
        entries[len(imatrix)].name = None  # the terminator llama.cpp reads up to
        keep.append(entries)
        params.imatrix = entries
    if types:
        from . import mixed

        params.tt_overrides, buffers = mixed.overrides(types)
        keep.extend(buffers)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgekitError(f"llama.cpp's quantiser failed on {src} (code {rc})")


def k_quant_fallbacks(path: Path) -> dict[str, str]:
    """Tensor name -> stored type of each matrix llama.cpp could not store as a k-quant: k-quants pack rows in
    super-blocks of 256 weights (QK_K), so llama.cpp's quantiser silently gives a matrix whose row is not a multiple
    of 256 a legacy type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; llama-quant.cpp) and logs one warning each."""
    import gguf

    legacy = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors
            if len(t.shape) == 2 and int(t.shape[0]) % 256 and t.tensor_type.name in legacy}


def tensor_types(path: Path) -> dict[str, int]:
    """Histogram of the tensor types actually stored in a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))
