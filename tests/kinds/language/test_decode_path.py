"""Verification feeds the last ``parity.DECODE_TOKENS`` positions of every window one token per call (the path
generation decodes on) and gates them on their own.  A new-user trial zeroed an ONNX export's short-conv state
after every call: every prefill logit stayed right (fidelity KL 8.7e-5 against a bar of 6e-4), generation was
wrong from the third token, and only the ungated greedy row showed it."""

from __future__ import annotations

import shutil

import numpy as np
from conftest import exported

from edgekit.bundle import read_manifest, write_manifest
from edgekit.kinds.language import parity

SOURCE = "builtin:lfm2-tiny"


def _verify(bundle):
    from edgekit.export import verify_bundle

    return verify_bundle(bundle, progress=lambda _m: None)


def test_correct_export_decode_positions_match(export_cache):
    bundle = exported(export_cache, SOURCE, "onnx", "int4", verify=False)
    report = _verify(bundle)
    assert report.passed, report.failures
    d = report.metrics["decode"]
    assert d["positions"] == report.metrics["windows"] * parity.DECODE_TOKENS
    assert d["top1_decided"] == 1.0 and d["mean_kl"] < 3 * report.metrics["mean_kl"]


def test_state_lost_between_calls_is_refused(export_cache, tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    bundle = tmp_path / "b"
    shutil.copytree(exported(export_cache, SOURCE, "onnx", "int4", verify=False), bundle)
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    nodes = []
    for n in model.graph.node:  # present.{i}.conv := 0 x the kernel's new state
        nodes.append(n)
        if n.op_type == "CausalConvWithState":
            state = n.output[1]
            n.output[1] = state + "_kept"
            nodes.append(helper.make_node("Mul", [state + "_kept", "zero"], [state], name=n.name + "/lose_state"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, read_manifest(bundle))  # re-hashed: only the content checks can notice
    report = _verify(bundle)
    assert not report.passed
    assert any(f.startswith("decode steps (one token per call") and "the state carried between calls is wrong" in f
               for f in report.failures), report.failures
    assert report.metrics["decode"]["mean_kl"] > 0.1  # measured 1.1 nats per decode step
