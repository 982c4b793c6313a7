"""Mixed precision for ONNX int4 (exporters/onnx/mixed.py, edgekit/mixed.py): the candidate types and their stored
bytes, the scan's simulation against what MatMulNBitsQuantizer writes, per-node bits / block in the written
file, plan-time refusals, and parity of a mixed LFM2 export."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import mixed as mixed_mod
from edgekit.errors import UnsupportedError
from edgekit.export import make_plan
from edgekit.exporters.onnx import mixed

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def test_candidate_types_and_their_stored_bytes():
    # packed weights (bits / 8 a weight) + one float32 scale per block, no zero points
    assert mixed.nbytes((256, 512), "int4_b32") == 256 * 512 // 2 + 256 * 16 * 4
    assert mixed.nbytes((256, 512), "int4_b128") == 256 * 512 // 2 + 256 * 4 * 4
    assert mixed.nbytes((256, 512), "int8_b32") == 256 * 512 + 256 * 16 * 4
    assert mixed.nbytes((256, 256), "int4_b32") / (256 * 256) == 0.625  # the default's bytes per weight
    assert mixed.fits((64, 768), "int4_b256") and mixed.fits((64, 96), "int4_b32")
    assert not mixed.fits((64, 96), "int4_b64")
    assert mixed.parse_type("int8_b64") == (8, 64) and mixed.type_name(4, 16) == "int4_b16"
    with pytest.raises(ValueError, match="not an ONNX mixed-precision type"):
        mixed.parse_type("q4_0")


def test_fake_quant_is_what_matmul_nbits_quantizer_writes(tmp_path):
    """The scan's simulation (onnxruntime's block quantiser + the read-back's decoder) reproduces, bit for bit,
    the weight MatMulNBitsQuantizer writes into a graph at every candidate type; the error shrinks with the
    block and int8 is far finer than int4."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.exporters.onnx import quantize, readback

    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 256)).astype(np.float32)  # [out, in]
    err = {}
    for t in mixed.CANDIDATES:
        bits, block = mixed.parse_type(t)
        g = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])],
            [numpy_helper.from_array(w.T.copy(), "w")],
        )
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        q = quantize.apply(model, quantize.OnnxQuant("int4", block_size=32), types={"w": (bits, block)})
        path = tmp_path / f"{t}.onnx"
        onnx.save(q, str(path))
        assert mixed.node_types(q) == {"w": t}
        (stored,) = [r for r in readback.read(path) if r.matmul]
        want = mixed.fake_quant(w, t)
        np.testing.assert_array_equal(stored.values, want, err_msg=t)
        err[t] = float(np.sqrt(np.mean((want - w) ** 2)))
    assert err["int4_b256"] > err["int4_b128"] > err["int4_b64"] > err["int4_b32"] > err["int4_b16"]
    assert err["int4_b16"] > 10 * err["int8_b256"]


def test_the_written_file_holds_the_planned_bits_and_blocks(tmp_path):
    """A type map applied by quantize.apply on the LFM2 graph: each MatMulNBits takes its weight's bits and
    block (the fused q|k|v one type), every other weight the default, and the tied embedding's
    GatherBlockQuantized reads the head's blocks at the head's type."""
    import onnx
    from onnx import helper

    from edgekit.exporters.onnx import lfm2, quantize

    from edgekit import reference

    prep = make_plan(SOURCE, "onnx", "int4")
    job_weights = reference.state_dict(reference.load_reference(prep.checkpoint, None, prep.plan.options))
    model = lfm2.build(job_weights, prep.checkpoint.model_config)
    sources = lfm2.matmul_sources(model, job_weights)
    assert sources[lfm2.LM_HEAD] == ("model.embed_tokens.weight",)
    assert sources["model.layers.2.self_attn.qkv_proj.weight"] == tuple(
        f"model.layers.2.self_attn.{p}_proj.weight" for p in "qkv")
    q = quantize.native(prep.plan.quant, prep.plan.options)
    defaults = lfm2.default_types(model, q)
    assert set(defaults) == set(sources) and set(defaults.values()) == {"int4_b32"}
    plan = {lfm2.LM_HEAD: "int8_b64", "model.layers.2.self_attn.qkv_proj.weight": "int4_b128",
            "model.layers.0.feed_forward.w2.weight": "int8_b256", "model.layers.1.conv.in_proj.weight": "int4_b16"}
    out = quantize.apply(model, q, lfm2.TIED_HEAD, {n: mixed.parse_type(t) for n, t in plan.items()})
    assert mixed.node_types(out) == {**defaults, **plan}
    assert not any(n.op_type == "MatMul" for n in out.graph.node)
    (gbq,) = [n for n in out.graph.node if n.op_type == "GatherBlockQuantized"]
    attrs = {a.name: helper.get_attribute_value(a) for a in gbq.attribute}
    assert (attrs["bits"], attrs["block_size"]) == (8, 64)
    path = tmp_path / "m.onnx"
    onnx.save(out, str(path), save_as_external_data=True, location="m.onnx.data")
    import onnxruntime as ort

    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # every kernel accepts its attributes


