"""onnxruntime's kernel limits are refused when the export is planned, naming the limit (issue 17 kind 3).

The failures they prevent were measured with onnxruntime 1.32 by exporting these shapes with the checks off:
head size 12 -> "GroupQueryAttention ... head_size must be a multiple of 8" at the first run; hidden 80 with int4
block 32 -> "MatMulNBits ... Incompatible dimensions for matrix multiplication" at load."""

import pytest

from edgekit.errors import UnsupportedError
from edgekit.export import make_plan
from factory import make_lfm2


@pytest.fixture(scope="module")
def odd_head(tmp_path_factory):
    return make_lfm2(tmp_path_factory.mktemp("lim") / "hd12", hidden=48, heads=4, kv_heads=2, intermediate=256,
                     layer_types=("conv", "full_attention"))


@pytest.fixture(scope="module")
def hidden80(tmp_path_factory):
    return make_lfm2(tmp_path_factory.mktemp("lim") / "h80", hidden=80, heads=5, kv_heads=1, intermediate=256,
                     layer_types=("conv", "full_attention"))


def test_head_size_not_a_multiple_of_8_is_refused_for_onnx_only(odd_head):
    with pytest.raises(UnsupportedError, match="head size 12 .* not a multiple of 8.*GroupQueryAttention"):
        make_plan(odd_head, "onnx", "fp32")
    make_plan(odd_head, "gguf", "f32")  # llama.cpp has no such limit


def test_hidden_size_that_does_not_fill_a_block_is_refused_with_a_block_size_that_fits(hidden80):
    with pytest.raises(UnsupportedError, match=r"hidden_size 80 is not a multiple of --block-size 32.*--block-size 16"):
        make_plan(hidden80, "onnx", "int4")
    make_plan(hidden80, "onnx", "int4", options={"block_size": "16"})
    make_plan(hidden80, "onnx", "fp32")  # float weights have no blocks
