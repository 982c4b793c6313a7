"""The tensor check reads the fused kernels' attributes and ``genai_config.json`` back and compares them with what
the exporter writes for the checkpoint (a new-user trial: GroupQueryAttention ``local_window_size`` 512 passed
even fp32 verification — the windows are 512 tokens — and GQA ``scale`` +36 % or a q-norm epsilon x1000 passed
int4 fidelity on a sensitive model; an edited eos id in genai_config.json was never looked at)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import exported

from edgekit.bundle import read_manifest, write_manifest
from edgekit.checkpoint import open_checkpoint
from edgekit.exporters import sidecars
from edgekit.exporters.onnx import bitnet as onnx_bitnet
from edgekit.exporters.onnx import lfm2 as onnx_lfm2

LFM2 = "builtin:lfm2-tiny"
BITNET = "builtin:bitnet-tiny"


def _constants(bundle: Path, source: str, exporter: Any) -> list[str]:
    return exporter.file_constants(bundle, read_manifest(bundle), open_checkpoint(source))


def _copy(src: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    return bundle


def _edit_node(bundle: Path, op_type: str, nth: int, attr: str, value: Any) -> str:
    """Set (or, with value None, remove) ``attr`` on the ``nth`` ``op_type`` node of the bundle's graph; the
    weights stay in the external data file.  Returns the node's name."""
    import onnx
    from onnx import helper

    path = bundle / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    node = [n for n in model.graph.node if n.op_type == op_type][nth]
    kept = [a for a in node.attribute if a.name != attr]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(attr, value))
    onnx.save(model, str(path))
    return node.name


@pytest.mark.parametrize("quant", ["fp32", "int4", "fp16"])
def test_correct_lfm2_export_passes(export_cache, quant):
    bundle = exported(export_cache, LFM2, "onnx", quant, verify=False)
    assert _constants(bundle, LFM2, onnx_lfm2) == []


@pytest.mark.parametrize("quant", ["int2", "fp32"])
def test_correct_bitnet_export_passes(export_cache, quant):
    bundle = exported(export_cache, BITNET, "onnx", quant, verify=False)
    assert _constants(bundle, BITNET, onnx_bitnet) == []


def test_sliding_window_is_refused_by_verify(export_cache, tmp_path):
    """The trial's case end to end: a window of 512 tokens, invisible to 512-token windows, re-hashed bundle."""
    bundle = _copy(exported(export_cache, LFM2, "onnx", "fp32", verify=False), tmp_path)
    name = _edit_node(bundle, "GroupQueryAttention", 0, "local_window_size", 512)
    write_manifest(bundle, read_manifest(bundle))  # re-hash: the file hash alone no longer notices
    from edgekit.export import verify_bundle

    report = verify_bundle(bundle, progress=lambda _m: None)
    assert not report.passed
    assert any(f.startswith(f"tensor check: GroupQueryAttention {name!r} attribute local_window_size is 512")
               and "expected -1" in f for f in report.failures), report.failures


@pytest.mark.parametrize("op_type,nth,attr,value,says", [
    ("GroupQueryAttention", 1, "scale", 0.125 * 1.36, "attribute scale is"),
    ("GroupQueryAttention", 0, "rotary_interleaved", 1, "attribute rotary_interleaved is 1"),
    ("GroupQueryAttention", 0, "softcap", 30.0, "has attribute softcap=30.0, which the exporter does not write"),
    ("GroupQueryAttention", 0, "do_rotary", None, "lacks attribute do_rotary"),
    ("SimplifiedLayerNormalization", 1, "epsilon", 1e-2, "attribute epsilon is"),
    ("SkipSimplifiedLayerNormalization", 0, "epsilon", 1.0001e-5, "attribute epsilon is"),
    ("CausalConvWithState", 0, "activation", "silu", "attribute activation is 'silu'"),
])
def test_changed_attribute_is_refused(export_cache, tmp_path, op_type, nth, attr, value, says):
    bundle = _copy(exported(export_cache, LFM2, "onnx", "int4", verify=False), tmp_path)
    name = _edit_node(bundle, op_type, nth, attr, value)
    fails = _constants(bundle, LFM2, onnx_lfm2)
    assert len(fails) == 1 and f"{op_type} {name!r}" in fails[0] and says in fails[0], fails


