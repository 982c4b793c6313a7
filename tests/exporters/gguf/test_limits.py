"""llama.cpp's limits on an LFM2's shape are refused when the export is planned.  Measured with
llama-cpp-python 0.3.x (a new-user trial): an LFM2 whose layers are all full attention aborted the engine while
loading (``GGML_ASSERT(buffer) failed`` in ggml-backend.cpp) during verification, and the crash probe advised
re-exporting; the same checkpoint exports to ONNX and verifies."""

import pytest

from edgekit.errors import UnsupportedError
from edgekit.export import make_plan
from factory import make_lfm2


def test_lfm2_without_a_conv_layer_is_refused_for_gguf_only(tmp_path):
    src = make_lfm2(tmp_path / "attn", hidden=128, heads=4, kv_heads=2, intermediate=256,
                    layer_types=("full_attention", "full_attention"))
    with pytest.raises(UnsupportedError, match="without a short-conv layer.*--format onnx"):
        make_plan(src, "gguf", "q8_0")
    make_plan(src, "onnx", "fp32")
