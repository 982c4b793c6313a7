"""An LFM2 whose short convolution is 4 taps wide (``conv_L_cache=4``; every published LFM2 uses 3): each
format's graph must take the kernel length from the config, and each float export must match PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import exported
from factory import make_lfm2

from edgekit.bundle import read_manifest


@pytest.fixture(scope="module")
def conv4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lfm2(tmp_path_factory.mktemp("conv4") / "lfm2", layer_types=("conv", "full_attention", "conv"),
                     conv_L_cache=4)


# the ExecuTorch case lowers a whole program (~35 s alone): slow; test_executorch_omits_params_export_llm_would_misread
# keeps an ExecuTorch export of this kernel length in the default run
@pytest.mark.parametrize("fmt, quant", [("gguf", "f32"), ("onnx", "fp32"),
                                        pytest.param("executorch", "fp32", marks=pytest.mark.slow)])
def test_conv_kernel_4_float_parity(export_cache, conv4, fmt, quant):
    pytest.importorskip({"gguf": "llama_cpp", "onnx": "onnxruntime", "executorch": "executorch"}[fmt])
    bundle = exported(export_cache, str(conv4), fmt, quant)
    v = read_manifest(bundle)["verification"]
    assert v["passed"], v["failures"]
    assert v["metrics"]["top1"] >= 0.999 and v["metrics"]["max_abs_logit"] <= 1e-3


def test_executorch_omits_params_export_llm_would_misread(export_cache, conv4):
    pytest.importorskip("executorch")
    bundle = exported(export_cache, str(conv4), "executorch", "fp32")
    art = read_manifest(bundle)["artifact"]
    assert not (bundle / "params.json").exists() and art["params"] is None
    assert "conv_L_cache=4" in art["params_note"]
