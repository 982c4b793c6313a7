"""The tensor check reads the ONNX RoPE tables (``cos_cache`` / ``sin_cache``) back, every row, and compares them
with tables computed from the checkpoint's config (a new-user trial: tables rebuilt with a wrong RoPE base passed
``edgekit verify``, hidden under int4's widened KL bar, or only past row 600, beyond the 512-token windows)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import exported

from edgekit.bundle import read_manifest, write_manifest
from edgekit.checkpoint import open_checkpoint
from edgekit.exporters.onnx import lfm2 as onnx_lfm2
from edgekit.exporters.onnx import readback

SOURCE = "builtin:lfm2-tiny"


def _rewrite_rope(bundle: Path, factor: float, first_row: int) -> None:
    """Rebuild rows >= ``first_row`` of both RoPE tables with the base x ``factor``, in place in the external
    data file (same layout, same stored dtype)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    cfg = read_manifest(bundle)["model"]["config"]
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / ((cfg["rope_theta"] * factor) ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    for t in model.graph.initializer:
        if t.name not in readback.ROPE_TABLES:
            continue
        info = {e.key: e.value for e in t.external_data}
        dtype = np.float16 if t.data_type == onnx.TensorProto.FLOAT16 else np.float32
        rows, cols = t.dims
        assert cols == hd // 2 and rows > first_row
        angles = np.outer(np.arange(first_row, rows, dtype=np.float64), inv)
        new = (np.cos(angles) if t.name == "cos_cache" else np.sin(angles)).astype(dtype)
        with open(bundle / info["location"], "r+b") as f:
            f.seek(int(info["offset"]) + first_row * cols * np.dtype(dtype).itemsize)
            f.write(new.tobytes())


def _verify(bundle: Path):
    from edgekit.export import verify_bundle

    return verify_bundle(bundle, progress=lambda _m: None)


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_correct_export_passes_with_tables_checked(export_cache, quant):
    bundle = exported(export_cache, SOURCE, "onnx", quant, verify=False)
    assert onnx_lfm2.file_constants(bundle, read_manifest(bundle), open_checkpoint(SOURCE)) == []
    report = _verify(bundle)
    assert report.passed, report.failures
    assert report.metrics["tensor_check"]["passed"]


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_wrong_rope_base_past_the_windows_refused(export_cache, tmp_path, quant):
    src = exported(export_cache, SOURCE, "onnx", quant, verify=False)
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    _rewrite_rope(bundle, 0.9, 600)
    write_manifest(bundle, read_manifest(bundle))  # re-hash: the file check alone no longer notices
    report = _verify(bundle)
    assert not report.passed
    for name in readback.ROPE_TABLES:
        assert any(f.startswith(f"tensor check: RoPE table {name}") and "first 600)" in f
                   for f in report.failures), report.failures
    assert read_manifest(bundle)["verification"]["metrics"]["tensor_check"]["passed"] is False


def test_slightly_wrong_base_everywhere_refused(export_cache, tmp_path):
    src = exported(export_cache, SOURCE, "onnx", "int4", verify=False)
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    _rewrite_rope(bundle, 0.99, 0)
    fails = onnx_lfm2.file_constants(bundle, read_manifest(bundle), open_checkpoint(SOURCE))
    assert len(fails) == 2 and all("RoPE table" in f for f in fails), fails


def test_bounds_per_stored_type():
    """Correct tables pass at every row (float32 and float16 storage); one value off by a float16 step fails."""
    cos, sin = readback.rope_expected(1e6, 64, 4096)
    p = np.arange(4096)[:, None]
    inv = 1.0 / (1e6 ** (np.arange(0, 64, 2, dtype=np.float64) / 64))
    exact = np.cos(p * inv)  # the exporter's float64 table
    for dtype, qtype in ((np.float32, "F32"), (np.float16, "F16")):
        abs_bound, slope = readback.ROPE_BOUND[qtype]
        err = np.abs(exact.astype(dtype).astype(np.float64) - cos).max(1)
        assert np.all(err <= abs_bound + slope * 2.0**-23 * np.arange(4096)), dtype
    assert sin.shape == (4096, 32) and abs(cos[0]).max() == 1.0
