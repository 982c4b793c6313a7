"""GPTQ for ONNX int4 (exporters/onnx/gptq.py): round-to-nearest's scales kept, codes by error compensation; the
plan's default and refusals; the default export passes verification with GPTQ codes at fewer KL than RTN."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import UnsupportedError
from edgekit.export import make_plan
from edgekit.exporters.onnx import gptq, mixed, readback

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def _inputs(rng, n=2000, k=256):
    x = rng.standard_normal((n, k))
    x[:, :8] *= 6.0  # a few loud channels, correlated with the rest: what GPTQ exploits
    return x @ (np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k))


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 128), (8, 64)])
def test_gptq_keeps_the_scales_and_lowers_the_output_error(bits, block):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    codes, scales = gptq.rtn_codes(w, bits, block)
    # rtn_codes decodes to what MatMulNBitsQuantizer writes (the scan's simulation, bit for bit), and packs back
    assert np.array_equal(gptq.dequantize(codes, scales, bits, block), mixed.fake_quant(w, f"int{bits}_b{block}"))
    assert np.array_equal(readback.unpack(gptq.pack(codes, bits, block), bits, block).reshape(96, -1), codes)
    x = _inputs(rng)
    h = 2.0 * x.T @ x / len(x)
    g = gptq.gptq_codes(w, h, scales, bits, block)
    assert g.dtype == np.uint8 and g.shape == w.shape and int(g.max()) < (1 << bits)

    def out_err(q):
        return float(np.sqrt(((x @ (q - w).T) ** 2).mean()))

    rtn, ours = out_err(gptq.dequantize(codes, scales, bits, block)), out_err(gptq.dequantize(g, scales, bits, block))
    assert ours < 0.95 * rtn, (ours, rtn)
    # a Hessian with no cross terms and equal columns leaves nothing to compensate: round-to-nearest's codes (up to
    # an exact tie, which the C++ kernel may round the other way)
    same = gptq.gptq_codes(w, np.eye(256), scales, bits, block)
    assert np.mean(same == codes) > 0.999


def test_gptq_is_the_calibrated_default_and_refused_without_calibration():
    def algorithm(quant="int4", **opts):
        prep = make_plan(SOURCE, "onnx", quant, options=opts)
        return prep.plan.options.algorithm(prep.plan.quant)

    assert algorithm() == "gptq"  # calibrated mixed precision (the default): GPTQ codes
    assert algorithm(no_calibration=True) == "affine"
    assert algorithm(mixed_precision=False) == "affine"
    assert algorithm(weight_algorithm="affine") == "affine"
    assert algorithm(weight_algorithm="hqq") == "hqq"
    assert algorithm(weight_algorithm="gptq", mixed_precision=False) == "gptq"
    assert algorithm("int8") == "affine"
    with pytest.raises(UnsupportedError, match="gptq reads the calibration text"):
        make_plan(SOURCE, "onnx", "int4", options={"weight_algorithm": "gptq", "no_calibration": True})
    with pytest.raises(UnsupportedError, match="applies to --quant int4 only"):
        make_plan(SOURCE, "onnx", "int8", options={"weight_algorithm": "gptq"})


@pytest.mark.slow
def test_default_int4_export_writes_gptq_codes_and_passes_verification(tmp_path):
    """Built-in + LoRA, the default (calibrated mixed precision + GPTQ): the three-part verification passes with
    every MatMulNBits read back as a GPTQ type, the same node types and scales as the affine export, and a lower
    cost against the float model (measured 0.8936 / 1.75e-2 vs 0.8760 / 2.36e-2)."""
    import onnx
    from onnx import numpy_helper

    from edgekit.bundle import read_manifest
    from edgekit.export import export

    out = tmp_path / "g"
    export(make_plan(SOURCE, "onnx", "int4", ADAPTER), out, progress=lambda _m: None)
    m = read_manifest(out)
    v = m["verification"]
    assert v["passed"], v["failures"]
    assert m["artifact"]["quant"]["algorithm"] == "gptq" and len(m["artifact"]["gptq"]["tensors"]) == 31
    assert "GPTQ" in m["artifact"]["calibration"]["method"]
    worst = v["metrics"]["tensor_check"]["worst"]
    assert set(worst) == {"F32", "INT4_GPTQ", "INT8_GPTQ"}, worst
    cost = v["metrics"]["cost"]
    assert cost["mean_kl"] < 2.0e-2 and cost["top1"] > 0.885, cost
    # the same file layout as round-to-nearest: its scales untouched, only codes differ
    plain = tmp_path / "a"
    export(make_plan(SOURCE, "onnx", "int4", ADAPTER, {"weight_algorithm": "affine"}), plain, verify=False,
           progress=lambda _m: None)
    types = m["artifact"]["mixed_precision"]["tensor_types"]
    assert read_manifest(plain)["artifact"]["mixed_precision"]["tensor_types"] == types
    a, g = (onnx.load(str(p / "model.onnx")) for p in (plain, out))
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ig = {t.name: numpy_helper.to_array(t) for t in g.graph.initializer}
    assert ia.keys() == ig.keys()
    nodes = [n for n in g.graph.node if n.op_type == "MatMulNBits"]
    for n in nodes:
        assert np.array_equal(ia[n.input[2]], ig[n.input[2]])  # scales
        assert ia[n.input[1]].shape == ig[n.input[1]].shape and not np.array_equal(ia[n.input[1]], ig[n.input[1]])