def test_bitnet_changed_scale_is_refused(export_cache, tmp_path):
    bundle = _copy(exported(export_cache, BITNET, "onnx", "int2", verify=False), tmp_path)
    _edit_node(bundle, "GroupQueryAttention", 0, "scale", 0.3)
    fails = _constants(bundle, BITNET, onnx_bitnet)
    assert len(fails) == 1 and "attribute scale is 0.3" in fails[0], fails


def test_missing_kernel_node_is_counted(export_cache, tmp_path):
    """A graph with fewer attention kernels than the checkpoint's attention layers (one replaced by another op)."""
    import onnx

    bundle = _copy(exported(export_cache, LFM2, "onnx", "fp32", verify=False), tmp_path)
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    node.op_type = "MultiHeadAttention"
    onnx.save(model, str(bundle / "model.onnx"))
    fails = _constants(bundle, LFM2, onnx_lfm2)
    want = sum(k == "full_attention" for k in open_checkpoint(LFM2).model_config.layer_types)
    assert any(f"has {want - 1} GroupQueryAttention node(s), expected {want}" in f for f in fails), fails


@pytest.mark.parametrize("edit,says", [
    (lambda c: c["model"].update(eos_token_id=18), ".model.eos_token_id is 18, expected"),
    (lambda c: c["search"].update(max_length=512), ".search.max_length is 512, expected"),
    (lambda c: c["search"].update(do_sample=True), ".search.do_sample is True, expected False"),
    (lambda c: c["model"]["decoder"].pop("layer_types"), ".model.decoder.layer_types is missing"),
    (lambda c: c["model"].update(chat_template="x"), ".model.chat_template='x' is not written by the exporter"),
])
def test_changed_genai_config_is_refused(export_cache, tmp_path, edit, says):
    bundle = _copy(exported(export_cache, LFM2, "onnx", "int4", verify=False), tmp_path)
    path = bundle / onnx_lfm2.GENAI_CONFIG
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    fails = _constants(bundle, LFM2, onnx_lfm2)
    assert len(fails) == 1 and fails[0].startswith("tensor check: genai_config.json: ") and says in fails[0], fails


def test_genai_config_missing_or_not_json(tmp_path):
    what = "the test"
    assert "has no genai_config.json" in sidecars.check_json(tmp_path / "genai_config.json", {}, what)[0]
    (tmp_path / "genai_config.json").write_text("{not json")
    assert "is not valid JSON" in sidecars.check_json(tmp_path / "genai_config.json", {}, what)[0]
    (tmp_path / "genai_config.json").write_text('{"a": [1, 2, 3]}')
    assert ".a[2] is 3, expected 4" in sidecars.check_json(tmp_path / "genai_config.json", {"a": [1, 2, 4]}, what)[0]


def test_changed_runtime_entries_are_refused(export_cache, tmp_path):
    """The manifest's state shapes / logits_to_keep, which the runtime sizes and feeds the session from (a fifth
    trial: every KV state's context set to 520 passed the 512-token windows and failed past token 520)."""
    bundle = _copy(exported(export_cache, LFM2, "onnx", "int4", verify=False), tmp_path)
    manifest = read_manifest(bundle)
    state = next(v for k, v in manifest["artifact"]["state"].items() if k.endswith(".key"))
    state["shape"][2] = 520
    manifest["artifact"]["logits_to_keep"]["default"] = 0
    write_manifest(bundle, manifest)
    fails = _constants(bundle, LFM2, onnx_lfm2)
    assert len(fails) == 2 and all(f.startswith("tensor check: edgekit.json: .artifact.") for f in fails), fails
    assert "shape[2] is 520, expected 'context'" in fails[0] and ".logits_to_keep.default is 0" in fails[1], fails
