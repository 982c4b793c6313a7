"""GPTQ for GGUF Q4_0 / Q4_K (exporters/gguf/gptq.py): llama.cpp's block scales kept, codes by error compensation
(the shared core ``edgekit.gptq``); the byte layout against gguf-py's dequantize; the calibrated q4_0 default passes
verification with GPTQ codes at a lower cost than llama.cpp's own codes."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from edgekit.exporters.gguf import gptq, mixed

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def _ggml_bytes(w: np.ndarray, type_name: str) -> np.ndarray:
    """llama.cpp's quantiser (ggml_quantize_chunk) on ``w`` [rows, n]: the tensor's bytes [rows, bytes per row]."""
    import gguf

    qt = gguf.GGMLQuantizationType[type_name]
    lib = mixed._ggml()
    lib.ggml_quantize_init(int(qt))
    src = np.ascontiguousarray(w, dtype=np.float32)
    dst = np.zeros(mixed.nbytes(src.shape, type_name), dtype=np.uint8)
    lib.ggml_quantize_chunk(int(qt), src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                            dst.ctypes.data_as(ctypes.c_void_p), 0, src.shape[0], src.shape[1], None)
    return dst.reshape(src.shape[0], -1)


def _decode(type_name: str, raw: np.ndarray) -> np.ndarray:
    if type_name == "Q4_0":
        d, codes = gptq.q4_0_fields(raw)
        return np.repeat(d, 32, axis=1) * (codes.astype(np.float32) - 8)
    scale, offset, codes = gptq.q4_k_fields(raw)
    return np.repeat(scale, 32, axis=1) * codes.astype(np.float32) - np.repeat(offset, 32, axis=1)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_K"])
def test_code_layout_round_trips_against_gguf_py(type_name):
    import gguf

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 512)).astype(np.float32)
    raw = _ggml_bytes(w, type_name)
    qt = gguf.GGMLQuantizationType[type_name]
    # the fields decode to exactly what gguf-py's dequantize (ggml's layout) reads, and pack back to the same bytes
    assert np.array_equal(_decode(type_name, raw), gguf.quants.dequantize(raw, qt).reshape(w.shape))
    pack, fields = (gptq.q4_0_pack, gptq.q4_0_fields) if type_name == "Q4_0" else (gptq.q4_k_pack, gptq.q4_k_fields)
    assert np.array_equal(pack(raw, fields(raw)[-1]), raw)
    # arbitrary codes: only the code bytes change, and gguf-py reads them back
    codes = rng.integers(0, 16, fields(raw)[-1].shape).astype(np.uint8)
    new = pack(raw, codes)
    assert new.shape == raw.shape and np.array_equal(fields(new)[-1], codes)
    assert np.array_equal(fields(new)[0], fields(raw)[0])  # scales untouched
    assert np.array_equal(_decode(type_name, new), gguf.quants.dequantize(new, qt).reshape(w.shape))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_K"])
def test_gptq_keeps_llama_cpp_scales_and_lowers_the_output_error(type_name):
    import gguf

    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    x = rng.standard_normal((2000, 256))
    x[:, :8] *= 6.0
    x = x @ (np.eye(256) + 0.3 * rng.standard_normal((256, 256)) / 16.0)
    h = 2.0 * x.T @ x / len(x)
    raw = _ggml_bytes(w, type_name)
    new = gptq.codes_for(type_name, raw, w, h)
    assert new.shape == raw.shape and not np.array_equal(new, raw)
    qt = gguf.GGMLQuantizationType[type_name]

    def out_err(b):
        q = gguf.quants.dequantize(b, qt).reshape(w.shape)
        return float(np.sqrt(((x @ (q - w).T) ** 2).mean()))

    assert out_err(new) < 0.95 * out_err(raw), (out_err(new), out_err(raw))


# quant -> (the type GPTQ writes, the cost bars: below llama.cpp's own codes' in the same export)
DEFAULTS = {
    "q4_0": ("Q4_0", 0.918, 9.5e-3),  # measured 0.9233 / 8.44e-3; llama.cpp's codes 0.9160 / 1.02e-2
    "q4_k_m": ("Q4_K", 0.9385, 6.7e-3),  # measured 0.9399 / 6.37e-3; llama.cpp's codes 0.9395 / 6.95e-3
}


@pytest.mark.slow
@pytest.mark.parametrize("quant", sorted(DEFAULTS))
def test_default_export_writes_gptq_codes_and_passes_verification(tmp_path, quant):
    """Built-in + LoRA, the calibrated default (mixed types): verification passes with the Q4_0 / Q4_K matrices
    read back as GPTQ types, at a cost against the float model below llama.cpp's own codes'; --no-calibration keeps
    llama.cpp's codes."""
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    qtype, top1, kl = DEFAULTS[quant]
    out = tmp_path / "g"
    export(make_plan(SOURCE, "gguf", quant, ADAPTER), out, progress=lambda _m: None)
    m = read_manifest(out)
    v = m["verification"]
    assert v["passed"], v["failures"]
    g = m["artifact"]["gptq"]
    assert g["types"] == [qtype] and len(g["tensors"]) == m["artifact"]["tensor_types"][qtype]
    assert "GPTQ" in m["artifact"]["calibration"]["method"]
    worst = v["metrics"]["tensor_check"]["worst"]
    assert qtype + "_GPTQ" in worst and qtype not in worst, worst
    cost = v["metrics"]["cost"]
    assert cost["mean_kl"] < kl and cost["top1"] > top1, cost
    plain = tmp_path / "p"
    export(make_plan(SOURCE, "gguf", quant, ADAPTER, {"no_calibration": True}), plain, verify=False,
           progress=lambda _m: None)
    assert read_manifest(plain)["artifact"].get("gptq") is None
