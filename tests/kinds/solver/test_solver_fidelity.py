"""Issue 11 for the solver kind (TRM/HRM): the tensor check reads every weight back from the bundle (ONNX
initializers and MatMulNBits blocks under the reference's names; ExecuTorch's re-derived quantised linears; the
reset carry), fidelity compares the engine with the reference built from those weights and the engine's
activation quantisation, and the cost (that reference vs the float one) is reported.

Every recipe also passes on models of another shape than the built-in TRM (an MLP over the sequence): the
official-format TRM and HRM fixtures (attention, random weights); the default run takes one quant per format,
the rest are ``slow``.  A bundle whose int8 block scales were swapped is refused by the tensor check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import read_manifest
from edgekit.families import Family
from edgekit.plan import Format
from edgekit.recipes import RECIPES
from parity import quants
from solver_cases import OFFICIAL_SEQ_LEN, assert_three_parts, builtin_trm, export_bundle, official


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {"root": tmp_path_factory.mktemp("solver-fidelity")}


DEFAULT_OTHER = {("trm", "onnx", "int8")}  # ExecuTorch lowering takes minutes: those cases are slow
OTHER_CASES = [
    pytest.param(family, fmt.value, q, marks=() if (family.value, fmt.value, q) in DEFAULT_OTHER else pytest.mark.slow)
    for family in (Family.TRM, Family.HRM)
    for fmt in (Format.ONNX, Format.EXECUTORCH)
    for q in quants(family, fmt)
    if q != "fp32"  # fp32 on these fixtures: tests/exporters/*/test_{trm,hrm}.py
]


@pytest.mark.parametrize("family,fmt,quant", OTHER_CASES)
def test_other_shape_passes_the_gates(cache, family, fmt, quant):
    bundle = export_bundle(cache, official(family), fmt, quant, seq_len=OFFICIAL_SEQ_LEN)  # raises when it fails
    v = read_manifest(bundle)["verification"]
    m, c = v["metrics"], v["metrics"]["cost"]
    print(f"{family.value} official fixture {fmt} {quant}: fidelity answers {m['answer_match']:.4f} max |Δlogit| "
          f"{m['max_abs_logit']:.2e}; cost answers {c['answer_match']:.4f} cells {c['cell_match']:.4f} "
          f"max |Δlogit| {c['max_abs_logit']:.2e}")
    assert_three_parts(v, RECIPES.get(family, Format.parse(fmt)).thresholds[quant])


def _swap_scales(bundle: Path) -> str:
    """Swap the first two block scales of every row of the first MatMulNBits weight with two blocks or more;
    returns its name."""
    import onnx
    from onnx import numpy_helper

    from edgekit.exporters.onnx import DATA

    path = bundle / "model.onnx"
    model = onnx.load(str(path))
    def attr(n, key):
        return next(a.i for a in n.attribute if a.name == key)

    node = next(n for n in model.graph.node
                if n.op_type == "MatMulNBits" and attr(n, "K") >= 2 * attr(n, "block_size"))
    n_out = attr(node, "N")
    init = next(t for t in model.graph.initializer if t.name == node.input[2])
    scales = numpy_helper.to_array(init).reshape(n_out, -1).copy()
    assert scales.shape[1] >= 2
    scales[:, [0, 1]] = scales[:, [1, 0]]
    init.CopyFrom(numpy_helper.from_array(scales.reshape(-1), init.name))
    (bundle / DATA).unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, location=DATA)
    return node.input[1].rsplit("_Q", 1)[0]


def test_swapped_scales_refused_by_tensor_check(cache, tmp_path):
    from edgekit.export import recorded_reference
    from edgekit.kinds import solver

    src = export_bundle(cache, builtin_trm(), "onnx", "int8", verify=False)
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    name = _swap_scales(bundle)
    manifest = read_manifest(bundle)
    model = recorded_reference(manifest, lambda _m: None)
    tc, _ref = solver.file_reference(bundle, manifest, model)
    assert not tc.passed and any(name in f for f in tc.failures), tc.failures


def test_onnx_weights_carry_the_reference_names(cache):
    """The traced graph's weight initializers are named after the reference's parameters (not ``onnx::MatMul_N``)."""
    from edgekit.exporters.onnx import readback

    bundle = export_bundle(cache, builtin_trm(), "onnx", "int8", verify=False)
    names = {w.name for w in readback.read(bundle / "model.onnx") if w.matmul}
    assert names and not any(n.startswith("onnx::") for n in names), names
    assert np.all([n.endswith(".weight") for n in names])
