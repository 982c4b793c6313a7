"""GPTQ for ExecuTorch 8da4w (exporters/executorch/gptq.py): torchao's affine scales kept, int8 qdata replaced by
GPTQ's codes; verification re-derives the same codes (the .pte's XNNPACK weights are not parsed); the plan's
default and refusals; the default export passes verification at a lower cost than round-to-nearest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import UnsupportedError
from edgekit.export import make_plan
from edgekit.exporters.executorch import gptq, lower, readback
from edgekit.exporters.executorch.quant import LinearQuant

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def _hessian(rng, k=256, n=2000):
    x = rng.standard_normal((n, k))
    x[:, :8] *= 6.0  # a few loud channels, correlated with the rest: what GPTQ exploits
    x = x @ (np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k))
    return x, 2.0 * x.T @ x / n


@pytest.mark.parametrize("q", [LinearQuant(4, 32), LinearQuant(4, 128), LinearQuant(4, None), LinearQuant(8, None)])
def test_gptq_keeps_torchaos_scales_and_lowers_the_output_error(q):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    x, h = _hessian(rng)
    plain, ours = gptq.quantized(w, q), gptq.quantized(w, q, h)
    assert torch.equal(plain.scale, ours.scale) and torch.equal(plain.zero_point, ours.zero_point)
    lo, hi = -(1 << (q.weight_bits - 1)), (1 << (q.weight_bits - 1)) - 1
    assert ours.qdata.dtype == torch.int8 and lo <= int(ours.qdata.min()) and int(ours.qdata.max()) <= hi

    def out_err(t):
        return float(np.sqrt(((x @ (t.dequantize().float().numpy() - w).T) ** 2).mean()))

    assert out_err(ours) < 0.95 * out_err(plain), (out_err(ours), out_err(plain))
    # nothing to compensate (no cross terms, equal columns): round-to-nearest's codes but for exact ties
    same = gptq.quantized(w, q, np.eye(256))
    assert float((same.qdata == plain.qdata).float().mean()) > 0.999


def test_gptq_is_the_calibrated_default_and_refused_where_it_cannot_apply():
    def algorithm(quant="8da4w", **opts):
        prep = make_plan(SOURCE, "executorch", quant, options=opts)
        return prep.plan.options.algorithm(prep.plan.quant)

    assert algorithm() == "gptq"  # calibrated mixed precision (the default): GPTQ codes
    assert algorithm(no_calibration=True) == "affine"
    assert algorithm(mixed_precision=False) == "affine"
    assert algorithm(weight_algorithm="affine") == "affine"
    assert algorithm(weight_algorithm="hqq") == "hqq"
    assert algorithm(weight_algorithm="gptq", mixed_precision=False) == "gptq"
    assert algorithm("8da8w") == "affine"
    assert algorithm("fp32") == "affine"
    for quant, opts, why in (("8da4w", {"no_calibration": True}, "--no-calibration leaves no calibration text"),
                             ("8da8w", {}, "8da8w is not a calibrated quant"),
                             ("8da4w", {"lora_mode": "separate"}, "--lora-mode separate keeps the base unmerged")):
        with pytest.raises(UnsupportedError, match=f"gptq cannot apply: {why}"):
            make_plan(SOURCE, "executorch", quant, ADAPTER, options={"weight_algorithm": "gptq", **opts})
    with pytest.raises(UnsupportedError, match="gptq cannot apply: GPTQ needs a language model's calibration text"):
        make_plan("builtin:trm-sudoku", "executorch", "8da4w", options={"weight_algorithm": "gptq"})


class _Lowered(Exception):
    pass


def test_verification_rederives_the_exported_codes(monkeypatch, tmp_path):
    """The codes the export writes into the program (captured just before lowering) are those the read-back
    derives from the reference — under another thread count too (the Hessians are float64)."""
    from dataclasses import replace

    from edgekit import reference
    from edgekit.calibration import job_windows
    from edgekit.exporters import ExportJob
    from edgekit.exporters.executorch import lfm2

    prep = make_plan(SOURCE, "executorch", "8da4w", ADAPTER)
    model = reference.load_reference(prep.checkpoint, prep.adapter, prep.plan.options)
    weights = reference.state_dict(model)
    captured = {}

    def stop(eager, *_a, **_k):
        captured["eager"] = eager
        raise _Lowered

    monkeypatch.setattr(lower, "lower", stop)
    job = ExportJob(plan=prep.plan, checkpoint=prep.checkpoint, reference=model, weights=weights,
                    progress=lambda _m: None)
    with pytest.raises(_Lowered):
        lfm2.export(job, tmp_path)
    eager = captured["eager"]
    names = lfm2.linear_weights(weights)
    _text, windows = job_windows(job)
    modules = [gptq.module_of(n) for n in names] + ["lm_head"]
    cached = gptq._CACHE[model][1]  # the export leaves its Hessians for its own verification ...
    assert gptq.hessians(model, modules, windows) is cached and model not in gptq._CACHE  # ... which takes them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hs = gptq.hessians(model, modules, windows)  # computed afresh, with another thread count
    finally:
        torch.set_num_threads(threads)

    def parts(name):
        return [eager.get_submodule(g.removesuffix(".weight")).weight for g, _i in lfm2._dest(name)]

    def linear_quant(w):  # the type the export's scan gave this linear, from its torchao tensor
        group = int(w.block_size[-1])
        return LinearQuant(int(str(w.target_dtype).removeprefix("torch.int")),
                           None if group == w.shape[1] else group, "gptq")

    per_linear = {n: linear_quant(parts(n)[0]) for n in names}
    assert {q.weight_bits for q in per_linear.values()} == {4, 8}  # the scan moved some linears to int8
    read = {t.name: t for t in readback.read(weights, prep.plan.options, prep.plan.quant, names, per_linear,
                                             hessians=hs)}
    for name in names:
        got = torch.cat([w.dequantize().float() for w in parts(name)]).numpy()
        assert np.array_equal(got, read[name].values), name
        assert read[name].qtype.endswith("_GPTQ"), name
    head = eager.lm_head.weight.dequantize().float().numpy()
    assert np.array_equal(head, read["lm_head.weight"].values) and read["lm_head.weight"].qtype == "INT8_GPTQ"
    # the shared table gathers the head's GPTQ codes
    assert torch.equal(eager.embed_tokens.qweight, eager.lm_head.weight.qdata)


@pytest.mark.slow
def test_default_8da4w_export_writes_gptq_codes_and_passes_verification(tmp_path):
    """Built-in + LoRA, the default (calibrated mixed precision + GPTQ): verification passes with the linears read
    back as GPTQ types, at a lower cost against the float model than ``--weight-algorithm affine`` (measured
    0.9106 / 1.24e-2 vs 0.8887 / 1.74e-2); a changed calibration text is refused at verify."""
    import json

    from edgekit.bundle import read_manifest
    from edgekit.export import export
    from edgekit.export import verify_bundle

    out = tmp_path / "g"
    export(make_plan(SOURCE, "executorch", "8da4w", ADAPTER), out, progress=lambda _m: None)
    m = read_manifest(out)
    v = m["verification"]
    assert v["passed"], v["failures"]
    assert len(m["artifact"]["gptq"]["tensors"]) == 35 and "GPTQ" in m["artifact"]["calibration"]["method"]
    assert set(v["metrics"]["tensor_check"]["worst"]) == {"F32", "INT4_GPTQ", "INT8_GPTQ"}
    cost = v["metrics"]["cost"]
    assert cost["mean_kl"] < 1.5e-2 and cost["top1"] > 0.9, cost
    plain = tmp_path / "a"
    export(make_plan(SOURCE, "executorch", "8da4w", ADAPTER, {"weight_algorithm": "affine"}), plain,
           progress=lambda _m: None)
    pm = read_manifest(plain)
    assert pm["verification"]["passed"] and "gptq" not in pm["artifact"]
    assert pm["verification"]["metrics"]["cost"]["mean_kl"] > cost["mean_kl"]
    # a manifest whose calibration sha256 was edited: the codes cannot be re-derived, verification says so
    path = out / "edgekit.json"
    doc = json.loads(path.read_text())
    doc["artifact"]["gptq"]["calibration_sha256"] = "0" * 64
    path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match="calibration text .* changed since the export"):
        verify_bundle(out, progress=lambda _m: None)


def test_verification_refuses_a_manifest_that_disagrees_with_the_plan():
    """The read-back takes which linears GPTQ wrote from the plan, never from the manifest's list: an entry removed,
    a list shortened, or an entry under a plan that writes none is refused before anything is computed."""
    from edgekit.errors import BundleError

    gptq_plan = make_plan(SOURCE, "executorch", "8da4w").plan
    affine_plan = make_plan(SOURCE, "executorch", "8da4w", options={"weight_algorithm": "affine"}).plan
    todo = {"model.layers.0.conv.in_proj.weight": None, "lm_head.weight": None}
    from edgekit import gptq as core

    entry = {**core.summary(sorted(todo), [[1, 2]], gptq.METHOD), "calibration_sha256": "ab" * 32}

    def refused(plan, artifact, match):
        with pytest.raises(BundleError, match=match):
            gptq.readback_hessians({"artifact": artifact}, object(), plan.options, plan.quant, todo)

    refused(gptq_plan, {}, "has no artifact.gptq entry")
    refused(gptq_plan, {"gptq": {**entry, "tensors": ["lm_head.weight"]}}, "artifact.gptq.tensors differs")
    refused(affine_plan, {"gptq": entry}, "its plan writes none")
    refused(gptq_plan, {"gptq": {**entry, "damp": 0.5}}, r"records \{'damp': 0\.5\}.*an edited manifest")
    refused(gptq_plan, {"gptq": entry}, "none was loaded")  # agrees: on to the reference (none given here)
    assert gptq.readback_hessians({"artifact": {}}, object(), affine_plan.options, affine_plan.quant, todo) == {}
    # a float export has nothing GPTQ could write (its read-back asks too)
    from edgekit.exporters.executorch import lfm2

    fp32 = make_plan(SOURCE, "executorch", "fp32").plan
    assert lfm2.gptq_quants({"model.embed_tokens.weight": np.zeros((4, 8), np.float32)}, fp32.options, fp32.quant,
                            {}) == {}


def test_a_relative_calibration_path_is_recorded_absolute(tmp_path, monkeypatch):
    """Verification reads the text again, from wherever it runs: the plan records the path resolved."""
    from edgekit.calibration import default_text

    (tmp_path / "calib.txt").write_text(default_text(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    options = make_plan(SOURCE, "executorch", "8da4w", options={"calibration": "calib.txt"}).plan.options
    assert options.calibration == str(tmp_path / "calib.txt")
    assert options.to_dict()["calibration"] == str(tmp_path / "calib.txt")


def test_per_channel_int4_leaves_a_width_xnnpack_cannot_group_float():
    """XNNPACK lowers per-channel int4 as one group of the whole input width, which must be a multiple of 32 (a
    new-user trial: width 1000 with --group-size 0 crashed the lowering); such a linear stays float."""
    from torch import nn

    from edgekit.exporters.executorch.quant import quantize_linears

    assert not LinearQuant(4, None).fits(1000) and LinearQuant(4, None).fits(1024)
    assert LinearQuant(8, None).fits(1000) and not LinearQuant(4, 32).fits(1000)
    m = nn.Sequential(nn.Linear(1000, 8, bias=False), nn.Linear(1024, 8, bias=False))
    quantize_linears(m, LinearQuant(4, None))
    assert not hasattr(m[0].weight, "qdata") and hasattr(m[1].weight, "qdata")
    assert readback.linear("w", "w", np.ones((8, 1000), np.float32), LinearQuant(4, None), "w").qtype == "F32"