def test_mixed_options_at_plan_time(tmp_path):
    from edgekit import calibration
    from edgekit.families import Family
    from edgekit.plan import Format
    from edgekit.recipes import RECIPES

    on = make_plan(SOURCE, "onnx", "int4", options={"mixed_precision": True})
    assert on.plan.options.mixes(on.plan.quant) and on.plan.options.budget() is None
    budget = make_plan(SOURCE, "onnx", "int4", options={"byte_budget": "0.7"})
    assert budget.plan.options.mixes(budget.plan.quant) and budget.plan.options.budget().bytes_per_weight == 0.7
    default = make_plan(SOURCE, "onnx", "int4")
    assert default.plan.options.mixes(default.plan.quant)  # the default (issue 15: calibrated by default)
    for opts in ({"no_calibration": True}, {"mixed_precision": False}, {"weight_algorithm": "hqq"}):
        plain = make_plan(SOURCE, "onnx", "int4", options=opts)
        assert not plain.plan.options.mixes(plain.plan.quant), opts
    for quant in ("int8", "fp16", "fp32"):
        for opts in ({"mixed_precision": True}, {"byte_budget": "0.7"}):
            with pytest.raises(UnsupportedError, match=f"mixed precision applies to int4 only, not {quant}"):
                make_plan(SOURCE, "onnx", quant, options=opts)
    with pytest.raises(UnsupportedError, match="bytes per weight"):
        make_plan(SOURCE, "onnx", "int4", options={"byte_budget": "lots"})
    with pytest.raises(UnsupportedError, match="--byte-budget needs mixed precision"):
        make_plan(SOURCE, "onnx", "int4", options={"byte_budget": "0.7", "mixed_precision": False})
    with pytest.raises(UnsupportedError, match="the mixed-precision scan reads the calibration text"):
        make_plan(SOURCE, "onnx", "int4", options={"mixed_precision": True, "no_calibration": True})
    with pytest.raises(UnsupportedError, match="symmetric round-to-nearest types"):
        make_plan(SOURCE, "onnx", "int4", options={"mixed_precision": True, "weight_algorithm": "hqq"})
    text = tmp_path / "cal.txt"
    text.write_text(calibration.default_text(), encoding="utf-8")
    with pytest.raises(UnsupportedError, match="read by the mixed-precision scan only"):
        make_plan(SOURCE, "onnx", "int4", options={"calibration": str(text), "mixed_precision": False})
    cal = make_plan(SOURCE, "onnx", "int4", options={"calibration": str(text), "mixed_precision": True})
    assert cal.plan.options.mixes(cal.plan.quant) and cal.plan.options.calibration == str(text)
    with pytest.raises(UnsupportedError, match="calibrated quants \\(int4\\) only, not int8"):
        make_plan(SOURCE, "onnx", "int8", options={"no_calibration": True})
    # the flags are LFM2's: BitNet's ONNX row (a subclass of the same options) offers and accepts none
    lfm2 = RECIPES.get(Family.LFM2, Format.ONNX)
    assert {"mixed_precision", "byte_budget", "calibration"} <= set(lfm2.options.flags(lfm2.quants))
    bitnet = RECIPES.get(Family.BITNET, Format.ONNX)
    flags = set(bitnet.options.flags(bitnet.quants))
    assert not {"mixed_precision", "byte_budget", "calibration", "no_calibration"} & flags
    with pytest.raises(UnsupportedError, match="mixed precision applies to no quant"):
        make_plan("builtin:bitnet-tiny", "onnx", "int4", options={"mixed_precision": True})


def test_budget_below_the_cheapest_types_is_refused_with_its_minimum(tmp_path):
    from edgekit.export import export

    # every MatMul at int4 block 256: 0.5 + 4/256 bytes per weight
    with pytest.raises(mixed_mod.BudgetError, match=r"needs at least 0\.5156"):
        export(make_plan(SOURCE, "onnx", "int4", options={"byte_budget": "0.5"}), tmp_path / "b", verify=False,
               progress=lambda _m: None)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_mixed_int4_export_passes_verification(tmp_path):
    """The default int4 export (built-in + LoRA: calibrated mixed precision) passes the three-part verification at
    the recipe's bars, with its tensor check reading each MatMulNBits at its own bits and block; it records the
    assignment within the plain assignment's bytes and the file holds it."""
    import onnx

    from edgekit.bundle import read_manifest
    from edgekit.export import export
    from edgekit.families import Family
    from edgekit.plan import Format
    from parity import assert_three_parts, recipe

    out = tmp_path / "b"
    export(make_plan(SOURCE, "onnx", "int4", ADAPTER), out, progress=lambda _m: None)
    m = read_manifest(out)
    assert_three_parts(m["verification"], recipe(Family.LFM2, Format.ONNX).thresholds["int4"])
    mp = m["artifact"]["mixed_precision"]
    assert mp["budget"] == "default" and mp["bytes_per_weight"] <= mp["default_bytes_per_weight"] == 0.625
    assert len(mp["tensor_types"]) == 31 and set(mp["scan_kl"]) == set(mp["tensor_types"])
    assert set(mp["tensor_types"].values()) <= set(mixed.CANDIDATES) and len(set(mp["tensor_types"].values())) > 1
    assert mp["calibration_sha256"] == m["artifact"]["calibration"]["sha256"]
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert mixed.node_types(model) == mp["tensor_types"]
    worst = m["verification"]["metrics"]["tensor_check"]["worst"]
    assert any(k.startswith("INT8") for k in worst) and any(k.startswith("INT4") for k in worst), worst
